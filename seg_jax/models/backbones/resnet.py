"""ResNet v1.5 (He et al. 2016) as a classifier and as a per-stage feature backbone.

Layout and parameter names follow torchvision's ``resnet*`` so pretrained weights map one to one:
``conv1``, ``bn1``, ``layer1`` .. ``layer4`` each holding ``block0``, ``block1``, ... with
``conv1``/``bn1``, ``conv2``/``bn2`` (``conv3``/``bn3`` in bottlenecks) and, where the shape
changes, ``downsample`` (1x1 conv + norm); the classifier is ``fc``. "v1.5" means the bottleneck
strides on its 3x3 convolution rather than on the first 1x1, as torchvision does.

Feature stages (``num_classes=None``), with their output stride and channels at ``width=64``;
``stem`` is conv1/bn1/ReLU before the max pool, for decoders that want a stride-2 skip:

  ========  ======  ======================  ==============================
  key       stride  basic (18/34) channels  bottleneck (50/101) channels
  ========  ======  ======================  ==============================
  stem      2       64                      64
  layer1    4       64                      256
  layer2    8       128                     512
  layer3    16      256                     1024
  layer4    32      512                     2048
  ========  ======  ======================  ==============================

``output_stride=8`` keeps layer3/layer4 at stride 8 (dilation 2 and 4) and ``output_stride=16``
keeps layer4 at stride 16, as in DeepLab; they are torchvision's
``replace_stride_with_dilation=(False, True, True)`` and ``(False, False, True)``. Spatial sizes
are ``ceil(size / stride)`` for any input size ``>= min_input_size`` (32).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from seg_jax.layers import Conv, ConvNormAct, Norm, global_avg_pool, max_pool
from seg_jax.models.common import check_image_batch

Dtype = Any


def _shortcut(x: jax.Array, out_features: int, strides: int, norm: str, dtype: Dtype,
              param_dtype: Dtype, train: bool) -> jax.Array:
  """Identity, or a strided 1x1 conv + norm named ``downsample`` when the shape changes."""
  if strides == 1 and x.shape[-1] == out_features:
    return x
  return ConvNormAct(out_features, (1, 1), strides=strides, padding=0, norm=norm, act="identity",
                     dtype=dtype, param_dtype=param_dtype, name="downsample")(x, train=train)


class _Block(nn.Module):
  """Fields shared by the residual blocks; ``features`` is the width of the inner convs."""

  features: int
  strides: int = 1
  dilation: int = 1
  norm: str = "batch"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32


class BasicBlock(_Block):
  """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    conv = functools.partial(Conv, kernel_size=(3, 3), padding=self.dilation,
                             dilation=self.dilation, use_bias=False, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    norm = functools.partial(Norm, kind=self.norm, dtype=self.dtype, param_dtype=self.param_dtype)
    y = conv(self.features, strides=self.strides, name="conv1")(x)
    y = nn.relu(norm(name="bn1")(y, train=train))
    y = conv(self.features, name="conv2")(y)
    y = norm(name="bn2")(y, train=train)
    shortcut = _shortcut(x, self.features, self.strides, self.norm, self.dtype, self.param_dtype,
                         train)
    return nn.relu(y + shortcut)


class Bottleneck(_Block):
  """1x1 reduce, strided 3x3, 1x1 expand (x4) with a residual connection (ResNet-50/101)."""

  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    conv = functools.partial(Conv, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
    norm = functools.partial(Norm, kind=self.norm, dtype=self.dtype, param_dtype=self.param_dtype)
    out_features = self.features * self.expansion
    y = conv(self.features, (1, 1), padding=0, name="conv1")(x)
    y = nn.relu(norm(name="bn1")(y, train=train))
    y = conv(self.features, (3, 3), strides=self.strides, padding=self.dilation,
             dilation=self.dilation, name="conv2")(y)
    y = nn.relu(norm(name="bn2")(y, train=train))
    y = conv(out_features, (1, 1), padding=0, name="conv3")(y)
    y = norm(name="bn3")(y, train=train)
    shortcut = _shortcut(x, out_features, self.strides, self.norm, self.dtype, self.param_dtype,
                         train)
    return nn.relu(y + shortcut)


class ResNetStage(nn.Module):
  """``num_blocks`` residual blocks named ``block0``, ``block1``, ...; the first one strides."""

  block: type[nn.Module]
  num_blocks: int
  features: int
  strides: int = 1
  first_dilation: int = 1
  dilation: int = 1
  norm: str = "batch"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    for j in range(self.num_blocks):
      x = self.block(self.features, strides=self.strides if j == 0 else 1,
                     dilation=self.first_dilation if j == 0 else self.dilation, norm=self.norm,
                     dtype=self.dtype, param_dtype=self.param_dtype, name=f"block{j}")(
                         x, train=train)
    return x


class ResNet(nn.Module):
  """ResNet v1.5: logits ``(N, num_classes)`` float32, or ``{stage: features}`` if no classes.

  Attributes:
    stage_sizes: blocks in layer1..layer4, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
    block: ``BasicBlock`` or ``Bottleneck``.
    num_classes: classifier outputs; ``None`` returns the feature dict of the module docstring.
    width: channels of the stem and of layer1's blocks (64 in the paper); layer ``i`` uses
      ``width * 2**i`` (times the block expansion at its output). Small values give test models.
    output_stride: 32, or 16 / 8 to trade the stride 2 of layer4 / layer3 and layer4 for
      dilation; also the ``stride`` of the deepest features.
    norm: ``seg_jax.layers.Norm`` kind.
  """

  stage_sizes: Sequence[int]
  block: type[nn.Module] = Bottleneck
  num_classes: int | None = 1000
  width: int = 64
  output_stride: int = 32
  norm: str = "batch"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  min_input_size: ClassVar[int] = 32
  task: ClassVar[str] = "classification"

  @property
  def stride(self) -> int:
    """Stride of the deepest features (``layer4``)."""
    return self.output_stride

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array | dict[str, jax.Array]:
    check_image_batch(x, self.min_input_size)
    if self.output_stride not in (8, 16, 32):
      raise ValueError(f"output_stride must be 8, 16 or 32, got {self.output_stride!r}")
    # layer2..layer4 each halve the size unless the output stride is already reached.
    dilate = {32: (False, False, False), 16: (False, False, True),
              8: (False, True, True)}[self.output_stride]
    if len(self.stage_sizes) != 4:
      raise ValueError(f"stage_sizes must have 4 entries, got {self.stage_sizes!r}")
    x = Conv(self.width, (7, 7), strides=2, padding=3, use_bias=False, dtype=self.dtype,
             param_dtype=self.param_dtype, name="conv1")(x)
    x = Norm(kind=self.norm, dtype=self.dtype, param_dtype=self.param_dtype, name="bn1")(
        x, train=train)
    x = nn.relu(x)
    features = {"stem": x}
    x = max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    dilation = 1
    for i, num_blocks in enumerate(self.stage_sizes):
      strides = 1 if i == 0 else 2
      # As torchvision: the first block of a dilated stage keeps the previous dilation.
      first_dilation = dilation
      if i > 0 and dilate[i - 1]:
        dilation *= strides
        strides = 1
      x = ResNetStage(self.block, num_blocks, self.width * 2**i, strides=strides,
                      first_dilation=first_dilation, dilation=dilation, norm=self.norm,
                      dtype=self.dtype, param_dtype=self.param_dtype,
                      name=f"layer{i + 1}")(x, train=train)
      features[f"layer{i + 1}"] = x

    if self.num_classes is None:
      return features
    x = global_avg_pool(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(x)
    return x.astype(jnp.float32)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=Bottleneck)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block=Bottleneck)
