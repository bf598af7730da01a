"""Normalisation layers, dropout and activations, each selectable by name from a config."""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

NORMS = ("batch", "group", "layer", "instance", "none")

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "relu6": nn.relu6,
    "leaky_relu": functools.partial(nn.leaky_relu, negative_slope=0.01),
    "elu": nn.elu,
    "gelu": functools.partial(nn.gelu, approximate=False),
    "silu": nn.silu,
    "swish": nn.silu,
    "sigmoid": nn.sigmoid,
    "tanh": jnp.tanh,
    "softmax": functools.partial(nn.softmax, axis=-1),
    "identity": lambda x: x,
}

ACTIVATIONS = tuple(_ACTIVATIONS)


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """Returns the activation function called ``name`` (see ``ACTIVATIONS``)."""
  if name not in _ACTIVATIONS:
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")
  return _ACTIVATIONS[name]


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


class Dropout(nn.Module):
  """Element-wise dropout, active only when ``train`` is true (rng collection ``dropout``)."""
  rate: float

  def _broadcast_dims(self, x: jax.Array) -> tuple[int, ...]:
    del x
    return ()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if not 0.0 <= self.rate < 1.0:
      raise ValueError(f"dropout rate must be in [0, 1), got {self.rate!r}")
    return nn.Dropout(self.rate, broadcast_dims=self._broadcast_dims(x),
                      deterministic=not train)(x)


class SpatialDropout(Dropout):
  """Channel-wise dropout: zeroes whole feature maps (Tompson et al. 2015), for correlated pixels."""

  def _broadcast_dims(self, x: jax.Array) -> tuple[int, ...]:
    return tuple(range(1, x.ndim - 1))
