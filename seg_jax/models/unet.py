"""U-Net (Ronneberger et al. 2015): its contracting path (a backbone) and its expanding path.

``UNetEncoder`` is a stack of stages; stage ``i > 0`` max-pools by 2 and then applies
``blocks[i]`` 3x3 conv-norm-act layers with ``widths[i]`` channels; it returns every stage, so it
is the ``unet_encoder`` backbone of ``seg_jax.models.segmentation``. ``UNetDecoder`` is the
``unet`` decoder: from the deepest features up, it upsamples by 2 (2x2 transposed conv, or
bilinear resize + 3x3 conv), concatenates the skip of the same resolution and applies ``blocks``
3x3 conv-norm-act layers. It decodes any backbone whose strides double from one stage to the
next (a ResNet, VGG or aligned Xception too). Convolutions use "same" padding (the paper's valid
convolutions would shrink the output) and BatchNorm (absent from the paper, standard since).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from seg_jax import layers

Dtype = Any

UPSAMPLE_MODES = ("transpose", "bilinear")

PRESETS: dict[str, dict[str, Any]] = {
    "unet": dict(
        backbone="unet_encoder",
        backbone_kwargs=dict(widths=(64, 128, 256, 512, 1024), blocks=2),
        decoder="unet", decoder_kwargs=dict(widths=None, blocks=2)),
}
"""The paper's U-Net (base width 64, depth 4, 2x2 up-convolutions) as a segmentation model."""


def per_stage(name: str, value: int | Sequence[int], num_stages: int) -> tuple[int, ...]:
  """``value`` for each of ``num_stages`` stages: an int applies to all, a sequence is checked."""
  if isinstance(value, int):
    return (value,) * num_stages
  if len(value) != num_stages:
    raise ValueError(f"{name} must be an int or have {num_stages} entries, got {value!r}")
  return tuple(value)


def doubling_levels(pyramid: Mapping[int, jax.Array], decoder: str) -> list[jax.Array]:
  """The features of ``pyramid`` (``{stride: features}``), deepest first, each checked to be
  twice the size of the one before it (``decoder`` names the decoder in the error)."""
  strides = sorted(pyramid)
  levels = [pyramid[s] for s in reversed(strides)]
  for below, skip in zip(levels, levels[1:]):
    if skip.shape[1:3] != (2 * below.shape[1], 2 * below.shape[2]):
      raise ValueError(
          f"the {decoder} decoder needs every skip at twice the size of the features below it; "
          f"the backbone has features at strides {strides}")
  return levels


class ConvStack(nn.Module):
  """``num_convs`` 3x3 conv-norm-act layers of ``features`` channels, then optional SE.

  The convolutions have a bias only when ``norm`` is ``"none"`` (``ConvNormAct``'s default).
  """

  features: int
  num_convs: int = 2
  norm: str = "batch"
  act: str = "relu"
  se: bool = False
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
    if self.se:
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
  """Contracting path; returns ``{"stage0": ..., "stageN": ...}`` (stage i at stride 2**i).

  Attributes:
    widths: channels of each stage, shallowest first (at least two stages).
    blocks: conv layers per stage (an int applies to every stage).
    se: Squeeze-and-Excitation at the end of every stage.
    dropout_rate: dropout on the deepest stage (the paper's dropout at the end of the
      contracting path; 0 disables it).
  """

  widths: Sequence[int] = (64, 128, 256, 512, 1024)
  blocks: int | Sequence[int] = 2
  norm: str = "batch"
  act: str = "relu"
  se: bool = False
  se_reduction: int = 16
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def stride(self) -> int:
    """Stride of the deepest stage."""
    return 2 ** (len(self.widths) - 1)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    """Returns the output of every stage, shallowest first."""
    if len(self.widths) < 2:
      raise ValueError(f"widths must list at least 2 stages, got {self.widths!r}")
    blocks = per_stage("blocks", self.blocks, len(self.widths))
    features = {}
    for i, (width, num_convs) in enumerate(zip(self.widths, blocks)):
      if i > 0:
        x = layers.max_pool(x, (2, 2))
      x = ConvStack(
          width, num_convs, norm=self.norm, act=self.act, se=self.se,
          se_reduction=self.se_reduction, dtype=self.dtype, param_dtype=self.param_dtype,
          name=f"stage{i}")(x, train=train)
      features[f"stage{i}"] = x
    features[f"stage{len(self.widths) - 1}"] = layers.Dropout(self.dropout_rate)(x, train=train)
    return features


class UNetDecoder(nn.Module):
  """Expanding path: per skip, deepest first: upsample x2, concat the skip, conv stack.

  Attributes:
    widths: channels of each decoder stage, deepest first; ``None`` makes each stage as wide
      as its skip (the symmetric U-Net).
    blocks: conv layers per stage (an int applies to every stage).
    upsample: ``"transpose"`` (2x2 up-convolution) or ``"bilinear"`` (resize + 3x3 conv).
    se: Squeeze-and-Excitation at the end of every decoder stage.
    skip_se: Squeeze-and-Excitation on every skip before it is concatenated.
  """

  widths: Sequence[int] | None = None
  blocks: int | Sequence[int] = 2
  upsample: str = "transpose"
  norm: str = "batch"
  act: str = "relu"
  se: bool = False
  skip_se: bool = False
  se_reduction: int = 16
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  emits_logits: ClassVar[bool] = False

  @nn.compact
  def __call__(self, pyramid: Mapping[int, jax.Array], *, train: bool) -> jax.Array:
    """Decodes ``pyramid`` (``{stride: features}``) to the resolution of its shallowest entry."""
    x, *skips = doubling_levels(pyramid, "unet")
    widths = (tuple(skip.shape[-1] for skip in skips) if self.widths is None
              else per_stage("decoder widths", self.widths, len(skips)))
    blocks = per_stage("decoder blocks", self.blocks, len(skips))
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for i, (skip, width, num_convs) in enumerate(zip(skips, widths, blocks)):
      x = Upsample2x(width, self.upsample, **kw, name=f"up{i}")(x)
      if self.skip_se:
        skip = layers.SqueezeExcitation(reduction=self.se_reduction, **kw, name=f"skip_se{i}")(skip)
      x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
      x = ConvStack(
          width, num_convs, norm=self.norm, act=self.act, se=self.se,
          se_reduction=self.se_reduction, **kw, name=f"stage{i}")(x, train=train)
    return x
