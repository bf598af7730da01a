"""Channel and spatial attention gates: Squeeze-and-Excitation and scSE."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seg_jax.layers.activations import activation
from seg_jax.layers.conv import Conv
from seg_jax.layers.pooling import global_avg_pool

Dtype = Any


class SqueezeExcitation(nn.Module):
  """Squeeze-and-Excitation (Hu et al. 2018): rescales each channel by a learned gate in (0, 1).

  Squeeze: global average pooling summarises each channel over the whole image. Excite: a
  bottleneck MLP (``channels // reduction`` hidden units, at least ``min_hidden``) and a sigmoid
  give one gate per channel, so the block can emphasise channels that matter for this image
  (e.g. water texture in a coastal tile) at the cost of ``2 * C^2 / reduction`` weights. The gate
  is sown as ``intermediates/gate``.
  """
  reduction: int = 16
  min_hidden: int = 8
  act: str = "relu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.reduction < 1:
      raise ValueError(f"reduction must be a positive integer, got {self.reduction!r}")
    channels = x.shape[-1]
    hidden = max(channels // self.reduction, min(self.min_hidden, channels))
    s = global_avg_pool(x, keepdims=True)
    s = nn.Dense(hidden, dtype=self.dtype, param_dtype=self.param_dtype, name="reduce")(s)
    s = activation(self.act)(s)
    s = nn.Dense(channels, dtype=self.dtype, param_dtype=self.param_dtype, name="expand")(s)
    gate = nn.sigmoid(s)
    self.sow("intermediates", "gate", gate)
    return x * gate.astype(x.dtype)


class SCSE(nn.Module):
  """Concurrent spatial and channel SE (Roy et al. 2018): ``x * channel_gate + x * pixel_gate``.

  The channel gate is ``SqueezeExcitation``'s; the spatial gate is a 1x1 convolution to one
  channel and a sigmoid, i.e. a per-pixel "how relevant is this location" map, useful for thin
  structures such as roads that a global channel gate cannot localise.
  """
  reduction: int = 16
  min_hidden: int = 8
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channel = SqueezeExcitation(self.reduction, self.min_hidden, dtype=self.dtype,
                                param_dtype=self.param_dtype, name="cse")(x)
    ones = (1,) * (x.ndim - 2)
    gate = nn.sigmoid(Conv(1, ones, dtype=self.dtype, param_dtype=self.param_dtype,
                           name="sse")(x))
    self.sow("intermediates", "spatial_gate", gate)
    return channel + x * gate.astype(x.dtype)
