"""torchvision parameter names and layouts for the seg_jax models that mirror torchvision's.

Each supported model has rules that turn a seg_jax variable path into torchvision's state-dict
name (``params/layer1/block0/conv1/kernel`` -> ``layer1.0.conv1.weight``). Layouts are converted
explicitly: conv kernels HWIO <-> OIHW (depthwise ones too), dense kernels (in, out) <-> (out, in),
VGG's fc6 from torch's (channel, row, column) flattening to seg_jax's (row, column, channel), and
BatchNorm ``scale``/``bias`` <-> ``weight``/``bias`` with running statistics in ``batch_stats``
(``mean``/``var`` <-> ``running_mean``/``running_var``). torch's ``num_batches_tracked`` counters
carry no weight: an import accepts them and an export writes zeros. BatchNorm epsilon is not
in a state dict: each seg_jax model sets torchvision's (1e-5; GoogLeNet 1e-3).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from seg_jax.weights import common

_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
           "var": "running_var"}

_RESNET = [(r"block(\d+)", r"\1"), (r"downsample/conv", "downsample/0"),
           (r"downsample/norm/bn", "downsample/1"), (r"(bn\d)/bn", r"\1")]
_GOOGLENET = [(r"branch(\d)_(\d)", r"branch\1/\2"), (r"branch4/", "branch4/1/"),
              (r"/norm/bn$", "/bn")]
_FCN_HEAD = [(r"^head/conv/conv$", "classifier/0"), (r"^head/conv/norm/bn$", "classifier/1"),
             (r"^head/classifier$", "classifier/4")]
_DEEPLAB_HEAD = [
    (r"^neck/conv1x1/conv$", "classifier/0/convs/0/0"),
    (r"^neck/conv1x1/norm/bn$", "classifier/0/convs/0/1"),
    (r"^neck/atrous(\d)/conv$", lambda m: f"classifier/0/convs/{int(m[1]) + 1}/0"),
    (r"^neck/atrous(\d)/norm/bn$", lambda m: f"classifier/0/convs/{int(m[1]) + 1}/1"),
    (r"^neck/image_pool/conv$", "classifier/0/convs/4/1"),
    (r"^neck/image_pool/norm/bn$", "classifier/0/convs/4/2"),
    (r"^neck/project/conv$", "classifier/0/project/0"),
    (r"^neck/project/norm/bn$", "classifier/0/project/1"),
    (r"^head/conv/conv$", "classifier/1"), (r"^head/conv/norm/bn$", "classifier/2"),
    (r"^head/classifier$", "classifier/4"),
]


def _vgg_rules(batch_norm: bool = False) -> list:
  """VGG-16: ``conv{s}_{i}`` -> ``features.{index}`` and fc6/fc7/fc8 -> ``classifier.0/3/6``."""
  rules, index = [], 0
  for stage, num_convs in enumerate((2, 2, 3, 3, 3), start=1):
    for i in range(1, num_convs + 1):
      rules.append((rf"^conv{stage}_{i}$", f"features/{index}"))
      if batch_norm:
        rules.append((rf"^bn{stage}_{i}/bn$", f"features/{index + 1}"))
      index += 3 if batch_norm else 2
    index += 1  # The max pool.
  return rules + [(r"^fc6$", "classifier/0"), (r"^fc7$", "classifier/3"),
                  (r"^fc8$", "classifier/6")]


# Model name -> (rules on the module path, torch name of the classifier weight).
_MODELS: dict[str, tuple[list, str]] = {
    **{name: (_RESNET, "fc.weight") for name in ("resnet18", "resnet34", "resnet50", "resnet101")},
    "vgg16": (_vgg_rules(), "classifier.6.weight"),
    "googlenet": (_GOOGLENET, "fc.weight"),
    "fcn_resnet50": (_RESNET + _FCN_HEAD, "classifier.4.weight"),
    "deeplabv3_resnet50": (_RESNET + _DEEPLAB_HEAD, "classifier.4.weight"),
}

SUPPORTED = tuple(sorted(_MODELS))


def _check_name(model_name: str) -> None:
  if model_name not in _MODELS:
    raise ValueError(f"torchvision layout is known for {list(SUPPORTED)}, got {model_name!r}")


def torch_name(model_name: str, path: str) -> str:
  """torchvision's state-dict name of seg_jax variable ``path`` (``"params/conv1/kernel"``)."""
  _check_name(model_name)
  _, *modules, leaf = path.split("/")
  module = "/".join(modules)
  for pattern, replacement in _MODELS[model_name][0]:
    module = re.sub(pattern, replacement, module)
  return f"{module}/{_LEAVES[leaf]}".replace("/", ".")


def _is_fc6(model_name: str, path: str) -> bool:
  return model_name == "vgg16" and path == "params/fc6/kernel"


def _to_seg_jax(model_name: str, path: str, shape: tuple) -> Callable[[np.ndarray], np.ndarray]:
  """Converts a torch array to the layout of the seg_jax variable ``path`` of ``shape``."""
  if _is_fc6(model_name, path):
    # torch flattens pool5 as (C, 7, 7); seg_jax as (7, 7, C).
    def fc6(w):
      out, fan_in = w.shape
      channels = fan_in // 49
      return w.reshape(out, channels, 7, 7).transpose(2, 3, 1, 0).reshape(fan_in, out)
    return fc6
  if path.endswith("/kernel") and len(shape) == 4:
    return lambda w: np.transpose(w, (2, 3, 1, 0))  # OIHW -> HWIO
  if path.endswith("/kernel") and len(shape) == 2:
    return lambda w: np.transpose(w)  # (out, in) -> (in, out)
  return lambda w: w


def _to_torch(model_name: str, path: str, value: np.ndarray) -> np.ndarray:
  """The inverse of ``_to_seg_jax``."""
  if _is_fc6(model_name, path):
    fan_in, out = value.shape
    channels = fan_in // 49
    return value.reshape(7, 7, channels, out).transpose(3, 2, 0, 1).reshape(out, fan_in)
  if path.endswith("/kernel") and value.ndim == 4:
    return np.transpose(value, (3, 2, 0, 1))
  if path.endswith("/kernel") and value.ndim == 2:
    return np.transpose(value)
  return value


def _counters(names: Sequence[str]) -> dict[str, str]:
  """``num_batches_tracked`` of every BatchNorm whose running mean is in ``names``."""
  return {n.replace("running_mean", "num_batches_tracked"): "a BatchNorm step counter"
          for n in names if n.endswith(".running_mean")}


def load_state_dict(source: Any) -> dict[str, np.ndarray]:
  """``{name: array}`` from a state dict, a ``.pth``/``.pt`` file or a ``.safetensors`` file."""
  if isinstance(source, (str, os.PathLike)):
    path = os.fspath(source)
    if path.endswith(".safetensors"):
      from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
      return dict(load_file(path))
    if path.endswith((".pth", ".pt")):
      try:
        import torch  # pylint: disable=g-import-not-at-top
      except ImportError as e:
        raise ImportError(f"reading {path} needs torch (pip install 'seg_jax[torch]')") from e
      source = torch.load(path, map_location="cpu", weights_only=True)
    else:
      raise ValueError(f"torch weights must be a .pth, .pt or .safetensors file, got {path!r}")
  if not isinstance(source, Mapping):
    raise ValueError(f"source must be a state dict or a file name, got {type(source).__name__}")
  return {name: (value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value))
          for name, value in source.items()}


def from_torch(model_name: str, source: Any, *, skip: Sequence[str] = (),
               **model_kwargs: Any) -> dict[str, Any]:
  """Variables of seg_jax model ``model_name`` from torchvision weights of the same model.

  Args:
    model_name: one of ``SUPPORTED`` (a ``seg_jax.models`` name).
    source: a state dict (``model.state_dict()``; tensors or arrays), or a ``.pth``/``.pt``
      (needs torch) or ``.safetensors`` file with torchvision's names.
    skip: name prefixes of the source not to import, e.g. ``("aux_classifier.",)`` for
      torchvision's segmentation models trained with an auxiliary head, whose seg_jax version
      has none.
    **model_kwargs: fields of the seg_jax model (``models.create``), e.g. ``aux_logits=True``.

  Returns:
    ``{"params": ..., "batch_stats": ...}`` for ``models.create(model_name, num_classes=N,
    **model_kwargs)``, N being the class count of the source's classifier.

  Raises:
    ValueError: a tensor missing, unexpected or of another shape (the message lists them),
      or an unknown model name.
  """
  _check_name(model_name)
  found = {n: v for n, v in load_state_dict(source).items()
           if not any(n.startswith(prefix) for prefix in skip)}
  classifier = _MODELS[model_name][1]
  if classifier not in found:
    raise ValueError(f"torch weights for {model_name!r} need {classifier!r} (the classifier), "
                     f"which is missing; found {sorted(found)[:8]}...")
  expected = common.expected_shapes(model_name, int(found[classifier].shape[0]), **model_kwargs)
  names = {path: torch_name(model_name, path) for path in expected}
  convert = {path: _to_seg_jax(model_name, path, shape) for path, shape in expected.items()}
  return common.match(f"torch weights for {model_name!r}", found, expected, names, convert,
                      extra=_counters(names.values()))


def to_torch(model_name: str, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """torchvision's state dict (numpy arrays) of seg_jax ``variables`` of model ``model_name``.

  ``torch.from_numpy`` of each value loads into the torchvision model with ``strict=True``; the
  inverse of ``from_torch``.
  """
  _check_name(model_name)
  state = {}
  for path, value in common.flatten(variables).items():
    # Contiguous, as torch.from_numpy and safetensors store the memory as it lies.
    state[torch_name(model_name, path)] = np.ascontiguousarray(
        _to_torch(model_name, path, np.asarray(value)))
  for name in _counters(list(state)):
    state[name] = np.zeros((), np.int64)
  return state
