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
  the whole tile re-weights the channels per image at under 1% extra parameters. The decoder's
  ``skip_se`` and ``se`` also place it on the skips (recalibrating what the decoder copies) and
  in the decoder stages.
* ASPP at the bottleneck [on, rates 2-4-6 and image pooling, 256 channels]. Objects span a wide
  range of sizes from a car park to a lake; parallel atrous branches see several context sizes
  without further downsampling, which would lose thin roads, and the pooling branch adds
  tile-level context (a tile that is mostly water). The bottleneck of a 144x256 input is 9x16,
  so the rates are kept small: the DeepLab rates 6-12-18 would mostly read padding there.

It is a preset of ``seg_jax.models.segmentation.SegmentationModel``: the ``unet_encoder``
backbone with SE, the ``aspp`` neck, the ``unet`` decoder and a 1x1 conv head; each switch is a
kwarg of its part. ``ABLATIONS`` names settings for the ablation study
(``models.create("asym_unet", ablation=NAME)``, or ``--config.model.ablation=NAME``); they
change only the switches, so they apply at any widths: ``plain_unet`` is the symmetric U-Net of
the same encoder widths (two convs per stage in both paths, decoder as wide as the skips, no SE,
no ASPP), which at the default widths is exactly ``unet`` with widths 32-512 (same parameter
tree).
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "asym_unet": dict(
        backbone="unet_encoder",
        backbone_kwargs=dict(widths=(32, 64, 128, 256, 512), blocks=(2, 2, 3, 3, 3), se=True,
                             se_reduction=16),
        neck="aspp", neck_kwargs=dict(features=256, rates=(2, 4, 6), dropout_rate=0.1),
        decoder="unet",
        decoder_kwargs=dict(widths=(128, 64, 32, 32), blocks=1, se=False, skip_se=False,
                            se_reduction=16)),
}
"""The proposal at its default widths; see the module docstring."""


def _switches(*, se: bool, aspp: bool, plain: bool = False) -> dict[str, Any]:
  """Every ablation switch set: encoder SE, ASPP neck, and (``plain``) a symmetric U-Net shape."""
  backbone = dict(se=se, **(dict(blocks=2) if plain else {}))
  decoder = dict(se=False, skip_se=False, **(dict(widths=None, blocks=2) if plain else {}))
  return dict(backbone_kwargs=backbone, neck="aspp" if aspp else "none", decoder_kwargs=decoder)


ABLATIONS: dict[str, dict[str, Any]] = {
    "plain_unet": _switches(se=False, aspp=False, plain=True),
    "plain_unet_se": _switches(se=True, aspp=False, plain=True),
    "plain_unet_aspp": _switches(se=False, aspp=True, plain=True),
    "asym": _switches(se=False, aspp=False),
    "asym_se": _switches(se=True, aspp=False),
    "asym_aspp": _switches(se=False, aspp=True),
    "full": _switches(se=True, aspp=True),
}
"""Settings of ``asym_unet`` for the ablation study, by name, applied over the model's kwargs."""
