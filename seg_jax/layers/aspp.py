"""Atrous Spatial Pyramid Pooling: multi-scale context from parallel dilated convolutions."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from seg_jax.layers.conv import ConvNormAct, SeparableConvNormAct
from seg_jax.layers.dropout import Dropout
from seg_jax.layers.pooling import global_avg_pool

Dtype = Any


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
