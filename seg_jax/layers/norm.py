"""Normalisation layers selectable by name from a config."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

NORMS = ("batch", "group", "layer", "instance", "none")


class Norm(nn.Module):
  """Normalisation by name over channels-last features.

  * ``batch``: statistics over batch and space, running averages for eval (Ioffe & Szegedy 2015).
  * ``group``: per sample, over space and ``num_groups`` channel groups (Wu & He 2018); the
    channel count must be divisible by ``num_groups``.
  * ``layer``: per sample and position, over channels (the channels-last LayerNorm of ConvNeXt).
  * ``instance``: per sample and channel, over space (Ulyanov et al. 2016).
  * ``none``: identity.
  Statistics are computed in float32 whatever the compute ``dtype``.
  """
  kind: str = "batch"
  num_groups: int = 32
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    common = dict(epsilon=self.epsilon, dtype=self.dtype, param_dtype=self.param_dtype)
    if self.kind == "batch":
      return nn.BatchNorm(use_running_average=not train, momentum=self.momentum, name="bn",
                          **common)(x)
    if self.kind == "group":
      channels = x.shape[-1]
      if channels % self.num_groups:
        raise ValueError(f"group norm: num_groups={self.num_groups} does not divide the "
                         f"{channels} channels of input shape {x.shape}")
      return nn.GroupNorm(num_groups=self.num_groups, name="gn", **common)(x)
    if self.kind == "layer":
      return nn.LayerNorm(name="ln", **common)(x)
    if self.kind == "instance":
      return nn.GroupNorm(num_groups=None, group_size=1, name="in", **common)(x)
    if self.kind == "none":
      return x
    raise ValueError(f"norm must be one of {NORMS}, got {self.kind!r}")
