"""Model registry: every architecture a config can name, built by ``create(name, ...)``.

Segmentation models map NHWC images of any size ``H, W >= 32`` to float32 logits
``(N, H, W, num_classes)``; classifiers map images to float32 logits ``(N, num_classes)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seg_jax.models import asym_unet, classifiers, common, deeplab, fcn, unet
from seg_jax.models.backbones import googlenet, resnet, vgg, xception

_SEGMENTATION: dict[str, Callable[..., nn.Module]] = {
    "unet": unet.UNet,
    "asym_unet": asym_unet.AsymUNet,
    "deeplabv3": deeplab.DeepLabV3,
    "deeplabv3plus": deeplab.DeepLabV3Plus,
    "fcn32s": functools.partial(fcn.FCN, stride=32),
    "fcn16s": functools.partial(fcn.FCN, stride=16),
    "fcn8s": functools.partial(fcn.FCN, stride=8),
    "fcn_resnet50": fcn.FCNResNet,
}

_CLASSIFIERS: dict[str, Callable[..., nn.Module]] = {
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

_REGISTRY = {**_SEGMENTATION, **_CLASSIFIERS}


def available() -> list[str]:
  """Sorted names accepted by ``create``."""
  return sorted(_REGISTRY)


def _check_name(name: str) -> None:
  if name not in _REGISTRY:
    raise ValueError(f"model name must be one of {available()}, got {name!r}")


def is_segmentation(name: str) -> bool:
  """Whether ``name`` is a segmentation model (dense logits) rather than a classifier."""
  _check_name(name)
  return name in _SEGMENTATION


def min_input_size(name: str) -> int:
  """Smallest height and width model ``name`` accepts."""
  _check_name(name)
  if name in _SEGMENTATION:
    return common.MIN_SEGMENTATION_SIZE
  factory = _REGISTRY[name]
  cls = factory.func if isinstance(factory, functools.partial) else factory
  return cls.min_input_size


def create(name: str, *, num_classes: int, dtype: Any = jnp.float32, **kwargs: Any) -> nn.Module:
  """Builds model ``name``; ``kwargs`` are fields of its module (e.g. ``output_stride=8``).

  ``dtype`` is the compute dtype (a dtype or its name, e.g. ``"bfloat16"``); parameters stay
  ``param_dtype`` (float32 unless given) and logits are float32.
  """
  _check_name(name)
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
  try:
    dtype = jnp.dtype(dtype)
  except TypeError as e:
    raise ValueError(f"dtype must name a JAX dtype, got {dtype!r}") from e
  try:
    return _REGISTRY[name](num_classes=num_classes, dtype=dtype, **kwargs)
  except TypeError as e:
    raise ValueError(f"bad keyword arguments for model {name!r}: {e}") from e


def count_params(variables: Any) -> int:
  """Number of scalars in the ``params`` collection (BatchNorm statistics not counted)."""
  params = variables.get("params", {}) if hasattr(variables, "get") else variables["params"]
  return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


__all__ = ["available", "count_params", "create", "is_segmentation", "min_input_size"]
