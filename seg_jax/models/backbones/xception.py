"""Xception (Chollet 2017) and the aligned, atrous Xception-65 of DeepLabV3+ (Chen et al. 2018).

``Xception`` is Keras' ``keras.applications.Xception`` layer for layer (22,855,952 trainable
parameters at 1000 classes; ``seg_jax.weights.from_keras`` imports its weights): two plain 3x3
"valid" convolutions, then blocks of depthwise-separable 3x3 convolutions, each followed by
BatchNorm (eps 1e-3), with residual connections. Entry flow: blocks 2-4 (128, 256, 728
channels) end in a 3x3/2 max pool and add a strided 1x1 conv + BN shortcut. Middle flow: 8
blocks of three ReLU-separable-BN units with identity shortcuts. Exit flow: block 13 (728,
1024, pool, 1x1 shortcut) and block 14 (1536, 2048, no shortcut), global average pool and the
``predictions`` dense layer, which returns logits (Keras applies a softmax unless built with
``classifier_activation=None``). Inputs are expected scaled as Keras' ``preprocess_input`` does
(to [-1, 1]); the model does no preprocessing.

``AlignedXception`` is DeepLab's ``xception_65``: the stem is a 3x3/2 and a 3x3 conv, each with
BN + ReLU; then blocks of three separable units: entry flow 128, 256, 728 (stride 2 on the last
unit, 1x1 conv + BN shortcut), 16 middle blocks of 728 (identity shortcut), exit block 1 (728,
1024, 1024, stride 2, conv shortcut) and exit block 2 (1536, 1536, 2048, no shortcut). A unit
is ``ReLU -> depthwise 3x3 -> BN -> pointwise 1x1 -> BN``, the ReLU acting on the unit's input
(DeepLab's ``activation_fn_in_separable_conv=False``); exit block 2 alone puts the ReLU inside
the unit instead, ``depthwise -> BN -> ReLU -> pointwise -> BN -> ReLU``
(``activation_fn_in_separable_conv=True``), so the network ends activated. Shortcuts read the
block's input before any ReLU. Once the requested ``output_stride`` is reached, later strides
become 1 and the dilation ("atrous rate") of the following units is multiplied by the stride
they skip: at output stride 16 only exit block 2 is dilated (rate 2); at 8, entry block 3 runs
at stride 1, the middle flow and exit block 1 at rate 2 and exit block 2 at rate 4.

Feature stages (``num_classes=None``), stride and channels:

  ============  ========  =======================  ========
  key           Xception  AlignedXception          channels
  ============  ========  =======================  ========
  stem          2         2                        64
  low_level     4         4                        128 / 256
  entry_block1            4                        128
  mid_level     8                                  256
  entry_block2            8                        256
  entry         16        min(16, output_stride)   728
  middle        16        min(16, output_stride)   728
  exit          32        output_stride            2048
  ============  ========  =======================  ========

Xception's ``low_level`` is block 2's output (128 channels). AlignedXception's ``low_level`` is
the tap of DeepLab's V3+ decoder: entry block 2's second separable unit, after its pointwise BN
(DeepLab's ``entry_flow/block2/unit_1/xception_module/separable_conv2_pointwise``; 256
channels, stride 4, before the block strides), listed after ``entry_block1``. Channels shrink
by ``width_divisor`` (test models). Xception's two "valid" stem convs leave
``(size - 3) // 2 - 1`` pixels, which each later stride halves rounding up; AlignedXception pads
so the size at stride ``s`` is ``ceil(size / s)``.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from seg_jax.layers import ConvNormAct, Norm, SeparableConv, global_avg_pool, max_pool
from seg_jax.models.common import check_image_batch

Dtype = Any


def _shortcut(x: jax.Array, skip: str, features: int, strides: int, norm: Any, dtype: Dtype,
              param_dtype: Dtype, train: bool) -> jax.Array | None:
  """Residual branch: ``"conv"`` (1x1 conv + norm named ``skip``), ``"identity"`` or ``"none"``."""
  if skip == "conv":
    return ConvNormAct(features, (1, 1), strides=strides, norm=norm, act="identity", dtype=dtype,
                       param_dtype=param_dtype, name="skip")(x, train=train)
  if skip == "identity":
    return x
  if skip == "none":
    return None
  raise ValueError(f"skip must be 'conv', 'identity' or 'none', got {skip!r}")


class XceptionBlock(nn.Module):
  """Chollet's block: ``[ReLU] sepconv BN`` per entry of ``features``, optional pool, shortcut.

  ``relu_first=False`` drops the ReLU before the first unit (its input is already activated);
  ``relu_last`` adds one after the last unit (exit block 14). ``pool`` ends the block with a 3x3/2
  max pool.
  """

  features: Sequence[int]
  skip: str = "identity"
  pool: bool = False
  relu_first: bool = True
  relu_last: bool = False
  norm: Any = "batch"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    norm = functools.partial(Norm, kind=self.norm, epsilon=1e-3, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    shortcut = _shortcut(x, self.skip, self.features[-1], 2 if self.pool else 1, norm,
                         self.dtype, self.param_dtype, train)
    y = x
    for i, features in enumerate(self.features, start=1):
      if i > 1 or self.relu_first:
        y = nn.relu(y)
      y = SeparableConv(features, dtype=self.dtype, param_dtype=self.param_dtype,
                        name=f"sepconv{i}")(y)
      y = norm(name=f"sepconv{i}_bn")(y, train=train)
    if self.relu_last:
      y = nn.relu(y)
    if self.pool:
      y = max_pool(y, (3, 3), strides=(2, 2), padding="same")
    return y if shortcut is None else y + shortcut


class Xception(nn.Module):
  """Xception: logits ``(N, num_classes)`` float32, or ``{stage: features}`` if no classes.

  Attributes:
    num_classes: classifier outputs; ``None`` returns the feature dict of the module docstring.
    middle_repeats: middle-flow blocks (8 in the paper).
    width_divisor: divides every channel count; values such as 8 give test models.
    norm: ``seg_jax.layers.Norm`` kind.
  """

  num_classes: int | None = 1000
  middle_repeats: int = 8
  width_divisor: int = 1
  norm: str = "batch"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  min_input_size: ClassVar[int] = 32
  task: ClassVar[str] = "classification"

  @property
  def stride(self) -> int:
    """Stride of the deepest features (``exit``)."""
    return 32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array | dict[str, jax.Array]:
    check_image_batch(x, self.min_input_size)
    if self.width_divisor < 1:
      raise ValueError(f"width_divisor must be >= 1, got {self.width_divisor}")
    c = lambda n: max(n // self.width_divisor, 1)
    settings = dict(norm=self.norm, dtype=self.dtype, param_dtype=self.param_dtype)
    norm = functools.partial(Norm, kind=self.norm, epsilon=1e-3, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    stem = functools.partial(ConvNormAct, kernel_size=(3, 3), padding="valid", norm=norm,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    x = stem(c(32), strides=2, name="block1_conv1")(x, train=train)
    x = stem(c(64), name="block1_conv2")(x, train=train)
    features = {"stem": x}
    entry = functools.partial(XceptionBlock, skip="conv", pool=True, **settings)
    x = entry((c(128), c(128)), relu_first=False, name="block2")(x, train=train)
    features["low_level"] = x
    x = entry((c(256), c(256)), name="block3")(x, train=train)
    features["mid_level"] = x
    x = entry((c(728), c(728)), name="block4")(x, train=train)
    features["entry"] = x
    for i in range(self.middle_repeats):
      x = XceptionBlock((c(728),) * 3, name=f"block{5 + i}", **settings)(x, train=train)
    features["middle"] = x
    n = 5 + self.middle_repeats
    x = entry((c(728), c(1024)), name=f"block{n}")(x, train=train)
    x = XceptionBlock((c(1536), c(2048)), skip="none", relu_first=False, relu_last=True,
                      name=f"block{n + 1}", **settings)(x, train=train)
    features["exit"] = x
    if self.num_classes is None:
      return features
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                 name="predictions")(global_avg_pool(x))
    return x.astype(jnp.float32)


class AlignedXceptionBlock(nn.Module):
  """One DeepLab ``xception_module``: three separable units, the last one strides; shortcut.

  Returns the block output and the output of each unit. ``act_in_unit`` selects DeepLab's
  ``activation_fn_in_separable_conv``: False puts a ReLU before each unit, True puts one after
  the depthwise BN and one after the pointwise BN.
  """

  features: Sequence[int]
  skip: str = "identity"
  strides: int = 1
  dilation: int = 1
  act_in_unit: bool = False
  norm: str = "batch"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, list[jax.Array]]:
    norm = functools.partial(Norm, kind=self.norm, epsilon=1e-3, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    shortcut = _shortcut(x, self.skip, self.features[-1], self.strides, norm, self.dtype,
                         self.param_dtype, train)
    y, units = x, []
    for i, features in enumerate(self.features, start=1):
      if not self.act_in_unit:
        y = nn.relu(y)
      # Symmetric padding of `dilation` gives ceil(size / stride) for the 3x3 kernel.
      y = SeparableConv(features, strides=self.strides if i == len(self.features) else 1,
                        dilation=self.dilation, padding=self.dilation, mid_norm=norm,
                        mid_act="relu" if self.act_in_unit else None, dtype=self.dtype,
                        param_dtype=self.param_dtype, name=f"sepconv{i}")(y, train=train)
      y = norm(name=f"sepconv{i}_bn")(y, train=train)
      if self.act_in_unit:
        y = nn.relu(y)
      units.append(y)
    return (y if shortcut is None else y + shortcut), units


class AlignedXception(nn.Module):
  """DeepLab's Xception-65 with atrous separable convolutions (DeepLabV3+ backbone).

  Attributes:
    num_classes: classifier outputs; ``None`` returns the feature dict of the module docstring.
    output_stride: 8, 16 or 32; stride of the ``exit`` features (32 = no dilation).
    middle_repeats: middle-flow blocks (16 in Xception-65).
    width_divisor: divides every channel count; values such as 8 give test models.
    norm: ``seg_jax.layers.Norm`` kind.
  """

  num_classes: int | None = 1000
  output_stride: int = 16
  middle_repeats: int = 16
  width_divisor: int = 1
  norm: str = "batch"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  min_input_size: ClassVar[int] = 32
  task: ClassVar[str] = "classification"

  @property
  def stride(self) -> int:
    """Stride of the deepest features (``exit``)."""
    return self.output_stride

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array | dict[str, jax.Array]:
    check_image_batch(x, self.min_input_size)
    if self.output_stride not in (8, 16, 32):
      raise ValueError(f"output_stride must be 8, 16 or 32, got {self.output_stride}")
    if self.width_divisor < 1:
      raise ValueError(f"width_divisor must be >= 1, got {self.width_divisor}")
    c = lambda n: max(n // self.width_divisor, 1)
    settings = dict(norm=self.norm, dtype=self.dtype, param_dtype=self.param_dtype)
    stride, rate = 1, 1

    def place(nominal: int) -> tuple[int, int]:
      """(stride, dilation) of the next unit; strides past output_stride turn into dilation."""
      nonlocal stride, rate
      if stride == self.output_stride:
        dilation, rate = rate, rate * nominal
        return 1, dilation
      stride *= nominal
      return nominal, rate

    norm = functools.partial(Norm, kind=self.norm, epsilon=1e-3, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    stem = functools.partial(ConvNormAct, kernel_size=(3, 3), padding=1, norm=norm,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    x = stem(c(32), strides=place(2)[0], name="conv1")(x, train=train)
    x = stem(c(64), name="conv2")(x, train=train)
    features = {"stem": x}

    def block(name, widths, skip, nominal_stride, y, act_in_unit=False):
      strides, dilation = place(nominal_stride)
      return AlignedXceptionBlock(widths, skip=skip, strides=strides, dilation=dilation,
                                  act_in_unit=act_in_unit, name=name, **settings)(y, train=train)

    x, _ = block("entry_block1", (c(128),) * 3, "conv", 2, x)
    features["entry_block1"] = x
    x, units = block("entry_block2", (c(256),) * 3, "conv", 2, x)
    features["low_level"] = units[1]
    features["entry_block2"] = x
    x, _ = block("entry_block3", (c(728),) * 3, "conv", 2, x)
    features["entry"] = x
    for i in range(self.middle_repeats):
      x, _ = block(f"middle_block{i + 1}", (c(728),) * 3, "identity", 1, x)
    features["middle"] = x
    x, _ = block("exit_block1", (c(728), c(1024), c(1024)), "conv", 2, x)
    x, _ = block("exit_block2", (c(1536), c(1536), c(2048)), "none", 1, x, act_in_unit=True)
    features["exit"] = x
    if self.num_classes is None:
      return features
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                 name="fc")(global_avg_pool(x))
    return x.astype(jnp.float32)
