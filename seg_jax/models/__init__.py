"""Model registry: every architecture a config can name, built by ``create(name, ...)``.

Segmentation models are presets of one composition, ``segmentation.SegmentationModel``
(backbone -> neck -> decoder -> head); they map NHWC images of any size ``H, W >= 32`` to float32
logits ``(N, H, W, num_classes)``. Classifiers map images to float32 logits ``(N, num_classes)``.
A model's class tells which it is (``task``), and its smallest input side (``min_input_size``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seg_jax.models import asym_unet, classifiers, deeplab, fcn, segmentation, unet, unetpp
from seg_jax.models.backbones import googlenet, resnet, vgg, xception

_PRESETS = {**unet.PRESETS, **asym_unet.PRESETS, **unetpp.PRESETS, **deeplab.PRESETS,
            **fcn.PRESETS}

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    **{name: functools.partial(segmentation.SegmentationModel, **preset)
       for name, preset in _PRESETS.items()},
    "googlenet": googlenet.GoogLeNet,
    "resnet18": resnet.ResNet18,
    "resnet34": resnet.ResNet34,
    "resnet50": resnet.ResNet50,
    "resnet101": resnet.ResNet101,
    "vgg16": vgg.VGG16,
    "xception": xception.Xception,
    "mlp": classifiers.MLP,
    "simple_cnn": classifiers.SimpleCNN,
}

_ABLATIONS: dict[str, dict[str, dict[str, Any]]] = {"asym_unet": asym_unet.ABLATIONS}


def available() -> list[str]:
  """Sorted names accepted by ``create``."""
  return sorted(_REGISTRY)


def _model_class(name: str) -> type[nn.Module]:
  if name not in _REGISTRY:
    raise ValueError(f"model name must be one of {available()}, got {name!r}")
  factory = _REGISTRY[name]
  return factory.func if isinstance(factory, functools.partial) else factory


def is_segmentation(name: str) -> bool:
  """Whether ``name`` is a segmentation model (dense logits) rather than a classifier."""
  return _model_class(name).task == "segmentation"


def min_input_size(name: str) -> int:
  """Smallest height and width model ``name`` accepts."""
  return _model_class(name).min_input_size


def ablations(name: str) -> list[str]:
  """Names of the ablation settings of model ``name`` (``create(name, ablation=...)``)."""
  _model_class(name)
  return sorted(_ABLATIONS.get(name, {}))


def settings(name: str, ablation: str = "", **kwargs: Any) -> dict[str, Any]:
  """The fields ``create`` passes to model ``name``'s module.

  For a segmentation model: its preset, ``kwargs`` laid over it and then the ``ablation``
  settings laid over both (``segmentation.merge_settings``), so an ablation decides the switches
  it names whatever the config says. Classifiers take ``kwargs`` as they are and no ablation.
  """
  if ablation and ablation not in ablations(name):
    raise ValueError(f"ablation of model {name!r} must be one of {ablations(name)} (or empty), "
                     f"got {ablation!r}")
  if not is_segmentation(name):
    return dict(kwargs)
  merged = segmentation.merge_settings(_PRESETS[name], kwargs)
  if ablation:
    merged = segmentation.merge_settings(merged, _ABLATIONS[name][ablation])
  return merged


def create(name: str, *, num_classes: int, dtype: Any = jnp.float32, ablation: str = "",
           dense: bool = False, **kwargs: Any) -> nn.Module:
  """Builds model ``name``; ``kwargs`` are fields of its module (e.g. ``output_stride=8``).

  For segmentation models they are ``SegmentationModel`` fields merged into the preset, e.g.
  ``backbone_kwargs={"output_stride": 8}`` (see ``settings``); ``ablation`` names one of
  ``ablations(name)``. ``dtype`` is the compute dtype (a dtype or its name, e.g.
  ``"bfloat16"``); parameters stay ``param_dtype`` (float32 unless given) and logits are float32.
  ``dense=True`` gives per-pixel logits ``(N, H, W, num_classes)`` for every name: a classifier
  comes wrapped in ``segmentation.DenseFromClassifier`` (same parameters), which is how the
  trainer trains it.
  """
  fields = settings(name, ablation, **kwargs)
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
  try:
    dtype = jnp.dtype(dtype)
  except TypeError as e:
    raise ValueError(f"dtype must name a JAX dtype, got {dtype!r}") from e
  try:
    model = _REGISTRY[name](num_classes=num_classes, dtype=dtype, **fields)
  except TypeError as e:
    raise ValueError(f"bad keyword arguments for model {name!r}: {e}") from e
  if dense and not is_segmentation(name):
    return segmentation.DenseFromClassifier(model)
  return model


def count_params(variables: Any) -> int:
  """Number of scalars in the ``params`` collection (BatchNorm statistics not counted)."""
  params = variables.get("params", {}) if hasattr(variables, "get") else variables["params"]
  return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


__all__ = ["ablations", "available", "count_params", "create", "is_segmentation",
           "min_input_size", "settings"]
