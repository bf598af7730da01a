"""VGG (Simonyan & Zisserman 2015) as a classifier and as a per-stage feature backbone.

Parameter names follow the Caffe/FCN convention: ``conv1_1`` .. ``conv5_3`` (3x3, bias, ReLU),
``bn1_1`` .. when ``batch_norm``, and the classifier ``fc6``, ``fc7``, ``fc8``. ``fc6`` reads the
512 x 7 x 7 map in (row, column, channel) order, so its kernel reshapes to a 7x7 convolution for
FCN. Layer sizes match torchvision's ``vgg16`` / ``vgg16_bn`` (138,357,544 / 138,365,992
parameters at 1000 classes).

Feature stages (``num_classes=None``) are the outputs of the five 2x2 max pools:

  =====  ======  ========
  key    stride  channels
  =====  ======  ========
  pool1  2       64
  pool2  4       128
  pool3  8       256
  pool4  16      512
  pool5  32      512
  =====  ======  ========

Pools floor odd sizes (``floor(size / stride)``), as torchvision does.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from seg_jax.layers import Conv, Dropout, Norm, adaptive_avg_pool, max_pool
from seg_jax.models.common import check_image_batch

Dtype = Any


# 3x3 convolutions per stage of VGG-16 (configuration D).
VGG16_STAGE_SIZES = (2, 2, 3, 3, 3)


class VGG(nn.Module):
  """VGG: logits ``(N, num_classes)`` float32, or ``{"pool1".."pool5": features}`` if no classes.

  Attributes:
    stage_sizes: 3x3 convolutions per stage (VGG-16: ``(2, 2, 3, 3, 3)``).
    widths: channels per stage (``(64, 128, 256, 512, 512)``); small values give test models.
    num_classes: classifier outputs; ``None`` returns the pool features.
    batch_norm: a norm after every convolution (torchvision's ``vgg16_bn``; convs keep a bias).
    hidden: width of fc6 and fc7.
    dropout: dropout rate after fc6 and fc7.
    norm: ``seg_jax.layers.Norm`` kind used when ``batch_norm``.
  """

  stage_sizes: Sequence[int] = VGG16_STAGE_SIZES
  widths: Sequence[int] = (64, 128, 256, 512, 512)
  num_classes: int | None = 1000
  batch_norm: bool = False
  hidden: int = 4096
  dropout: float = 0.5
  norm: str = "batch"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  min_input_size: ClassVar[int] = 32
  task: ClassVar[str] = "classification"

  @property
  def stride(self) -> int:
    """Stride of the deepest features (the last pool)."""
    return 2 ** len(self.stage_sizes)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array | dict[str, jax.Array]:
    check_image_batch(x, self.min_input_size)
    if len(self.stage_sizes) != len(self.widths):
      raise ValueError(f"stage_sizes {self.stage_sizes!r} and widths {self.widths!r} must have "
                       "the same length")
    features = {}
    for stage, (num_convs, width) in enumerate(zip(self.stage_sizes, self.widths), start=1):
      for i in range(1, num_convs + 1):
        x = Conv(width, (3, 3), padding=1, dtype=self.dtype, param_dtype=self.param_dtype,
                 name=f"conv{stage}_{i}")(x)
        if self.batch_norm:
          x = Norm(kind=self.norm, dtype=self.dtype, param_dtype=self.param_dtype,
                   name=f"bn{stage}_{i}")(x, train=train)
        x = nn.relu(x)
      x = max_pool(x, (2, 2), strides=(2, 2))
      features[f"pool{stage}"] = x
    if self.num_classes is None:
      return features

    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    # torchvision pools to 7x7 before fc6 so any input size >= 32 classifies.
    x = adaptive_avg_pool(x, (7, 7)).reshape(x.shape[0], -1)
    for name in ("fc6", "fc7"):
      x = nn.relu(dense(self.hidden, name=name)(x))
      x = Dropout(self.dropout)(x, train=train)
    return dense(self.num_classes, name="fc8")(x).astype(jnp.float32)


VGG16 = functools.partial(VGG, stage_sizes=VGG16_STAGE_SIZES)
