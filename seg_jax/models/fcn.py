"""Fully convolutional networks: FCN-32s/16s/8s (Long et al. 2015) and torchvision's FCN-ResNet50.

VGG-16 FCNs. The VGG-16 conv layers (child ``backbone``) are followed by ``fc6`` (7x7 conv, 4096
channels: VGG's first fully connected layer as a convolution, so its weights reshape into it),
``fc7`` (1x1 conv, 4096), each with ReLU and dropout, and ``score_fr`` (1x1 conv to the
classes) at stride 32. FCN-16s upsamples the stride-32 scores x2 with a learned transposed
conv (``upscore2``, bilinear init) and adds ``score_pool4`` (1x1 conv on pool4, zero init);
FCN-8s repeats this with pool3 (``upscore_pool4``, ``score_pool3``). The final upsampling to
the input size is bilinear interpolation, which is what the paper's fixed (not learned) last
deconvolution computes. Inputs are padded to a multiple of 32 instead of the paper's 100-pixel
padding with crops, so every stride lines up exactly. fc6 runs through
``conv_same_on_small_map``, which sidesteps a slow XLA:CPU path on pool5 maps under 7 pixels
(on the CPU only).

FCN-ResNet50 follows ``torchvision.models.segmentation.fcn_resnet50`` without the auxiliary
head: ResNet-50 at output stride 8 (dilated layer3/layer4), then 3x3 conv to 512 channels,
BN, ReLU, dropout 0.1, 1x1 conv to the classes, bilinear upsampling.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import FrozenDict

from seg_jax import layers
from seg_jax.models import common, deeplab
from seg_jax.models.backbones import vgg

Dtype = Any

FCN_STRIDES = (32, 16, 8)


def bilinear_kernel_init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32
                         ) -> jax.Array:
  """Transposed-conv kernel ``(k, k, C, C)`` that upsamples each channel bilinearly."""
  del key
  k, k2, cin, cout = shape
  if k != k2 or cin != cout:
    raise ValueError(f"bilinear kernel needs a square kernel with in == out channels, got {shape}")
  factor = (k + 1) // 2
  center = factor - 1 if k % 2 == 1 else factor - 0.5
  taps = 1 - np.abs(np.arange(k) - center) / factor
  kernel = np.zeros(shape, np.float32)
  kernel[:, :, np.arange(cin), np.arange(cin)] = np.outer(taps, taps)[:, :, None]
  return jnp.asarray(kernel, dtype)


def conv_same_on_small_map(conv: layers.Conv, x: jax.Array) -> jax.Array:
  """Applies a stride-1 "same"-padded 2-D ``conv`` to NHWC ``x``, which may be below its kernel.

  XLA:CPU runs a convolution whose input is smaller than its kernel far slower than one whose
  input is not (fc6's 7x7 kernel on the pool5 map of a 144x256 image, which is 5x8). Zero rows
  and columns added at the bottom/right are what "same" padding reads there anyway, so on the
  CPU the input is padded up to the kernel size (read from ``conv.kernel_size``) and the output
  cropped, which changes nothing. Other backends run the plain convolution: there the padded one
  would only compute the extra output rows and columns, and the barriers keep XLA from fusing.
  """
  kernel_h, kernel_w = conv.kernel_size
  h, w = x.shape[1:3]
  pad_h, pad_w = max(kernel_h - h, 0), max(kernel_w - w, 0)
  if (pad_h == 0 and pad_w == 0) or jax.default_backend() != "cpu":
    return conv(x)
  x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
  # The barriers keep XLA from folding the pad (and, in the backward pass, the crop's
  # transpose) back into the convolution's own padding.
  y = conv(jax.lax.optimization_barrier(x))
  return jax.lax.optimization_barrier(y)[:, :h, :w, :]


class Upscore2x(nn.Module):
  """Learned x2 upsampling: 4x4 stride-2 transposed conv with padding 1, so (h, w) -> (2h, 2w)."""

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Upsamples NHWC ``x`` from (h, w) to (2h, 2w)."""
    return layers.ConvTranspose(self.features, (4, 4), strides=2, padding=1, use_bias=False,
                                kernel_init=bilinear_kernel_init, dtype=self.dtype,
                                param_dtype=self.param_dtype, name="conv")(x)


class FCN(nn.Module):
  """FCN-32s/16s/8s on VGG-16; ``stride`` picks the variant (32, 16 or 8).

  Attributes:
    fc_features: channels of fc6/fc7 (4096 in the paper).
    dropout_rate: dropout after fc6 and fc7.
    backbone_kwargs: extra ``VGG16`` arguments (e.g. ``{"widths": (8, 8, 8, 8, 8)}``).
  """

  num_classes: int
  stride: int = 8
  fc_features: int = 4096
  dropout_rate: float = 0.5
  backbone_kwargs: Mapping[str, Any] = FrozenDict()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Returns float32 logits ``(N, H, W, num_classes)`` for NHWC ``x``."""
    if self.stride not in FCN_STRIDES:
      raise ValueError(f"stride must be one of {FCN_STRIDES}, got {self.stride!r}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def score(name):
      # Zero init: training starts from the coarser net's prediction, as in the paper.
      return layers.Conv(self.num_classes, (1, 1), kernel_init=nn.initializers.zeros, **kw,
                         name=name)

    def body(x):
      features = vgg.VGG16(num_classes=None, **kw, **dict(self.backbone_kwargs),
                           name="backbone")(x, train=train)
      y = features["pool5"]
      fc6 = layers.Conv(self.fc_features, (7, 7), **kw, name="fc6")
      y = layers.Dropout(self.dropout_rate)(nn.relu(conv_same_on_small_map(fc6, y)),
                                            train=train)
      fc7 = layers.Conv(self.fc_features, (1, 1), **kw, name="fc7")
      y = layers.Dropout(self.dropout_rate)(nn.relu(fc7(y)), train=train)
      y = layers.Conv(self.num_classes, (1, 1), **kw, name="score_fr")(y)
      if self.stride <= 16:
        y = Upscore2x(self.num_classes, **kw, name="upscore2")(y)
        y = y + score("score_pool4")(features["pool4"])
      if self.stride <= 8:
        y = Upscore2x(self.num_classes, **kw, name="upscore_pool4")(y)
        y = y + score("score_pool3")(features["pool3"])
      return layers.resize(y.astype(jnp.float32), x.shape[1:3])

    return common.segment_padded(x, 32, body)


class FCNResNet(nn.Module):
  """torchvision's FCN head on a dilated ResNet (``fcn_resnet50``), without the aux head."""

  num_classes: int
  backbone: str = "resnet50"
  output_stride: int = 8
  head_features: int = 512
  dropout_rate: float = 0.1
  norm: str = "batch"
  backbone_kwargs: Mapping[str, Any] = FrozenDict()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Returns float32 logits ``(N, H, W, num_classes)`` for NHWC ``x``."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def body(x):
      backbone, high_key, _ = deeplab.dilated_backbone(
          self.backbone, self.output_stride, norm=self.norm, **kw, **dict(self.backbone_kwargs))
      y = backbone(x, train=train)[high_key]
      y = layers.ConvNormAct(self.head_features, (3, 3), norm=self.norm, **kw, name="head")(
          y, train=train)
      y = layers.Dropout(self.dropout_rate)(y, train=train)
      y = layers.Conv(self.num_classes, (1, 1), **kw, name="classifier")(y)
      return layers.resize(y.astype(jnp.float32), x.shape[1:3])

    return common.segment_padded(x, self.output_stride, body)
