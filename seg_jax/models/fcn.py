"""Fully convolutional networks: FCN-32s/16s/8s (Long et al. 2015) and torchvision's FCN-ResNet50.

VGG-16 FCNs are presets of ``SegmentationModel``: the VGG-16 conv layers (backbone ``vgg16``),
the ``fcn`` neck ``FCNNeck`` (``fc6``: 7x7 conv, 4096 channels, VGG's first fully connected
layer as a convolution, so its weights reshape into it; ``fc7``: 1x1 conv, 4096; each with ReLU
and dropout) and the ``fcn`` decoder ``FCNDecoder``, which scores and fuses: ``score_fr`` (1x1
conv to the classes) at stride 32; for FCN-16s a learned x2 upsampling (``upscore16``, a
bilinear-initialised transposed conv) plus ``score16`` (the paper's ``score_pool4``: 1x1 conv on
pool4, zero init); FCN-8s repeats this at stride 8 (``upscore8``, ``score8`` = ``score_pool3``).
The decoder outputs logits, so these presets have no head. The final upsampling to the input
size is bilinear interpolation, which is what the paper's fixed (not learned) last deconvolution
computes. Inputs are padded to a multiple of 32 instead of the paper's 100-pixel padding with
crops, so every stride lines up exactly. fc6 runs through ``conv_same_on_small_map``, which
sidesteps a slow XLA:CPU path on pool5 maps under 7 pixels (on the CPU only).

``fcn_resnet50`` is ``torchvision.models.segmentation.fcn_resnet50`` without the auxiliary head:
ResNet-50 at output stride 8 (dilated layer3/layer4) and a head of a 3x3 conv to 512 channels,
BN, ReLU, dropout 0.1 and a 1x1 conv to the classes, then bilinear upsampling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
from jax import export
import jax.numpy as jnp

from seg_jax import layers

Dtype = Any

_VGG_FCN = dict(backbone="vgg16", neck="fcn", neck_kwargs=dict(features=4096, dropout_rate=0.5),
                decoder="fcn", head="none")

PRESETS: dict[str, dict[str, Any]] = {
    "fcn32s": dict(**_VGG_FCN, decoder_kwargs=dict(skip_strides=())),
    "fcn16s": dict(**_VGG_FCN, decoder_kwargs=dict(skip_strides=(16,))),
    "fcn8s": dict(**_VGG_FCN, decoder_kwargs=dict(skip_strides=(16, 8))),
    "fcn_resnet50": dict(backbone="resnet50", backbone_kwargs=dict(output_stride=8),
                         head_kwargs=dict(features=512, dropout_rate=0.1)),
}
"""FCN presets of ``SegmentationModel``; see the module docstring."""


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
  if export.is_symbolic_dim(h) or export.is_symbolic_dim(w):  # traced for export: any size
    return conv(x)
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
                                kernel_init=layers.bilinear_kernel_init, dtype=self.dtype,
                                param_dtype=self.param_dtype, name="conv")(x)


class FCNNeck(nn.Module):
  """fc6 (7x7 conv) and fc7 (1x1 conv), each followed by ReLU and dropout."""

  features: int = 4096
  dropout_rate: float = 0.5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Applies fc6 and fc7 to the pool5 features ``x``."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    fc6 = layers.Conv(self.features, (7, 7), **kw, name="fc6")
    x = layers.Dropout(self.dropout_rate)(nn.relu(conv_same_on_small_map(fc6, x)), train=train)
    fc7 = layers.Conv(self.features, (1, 1), **kw, name="fc7")
    return layers.Dropout(self.dropout_rate)(nn.relu(fc7(x)), train=train)


class FCNDecoder(nn.Module):
  """Scores the deepest features and fuses the scores of the skips at ``skip_strides``.

  ``skip_strides=()`` is FCN-32s, ``(16,)`` FCN-16s and ``(16, 8)`` FCN-8s; each skip must be
  at half the stride of the scores it is added to. Returns logits at the last fused stride.
  """

  num_classes: int
  skip_strides: Sequence[int] = (16, 8)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  emits_logits: ClassVar[bool] = True

  @nn.compact
  def __call__(self, pyramid: Mapping[int, jax.Array], *, train: bool) -> jax.Array:
    """Returns the fused class scores of ``pyramid`` (``{stride: features}``)."""
    del train
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    stride = max(pyramid)
    y = layers.Conv(self.num_classes, (1, 1), **kw, name="score_fr")(pyramid[stride])
    for skip_stride in self.skip_strides:
      if skip_stride * 2 != stride or skip_stride not in pyramid:
        raise ValueError(f"skip_strides {tuple(self.skip_strides)} must halve the stride each "
                         f"time from the deepest one ({max(pyramid)}) among the backbone "
                         f"strides {sorted(pyramid)}")
      y = Upscore2x(self.num_classes, **kw, name=f"upscore{skip_stride}")(y)
      # Zero init: training starts from the coarser net's prediction, as in the paper.
      y = y + layers.Conv(self.num_classes, (1, 1), kernel_init=nn.initializers.zeros, **kw,
                          name=f"score{skip_stride}")(pyramid[skip_stride])
      stride = skip_stride
    return y
