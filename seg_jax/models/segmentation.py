"""One composition for every segmentation model: backbone -> neck -> decoder -> head.

``SegmentationModel`` chains four parts, each chosen by name with its own kwargs:

* **backbone** (``BACKBONES``) maps the image to ``{stage: features}``; the stages are arranged
  by stride into a pyramid ``{stride: features}`` (the deepest stage of each stride).
* **neck** (``NECKS``, or ``"none"``) transforms the deepest features, e.g. ASPP.
* **decoder** (``DECODERS``, or ``"none"``) maps the pyramid to one feature map, e.g. U-Net skip
  fusion; ``"none"`` passes the deepest features on. A decoder that scores classes itself
  (``emits_logits``, the FCN skip fusion) is given ``num_classes`` and needs head ``"none"``.
* **head** (``HEADS``, or ``"none"``) classifies each pixel.

The logits are upsampled bilinearly to the input size. The input is reflect-padded at the
bottom/right to a multiple of the backbone's ``stride`` so every stride divides it exactly, and
the logits are cropped back. A part named ``"none"`` is absent and its kwargs are not used. Each
registered model (``seg_jax.models.create``) is a preset of these fields; see
``merge_settings`` for how kwargs and ablations are laid over a preset.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import FrozenDict

from seg_jax import layers
from seg_jax.models import common, deeplab, fcn, unet, unetpp
from seg_jax.models.backbones import resnet, vgg, xception

Dtype = Any

PARTS = ("backbone", "neck", "decoder", "head")


class ClassifierHead(nn.Module):
  """Optional 3x3 conv-norm-act of ``features`` channels and dropout, then a classifier conv.

  ``features=None`` is the plain classifier; ``features=512, dropout_rate=0.1`` is
  torchvision's ``FCNHead`` and ``features=256`` the conv part of its ``DeepLabHead``;
  ``kernel_size=3`` is the ``SegmentationHead`` of segmentation_models_pytorch. Children:
  ``conv`` (when ``features``) and ``classifier`` (``kernel_size`` square, with a bias).
  """

  num_classes: int
  features: int | None = None
  dropout_rate: float = 0.0
  kernel_size: int = 1
  norm: str = "batch"
  act: str = "relu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Returns per-pixel logits (compute dtype) for NHWC features ``x``."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.features is not None:
      x = layers.ConvNormAct(self.features, (3, 3), norm=self.norm, act=self.act, **kw,
                             name="conv")(x, train=train)
    x = layers.Dropout(self.dropout_rate)(x, train=train)
    return layers.Conv(self.num_classes, (self.kernel_size,) * 2, **kw, name="classifier")(x)


BACKBONES: dict[str, Any] = {
    "unet_encoder": unet.UNetEncoder,
    "resnet18": functools.partial(resnet.ResNet18, num_classes=None),
    "resnet34": functools.partial(resnet.ResNet34, num_classes=None),
    "resnet50": functools.partial(resnet.ResNet50, num_classes=None),
    "resnet101": functools.partial(resnet.ResNet101, num_classes=None),
    "vgg16": functools.partial(vgg.VGG16, num_classes=None),
    "xception": functools.partial(xception.Xception, num_classes=None),
    "xception65": functools.partial(xception.AlignedXception, num_classes=None),
}
"""Backbones by name: modules returning ``{stage: features}`` with a ``stride`` property."""

NECKS: dict[str, Any] = {"aspp": layers.ASPP, "fcn": fcn.FCNNeck}
"""Necks by name: modules mapping the deepest features ``x`` to new features."""

DECODERS: dict[str, Any] = {
    "unet": unet.UNetDecoder,
    "unetpp": unetpp.UNetPlusPlusDecoder,
    "deeplabv3plus": deeplab.DeepLabV3PlusDecoder,
    "fcn": fcn.FCNDecoder,
}
"""Decoders by name: modules mapping the pyramid ``{stride: features}`` to one feature map."""

HEADS: dict[str, Any] = {"conv": ClassifierHead}
"""Heads by name: modules mapping features to per-pixel logits; they take ``num_classes``."""

_TABLES = {"backbone": BACKBONES, "neck": NECKS, "decoder": DECODERS, "head": HEADS}


def part_names(part: str) -> list[str]:
  """Names accepted for ``part`` (one of ``PARTS``), ``"none"`` included where allowed."""
  return sorted(_TABLES[part]) + ([] if part == "backbone" else ["none"])


def merge_settings(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
  """``override`` laid over ``base`` (both ``SegmentationModel`` kwargs).

  Part kwargs merge key by key (``{"backbone_kwargs": {"se": False}}`` changes one setting of
  the backbone), unless ``override`` names a different part: then ``base``'s kwargs of that part
  belonged to the part it replaces and are dropped. Other fields are replaced.
  """
  merged = {**base, **override}
  for part in PARTS:
    key = f"{part}_kwargs"
    # A part missing from base is SegmentationModel's default one.
    renamed = part in override and override[part] != base.get(
        part, getattr(SegmentationModel, part))
    inherited = {} if renamed else dict(base.get(key, {}))
    if key in base or key in override:
      merged[key] = {**inherited, **dict(override.get(key, {}))}
  return merged


class DenseFromClassifier(nn.Module):
  """A classifier as a segmentation model: its logits ``(N, C)`` repeated at every pixel.

  Trained on labels whose every pixel holds the image's class (``data.labels="majority"``),
  each image has the same number of pixels, so the per-pixel cross-entropy is the mean
  per-image cross-entropy, and the confusion matrix, accuracy and IoU are those of the image
  classifications, each count multiplied by H * W; pixel accuracy is the classification
  accuracy. (A pixel ignored by the loss, e.g. one that a random rotation brings in from outside
  the image, would weigh its image less.) The classifier shares this module's scope: the
  parameters are the classifier's own tree, so ``classifier.apply`` runs a trained model's
  variables as they are.
  """

  classifier: nn.Module

  task: ClassVar[str] = "segmentation"

  def setup(self):
    nn.share_scope(self, self.classifier)

  @property
  def parts(self) -> tuple[str, ...]:
    """No named parts (``optim.backbone="freeze"`` has none to freeze)."""
    return ()

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Float32 logits ``(N, H, W, C)``: the classifier's logits of each image at its pixels."""
    logits = self.classifier(x, train=train).astype(jnp.float32)
    return jnp.broadcast_to(logits[:, None, None, :], (*x.shape[:3], logits.shape[-1]))


class SegmentationModel(nn.Module):
  """backbone -> neck -> decoder -> head; see the module docstring.

  Attributes:
    num_classes: logits per pixel.
    backbone, neck, decoder, head: part names (keys of ``BACKBONES`` ...; ``"none"`` for the
      last three). Children carry the part's role as name: ``backbone``, ``neck``, ``decoder``
      and ``head``.
    backbone_kwargs, neck_kwargs, decoder_kwargs, head_kwargs: fields of each part's module.
    frozen_parts: parts that run as at evaluation also when ``train=True`` (BatchNorm normalises
      with its stored statistics and does not update them; dropout is off), for training with
      those parts frozen. A frozen backbone passes no gradient back (nothing before it trains).
  """

  num_classes: int
  backbone: str = "unet_encoder"
  backbone_kwargs: Mapping[str, Any] = FrozenDict()
  neck: str = "none"
  neck_kwargs: Mapping[str, Any] = FrozenDict()
  decoder: str = "none"
  decoder_kwargs: Mapping[str, Any] = FrozenDict()
  head: str = "conv"
  head_kwargs: Mapping[str, Any] = FrozenDict()
  frozen_parts: Sequence[str] = ()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  min_input_size: ClassVar[int] = common.MIN_SEGMENTATION_SIZE
  task: ClassVar[str] = "segmentation"

  @property
  def parts(self) -> tuple[str, ...]:
    """The parts this model has (those not named ``"none"``), in ``PARTS`` order."""
    return tuple(p for p in PARTS if p == "backbone" or getattr(self, p) != "none")

  def _part(self, part: str, **extra: Any) -> nn.Module | None:
    """The child module of ``part`` (``None`` when it is ``"none"``), named after the part."""
    name = getattr(self, part)
    if name == "none" and part != "backbone":
      return None
    if name not in _TABLES[part]:
      raise ValueError(f"{part} must be one of {part_names(part)}, got {name!r}")
    kwargs = dict(getattr(self, f"{part}_kwargs"))
    try:
      return _TABLES[part][name](**kwargs, **extra, dtype=self.dtype,
                                 param_dtype=self.param_dtype, name=part)
    except TypeError as e:
      raise ValueError(f"bad {part}_kwargs {kwargs} for {part} {name!r}: {e}") from e

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Returns float32 logits ``(N, H, W, num_classes)`` for NHWC ``x``."""
    backbone = self._part("backbone")
    neck = self._part("neck")
    decoder_cls = DECODERS.get(self.decoder)
    emits_logits = decoder_cls is not None and decoder_cls.emits_logits
    decoder = self._part("decoder", **({"num_classes": self.num_classes} if emits_logits else {}))
    head = self._part("head", num_classes=self.num_classes)
    if emits_logits != (head is None):
      raise ValueError(f"decoder {self.decoder!r} and head {self.head!r}: the head must be "
                       "'none' exactly when the decoder outputs the logits itself")
    if set(self.frozen_parts) - set(self.parts):
      raise ValueError(f"frozen_parts {tuple(self.frozen_parts)} must be parts of this model, "
                       f"which has {self.parts}")
    trains = {part: train and part not in self.frozen_parts for part in PARTS}

    def body(x):
      features = backbone(x, train=trains["backbone"])
      if "backbone" in self.frozen_parts:
        # Nothing before a frozen backbone trains, so its backward pass is not computed.
        features = jax.lax.stop_gradient(features)
      pyramid = common.feature_pyramid(features, x.shape[1])
      deepest = max(pyramid)
      if neck is not None:
        pyramid[deepest] = neck(pyramid[deepest], train=trains["neck"])
      y = pyramid[deepest] if decoder is None else decoder(pyramid, train=trains["decoder"])
      if head is not None:
        y = head(y, train=trains["head"])
      return layers.resize(y.astype(jnp.float32), x.shape[1:3])

    return common.segment_padded(x, backbone.stride, body)
