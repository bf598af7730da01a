"""GoogLeNet / Inception v1 (Szegedy et al. 2014) as a classifier and feature backbone.

Follows torchvision's ``googlenet``: every convolution is conv (no bias) + BatchNorm (eps 1e-3) +
ReLU, max pools round up (``ceil_mode``), and the "5x5" branch of each Inception block uses a
3x3 kernel (``branch3_kernel=3``), which gives torchvision's 6,624,904 parameters at 1000
classes without auxiliary heads. ``branch3_kernel=5`` builds the paper's 5x5 branch.

Children carry torchvision's names: ``conv1``, ``conv2``, ``conv3``, ``inception3a`` ..
``inception5b`` (each with ``branch1``, ``branch2_0``/``branch2_1``, ``branch3_0``/``branch3_1``,
``branch4``), ``aux1``/``aux2`` and ``fc``.

Feature stages (``num_classes=None``):

  ======  ======  ========  ===================
  key     stride  channels  taken after
  ======  ======  ========  ===================
  stage1  2       64        conv1
  stage2  4       192       conv3
  stage3  8       480       inception3b
  stage4  16      832       inception4e
  stage5  32      1024      inception5b
  ======  ======  ========  ===================

Max pools round up like torch's ``ceil_mode``: conv1 gives ``ceil(size / 2)``, each 3x3/2 pool
maps ``m`` to ``ceil((m - 1) / 2)`` and the last 2x2/2 pool ``m`` to ``ceil(m / 2)``.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from seg_jax.layers import (
    ConvNormAct, Dropout, Norm, adaptive_avg_pool, global_avg_pool, max_pool)
from seg_jax.models.common import check_image_batch

Dtype = Any

# (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj) of each block, from the paper's Table 1.
INCEPTION_CONFIGS = {
    "inception3a": (64, 96, 128, 16, 32, 32),
    "inception3b": (128, 128, 192, 32, 96, 64),
    "inception4a": (192, 96, 208, 16, 48, 64),
    "inception4b": (160, 112, 224, 24, 64, 64),
    "inception4c": (128, 128, 256, 24, 64, 64),
    "inception4d": (112, 144, 288, 32, 64, 64),
    "inception4e": (256, 160, 320, 32, 128, 128),
    "inception5a": (256, 160, 320, 32, 128, 128),
    "inception5b": (384, 192, 384, 48, 128, 128),
}


def _ceil_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
  """Max pool with torch's ``ceil_mode=True``: a partial last window is kept."""
  pads = []
  for size in x.shape[1:3]:
    out = -(-(size - window) // stride) + 1
    pads.append((0, max((out - 1) * stride + window - size, 0)))
  return max_pool(x, (window, window), strides=(stride, stride), padding=tuple(pads))


class _ConvBlock(nn.Module):
  """Shared settings of every conv + BatchNorm(eps 1e-3) + ReLU in the network."""

  norm: str = "batch"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def conv(self, features: int, kernel: int, strides: int = 1, *, name: str) -> ConvNormAct:
    """A ``ConvNormAct`` with torch-style symmetric padding ``kernel // 2``."""
    norm = functools.partial(Norm, kind=self.norm, epsilon=1e-3, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    return ConvNormAct(features, (kernel, kernel), strides=strides, padding=kernel // 2,
                       norm=norm, dtype=self.dtype, param_dtype=self.param_dtype, name=name)


class Inception(_ConvBlock):
  """Four parallel branches (1x1; 1x1-3x3; 1x1-3x3 or 5x5; pool-1x1) concatenated."""

  channels: Sequence[int] = INCEPTION_CONFIGS["inception3a"]
  branch3_kernel: int = 3

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj = self.channels
    b1 = self.conv(ch1x1, 1, name="branch1")(x, train=train)
    b2 = self.conv(ch3x3red, 1, name="branch2_0")(x, train=train)
    b2 = self.conv(ch3x3, 3, name="branch2_1")(b2, train=train)
    b3 = self.conv(ch5x5red, 1, name="branch3_0")(x, train=train)
    b3 = self.conv(ch5x5, self.branch3_kernel, name="branch3_1")(b3, train=train)
    b4 = max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    b4 = self.conv(pool_proj, 1, name="branch4")(b4, train=train)
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class InceptionAux(_ConvBlock):
  """Auxiliary classifier: 4x4 average pool, 1x1 conv to 128, fc 1024, dropout 0.7, fc."""

  num_classes: int = 1000

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = adaptive_avg_pool(x, (4, 4))
    x = self.conv(128, 1, name="conv")(x, train=train)
    x = x.reshape(x.shape[0], -1)
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.relu(dense(1024, name="fc1")(x))
    x = Dropout(0.7)(x, train=train)
    return dense(self.num_classes, name="fc2")(x).astype(jnp.float32)


class GoogLeNet(_ConvBlock):
  """Inception v1: logits ``(N, num_classes)`` float32, or ``{stage: features}`` if no classes.

  With ``aux_logits`` and ``train=True`` it returns ``(logits, aux1, aux2)``; the auxiliary heads
  hang off inception4a and inception4d. ``width_divisor`` divides every channel count, keeping at
  least one (a value such as 8 gives test models).
  """

  num_classes: int | None = 1000
  aux_logits: bool = False
  dropout: float = 0.2
  branch3_kernel: int = 3
  width_divisor: int = 1

  min_input_size: ClassVar[int] = 32
  task: ClassVar[str] = "classification"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool):
    check_image_batch(x, self.min_input_size)
    if self.width_divisor < 1:
      raise ValueError(f"width_divisor must be >= 1, got {self.width_divisor}")
    if self.aux_logits and self.num_classes is None:
      raise ValueError("aux_logits=True needs num_classes, got num_classes=None")
    settings = dict(norm=self.norm, dtype=self.dtype, param_dtype=self.param_dtype)

    def width(channels: int) -> int:
      # Every channel count is divided by width_divisor, keeping at least one channel.
      return max(channels // self.width_divisor, 1)

    def inception(name: str, y: jax.Array) -> jax.Array:
      channels = tuple(width(c) for c in INCEPTION_CONFIGS[name])
      return Inception(channels=channels, branch3_kernel=self.branch3_kernel, name=name,
                       **settings)(y, train=train)

    features = {}
    x = self.conv(width(64), 7, 2, name="conv1")(x, train=train)
    features["stage1"] = x
    x = _ceil_pool(x, 3, 2)
    x = self.conv(width(64), 1, name="conv2")(x, train=train)
    x = self.conv(width(192), 3, name="conv3")(x, train=train)
    features["stage2"] = x
    x = _ceil_pool(x, 3, 2)
    x = inception("inception3b", inception("inception3a", x))
    features["stage3"] = x
    x = _ceil_pool(x, 3, 2)
    x = inception("inception4a", x)
    # Aux heads are built whenever enabled so that init(train=False) creates their params.
    aux = []
    if self.aux_logits:
      aux.append(InceptionAux(num_classes=self.num_classes, name="aux1", **settings)(
          x, train=train))
    x = inception("inception4d", inception("inception4c", inception("inception4b", x)))
    if self.aux_logits:
      aux.append(InceptionAux(num_classes=self.num_classes, name="aux2", **settings)(
          x, train=train))
    x = inception("inception4e", x)
    features["stage4"] = x
    x = _ceil_pool(x, 2, 2)
    x = inception("inception5b", inception("inception5a", x))
    features["stage5"] = x
    if self.num_classes is None:
      return features

    x = Dropout(self.dropout)(global_avg_pool(x), train=train)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                      name="fc")(x).astype(jnp.float32)
    if aux and train:
      return (logits, *aux)
    return logits
