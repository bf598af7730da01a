"""Channel attention and multi-scale context: Squeeze-and-Excitation, scSE and ASPP."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from seg_jax.layers.conv import Conv, ConvNormAct, SeparableConvNormAct
from seg_jax.layers.norm import Dropout, activation
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


class ASPP(nn.Module):
  """Atrous Spatial Pyramid Pooling (Chen et al. 2017, DeepLabV3).

  Parallel branches see the same features at several receptive fields: a 1x1 conv, one 3x3
  conv per dilation ``rate`` (optionally depthwise-separable, as in DeepLabV3+), and an image
  pooling branch (global context, broadcast back to every pixel). The concatenation is
  projected to ``features`` by a 1x1 conv, then dropout. "same" padding keeps every branch at
  the input size whatever the rate, so it works at any input size.
  """
  features: int = 256
  rates: Sequence[int] = (6, 12, 18)
  image_pooling: bool = True
  separable: bool = False
  dropout_rate: float = 0.1
  norm: str = "batch"
  act: str = "relu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    common = dict(norm=self.norm, act=self.act, dtype=self.dtype, param_dtype=self.param_dtype)
    ones = (1,) * (x.ndim - 2)
    threes = (3,) * (x.ndim - 2)
    branches = [ConvNormAct(self.features, ones, name="conv1x1", **common)(x, train=train)]
    for i, rate in enumerate(self.rates):
      if self.separable:
        branches.append(SeparableConvNormAct(self.features, threes, dilation=rate, **common,
                                             name=f"atrous{i}")(x, train=train))
      else:
        branches.append(ConvNormAct(self.features, threes, dilation=rate, name=f"atrous{i}",
                                    **common)(x, train=train))
    if self.image_pooling:
      pooled = global_avg_pool(x, keepdims=True)
      pooled = ConvNormAct(self.features, ones, name="image_pool", **common)(pooled, train=train)
      branches.append(jnp.broadcast_to(pooled, x.shape[:-1] + (self.features,)))
    y = jnp.concatenate(branches, axis=-1)
    y = ConvNormAct(self.features, ones, name="project", **common)(y, train=train)
    return Dropout(self.dropout_rate)(y, train=train)
