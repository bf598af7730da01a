"""Asymmetric U-Net: heavy SE encoder, ASPP bottleneck, light decoder.

Design (defaults in brackets):

* Encoder heavier than the decoder. The contracting path has more conv layers and more channels
  per stage [widths 32-64-128-256-512, 2-2-3-3-3 convs] than the expanding path [widths
  128-64-32-32, one conv per stage]. Aerial classes such as land, road and roof are told apart
  by texture and surrounding context, which is formed in the deep, low-resolution stages; the
  decoder mainly restores boundaries from skip features, which needs little capacity. Convs are
  also cheapest where the maps are small: a 3x3 conv at stride 16 costs 1/256 of the same conv
  at full resolution, so capacity is moved to where it is cheap and where it forms semantics.
* Squeeze-and-Excitation [on, reduction 16, in the encoder stages]. Aerial tiles differ
  strongly in global appearance (desert, dense city, coast, haze, season); a gate computed from
  the whole tile re-weights the channels per image at under 1% extra parameters. ``se_where``
  also allows it on the skips (recalibrating what the decoder copies) and in the decoder.
* ASPP at the bottleneck [on, rates 2-4-6 and image pooling, 256 channels]. Objects span a wide
  range of sizes from a car park to a lake; parallel atrous branches see several context sizes
  without further downsampling, which would lose thin roads, and the pooling branch adds
  tile-level context (a tile that is mostly water). The bottleneck of a 144x256 input is 9x16,
  so the rates are kept small: the DeepLab rates 6-12-18 would mostly read padding there.

Every part is a switch, so ablations are settings of one model (see ``ABLATIONS``): with
``widths=(32, ..., 512)``, two convs per stage in both paths, ``decoder_widths=(256, 128, 64,
32)``, ``use_se=False`` and ``use_aspp=False`` it is exactly ``unet`` with ``base_width=32``
(same parameter tree).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seg_jax.models import unet

Dtype = Any

_PLAIN = dict(
    widths=(32, 64, 128, 256, 512), encoder_blocks=(2, 2, 2, 2, 2),
    decoder_widths=(256, 128, 64, 32), decoder_blocks=(2, 2, 2, 2), use_se=False, use_aspp=False)

ABLATIONS: dict[str, dict[str, Any]] = {
    "plain_unet": _PLAIN,
    "plain_unet_se": {**_PLAIN, "use_se": True},
    "plain_unet_aspp": {**_PLAIN, "use_aspp": True},
    "asym": {"use_se": False, "use_aspp": False},
    "asym_se": {"use_aspp": False},
    "asym_aspp": {"use_se": False},
    "full": {},
}
"""Keyword settings of ``AsymUNet`` for the ablation study, by name."""


class AsymUNet(nn.Module):
  """Asymmetric U-Net with SE recalibration and an ASPP bottleneck; see the module docstring."""

  num_classes: int
  widths: Sequence[int] = (32, 64, 128, 256, 512)
  encoder_blocks: Sequence[int] = (2, 2, 3, 3, 3)
  decoder_widths: Sequence[int] = (128, 64, 32, 32)
  decoder_blocks: Sequence[int] = (1, 1, 1, 1)
  upsample: str = "transpose"
  norm: str = "batch"
  act: str = "relu"
  dropout_rate: float = 0.0
  use_se: bool = True
  se_reduction: int = 16
  se_where: Sequence[str] = ("encoder",)
  use_aspp: bool = True
  aspp_rates: Sequence[int] = (2, 4, 6)
  aspp_features: int = 256
  aspp_dropout_rate: float = 0.1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Returns float32 logits ``(N, H, W, num_classes)`` for NHWC ``x``."""
    # Checked even with use_se off (which passes no SE places on), so a bad value always raises.
    unet.check_se_where(self.se_where)
    return unet.encoder_decoder_logits(
        x, train=train, num_classes=self.num_classes, widths=tuple(self.widths),
        encoder_blocks=tuple(self.encoder_blocks), decoder_widths=tuple(self.decoder_widths),
        decoder_blocks=tuple(self.decoder_blocks), upsample=self.upsample, norm=self.norm,
        act=self.act, dropout_rate=self.dropout_rate,
        se_where=tuple(self.se_where) if self.use_se else (), se_reduction=self.se_reduction,
        aspp_rates=tuple(self.aspp_rates) if self.use_aspp else None,
        aspp_features=self.aspp_features, aspp_dropout_rate=self.aspp_dropout_rate,
        dtype=self.dtype, param_dtype=self.param_dtype)
