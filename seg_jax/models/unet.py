"""U-Net (Ronneberger et al. 2015) and the encoder/decoder blocks shared with ``asym_unet``.

The contracting path is a stack of stages; stage ``i > 0`` max-pools by 2 and then applies
``blocks[i]`` 3x3 conv-norm-act layers with ``widths[i]`` channels. The expanding path upsamples
by 2 (2x2 transposed conv, or bilinear resize + 3x3 conv), concatenates the skip of the same
resolution and applies ``blocks[i]`` 3x3 conv-norm-act layers. Convolutions use "same" padding
(the paper's valid convolutions would shrink the output) and BatchNorm (absent from the paper,
standard since); the input is padded to a multiple of ``2**depth`` and the logits cropped back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seg_jax import layers
from seg_jax.models import common

Dtype = Any

UPSAMPLE_MODES = ("transpose", "bilinear")
SE_PLACES = ("encoder", "skip", "decoder")


class ConvStack(nn.Module):
  """``num_convs`` 3x3 conv-norm-act layers of ``features`` channels, then optional SE.

  The convolutions have a bias only when ``norm`` is ``"none"`` (``ConvNormAct``'s default).
  """

  features: int
  num_convs: int = 2
  norm: str = "batch"
  act: str = "relu"
  use_se: bool = False
  se_reduction: int = 16
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Applies the stack to NHWC ``x``."""
    for i in range(self.num_convs):
      x = layers.ConvNormAct(
          self.features, (3, 3), norm=self.norm, act=self.act, dtype=self.dtype,
          param_dtype=self.param_dtype, name=f"conv{i}")(x, train=train)
    if self.use_se:
      x = layers.SqueezeExcitation(
          reduction=self.se_reduction, dtype=self.dtype, param_dtype=self.param_dtype,
          name="se")(x)
    return x


class Upsample2x(nn.Module):
  """Doubles H and W: 2x2 stride-2 transposed conv, or bilinear resize followed by a 3x3 conv."""

  features: int
  mode: str = "transpose"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Upsamples NHWC ``x`` to twice its spatial size with ``features`` channels."""
    if self.mode not in UPSAMPLE_MODES:
      raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {self.mode!r}")
    if self.mode == "transpose":
      return layers.ConvTranspose(
          self.features, (2, 2), strides=2, padding="valid", dtype=self.dtype,
          param_dtype=self.param_dtype, name="conv")(x)
    x = layers.resize(x, (2 * x.shape[1], 2 * x.shape[2]), method="bilinear")
    return layers.Conv(
        self.features, (3, 3), dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x)


class UNetEncoder(nn.Module):
  """Contracting path; returns ``{"stage0": ..., "stageN": ...}`` (stage i at stride 2**i)."""

  widths: Sequence[int]
  blocks: Sequence[int]
  norm: str = "batch"
  act: str = "relu"
  use_se: bool = False
  se_reduction: int = 16
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    """Returns the output of every stage, shallowest first."""
    features = {}
    for i, (width, num_convs) in enumerate(zip(self.widths, self.blocks, strict=True)):
      if i > 0:
        x = layers.max_pool(x, (2, 2))
      x = ConvStack(
          width, num_convs, norm=self.norm, act=self.act, use_se=self.use_se,
          se_reduction=self.se_reduction, dtype=self.dtype, param_dtype=self.param_dtype,
          name=f"stage{i}")(x, train=train)
      features[f"stage{i}"] = x
    return features


class UNetDecoder(nn.Module):
  """Expanding path: per stage, upsample x2, concat the skip of that size, conv stack.

  ``skips`` are the encoder features shallowest first, without the deepest one; ``widths`` and
  ``blocks`` are listed deepest first (the order the decoder runs in).
  """

  widths: Sequence[int]
  blocks: Sequence[int]
  upsample: str = "transpose"
  norm: str = "batch"
  act: str = "relu"
  use_se: bool = False
  skip_se: bool = False
  se_reduction: int = 16
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, skips: Sequence[jax.Array], *, train: bool) -> jax.Array:
    """Decodes the deepest features ``x`` using ``skips``."""
    if len(skips) != len(self.widths):
      raise ValueError(f"skips must have {len(self.widths)} entries, got {len(skips)}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for i, (width, num_convs) in enumerate(zip(self.widths, self.blocks, strict=True)):
      skip = skips[-1 - i]
      x = Upsample2x(width, self.upsample, **kw, name=f"up{i}")(x)
      if self.skip_se:
        skip = layers.SqueezeExcitation(reduction=self.se_reduction, **kw, name=f"skip_se{i}")(skip)
      x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
      x = ConvStack(
          width, num_convs, norm=self.norm, act=self.act, use_se=self.use_se,
          se_reduction=self.se_reduction, **kw, name=f"stage{i}")(x, train=train)
    return x


def check_se_where(se_where: Sequence[str]) -> None:
  """Raises ValueError unless every entry of ``se_where`` is one of ``SE_PLACES``."""
  bad = [w for w in se_where if w not in SE_PLACES]
  if bad or isinstance(se_where, str):
    raise ValueError(f"se_where must be a subset of {SE_PLACES}, got {se_where!r}")


def encoder_decoder_logits(
    x: jax.Array, *, train: bool, num_classes: int, widths: Sequence[int],
    encoder_blocks: Sequence[int], decoder_widths: Sequence[int], decoder_blocks: Sequence[int],
    upsample: str, norm: str, act: str, dtype: Dtype, param_dtype: Dtype,
    dropout_rate: float = 0.0, se_where: Sequence[str] = (), se_reduction: int = 16,
    aspp_rates: Sequence[int] | None = None, aspp_features: int = 256,
    aspp_dropout_rate: float = 0.1) -> jax.Array:
  """U-shaped forward pass; called from a compact method, whose module owns the children.

  Children: ``encoder``, ``dropout`` (rate > 0), ``aspp`` (``aspp_rates`` not None), ``decoder``
  and the 1x1 ``head``. Returns float32 logits at the input resolution. ``se_where`` lists
  entries of ``SE_PLACES`` (validated by the caller with ``check_se_where``); an invalid
  ``upsample`` raises from ``Upsample2x``. The defaults are a plain U-Net: no dropout, SE or
  ASPP; ``aspp_features`` and ``aspp_dropout_rate`` are used only with ``aspp_rates``.
  """
  depth = len(widths) - 1
  if depth < 1:
    raise ValueError(f"widths must list at least 2 stages, got {widths!r}")
  if len(encoder_blocks) != len(widths):
    raise ValueError(
        f"encoder_blocks must have len(widths)={len(widths)} entries, got {encoder_blocks!r}")
  if len(decoder_widths) != depth or len(decoder_blocks) != depth:
    raise ValueError(
        f"decoder_widths and decoder_blocks must have {depth} entries, got "
        f"{decoder_widths!r} and {decoder_blocks!r}")
  kw = dict(dtype=dtype, param_dtype=param_dtype)

  def body(x):
    features = UNetEncoder(
        widths, encoder_blocks, norm=norm, act=act, use_se="encoder" in se_where,
        se_reduction=se_reduction, **kw, name="encoder")(x, train=train)
    stages = list(features.values())
    y = stages[-1]
    if dropout_rate > 0:
      y = layers.Dropout(dropout_rate, name="dropout")(y, train=train)
    if aspp_rates is not None:
      y = layers.ASPP(
          aspp_features, rates=tuple(aspp_rates), dropout_rate=aspp_dropout_rate, norm=norm,
          act=act, **kw, name="aspp")(y, train=train)
    y = UNetDecoder(
        decoder_widths, decoder_blocks, upsample=upsample, norm=norm, act=act,
        use_se="decoder" in se_where, skip_se="skip" in se_where, se_reduction=se_reduction,
        **kw, name="decoder")(y, stages[:-1], train=train)
    return layers.Conv(num_classes, (1, 1), **kw, name="head")(y)

  return common.segment_padded(x, 2**depth, body)


class UNet(nn.Module):
  """U-Net: ``depth`` poolings, widths ``base_width * 2**i``, two 3x3 convs per stage.

  Defaults follow the paper (base 64, depth 4, 2x2 up-convolutions); ``dropout_rate`` drops
  the deepest features (the paper's dropout at the end of the contracting path; 0 disables it).
  """

  num_classes: int
  depth: int = 4
  base_width: int = 64
  upsample: str = "transpose"
  norm: str = "batch"
  act: str = "relu"
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Returns float32 logits ``(N, H, W, num_classes)`` for NHWC ``x``."""
    if self.depth < 1:
      raise ValueError(f"depth must be >= 1, got {self.depth}")
    if self.base_width < 1:
      raise ValueError(f"base_width must be >= 1, got {self.base_width}")
    widths = tuple(self.base_width * 2**i for i in range(self.depth + 1))
    return encoder_decoder_logits(
        x, train=train, num_classes=self.num_classes, widths=widths,
        encoder_blocks=(2,) * (self.depth + 1), decoder_widths=widths[-2::-1],
        decoder_blocks=(2,) * self.depth, upsample=self.upsample, norm=self.norm, act=self.act,
        dtype=self.dtype, param_dtype=self.param_dtype, dropout_rate=self.dropout_rate)
