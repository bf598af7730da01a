"""Keras weights of the seg_jax models that are Keras applications layer for layer (Xception).

Keras 3 saves a functional model's weights (``.weights.h5``, also inside a ``.keras`` zip) per
layer in ``model.layers`` order, each under its class name and a per-class counter:
``layers/conv2d/vars/0`` is the first ``Conv2D``'s kernel, ``layers/batch_normalization_3/vars/
2`` the fourth BatchNorm's moving mean. A ``keras.Model`` is read through the same file layout
(``save_weights`` to a temporary file), so every source is matched by those names and shapes.
Layouts: Keras kernels are already HWIO and dense kernels (in, out); a depthwise kernel
(kh, kw, C, 1) becomes seg_jax's grouped (kh, kw, 1, C); BatchNorm ``gamma, beta, moving_mean,
moving_variance`` are ``scale``, ``bias`` (params) and ``mean``, ``var`` (batch_stats). Keras'
BatchNorm epsilon (1e-3) is set by the seg_jax model itself.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from typing import Any

import numpy as np

from seg_jax import models
from seg_jax.weights import common

_BN_VARS = ("params/{}/scale", "params/{}/bias", "batch_stats/{}/mean", "batch_stats/{}/var")


def _xception_layers(model: Any) -> list[tuple[str, list[str]]]:
  """``(keras class, [seg_jax path of each var])`` of Keras' Xception, in ``model.layers`` order.

  ``model`` is the seg_jax ``Xception`` whose layers are listed (its ``middle_repeats``).
  """
  order: list[tuple[str, list[str]]] = []

  def bn(module):
    order.append(("batch_normalization", [v.format(module + "/bn") for v in _BN_VARS]))

  def sepconv(block, i):
    order.append(("separable_conv2d", [f"params/{block}/sepconv{i}/depthwise/kernel",
                                       f"params/{block}/sepconv{i}/pointwise/kernel"]))
    bn(f"{block}/sepconv{i}_bn")

  def residual(block):  # Keras adds the 1x1 shortcut after the block's last BatchNorm.
    order.append(("conv2d", [f"params/{block}/skip/conv/kernel"]))
    bn(f"{block}/skip/norm")

  for name in ("block1_conv1", "block1_conv2"):
    order.append(("conv2d", [f"params/{name}/conv/kernel"]))
    bn(f"{name}/norm")
  exit_block = 5 + model.middle_repeats
  for block in range(2, exit_block + 2):
    units = (1, 2, 3) if 5 <= block < exit_block else (1, 2)
    for i in units:
      sepconv(f"block{block}", i)
    if block in (2, 3, 4, exit_block):
      residual(f"block{block}")
  order.append(("dense", ["params/predictions/kernel", "params/predictions/bias"]))
  return order


_MODELS = {"xception": _xception_layers}

SUPPORTED = tuple(sorted(_MODELS))


def h5_names(model_name: str, **model_kwargs: Any) -> dict[str, str]:
  """``{seg_jax path: .weights.h5 name}`` of Keras' ``model_name`` (seg_jax fields ``model_kwargs``)."""
  if model_name not in _MODELS:
    raise ValueError(f"Keras layout is known for {list(SUPPORTED)}, got {model_name!r}")
  model = models.create(model_name, num_classes=1, **model_kwargs)
  counts: dict[str, int] = {}
  names = {}
  for cls, paths in _MODELS[model_name](model):
    k = counts.get(cls, 0)
    counts[cls] = k + 1
    layer = cls if k == 0 else f"{cls}_{k}"
    for i, path in enumerate(paths):
      names[path] = f"layers/{layer}/vars/{i}"
  return names


def _read_h5(file: Any) -> dict[str, np.ndarray]:
  import h5py  # pylint: disable=g-import-not-at-top
  arrays = {}
  with h5py.File(file, "r") as f:
    def visit(name, item):
      if isinstance(item, h5py.Dataset):
        arrays[name] = np.asarray(item)
    f.visititems(visit)
  return arrays


def load_weights(source: Any) -> tuple[str, dict[str, np.ndarray]]:
  """(description, ``{h5 name: array}``) of a ``keras.Model``, ``.keras`` or ``.weights.h5``."""
  if isinstance(source, (str, os.PathLike)):
    path = os.fspath(source)
    if path.endswith(".weights.h5"):
      return path, _read_h5(path)
    if path.endswith(".keras"):
      with zipfile.ZipFile(path) as archive:
        if "model.weights.h5" not in archive.namelist():
          raise ValueError(f"{path} has no model.weights.h5: not a Keras 3 .keras file")
        return path, _read_h5(io.BytesIO(archive.read("model.weights.h5")))
    raise ValueError(f"Keras weights must be a .keras or .weights.h5 file, got {path!r}")
  if not hasattr(source, "save_weights"):
    raise ValueError(f"source must be a keras.Model or a file name, got {type(source).__name__}")
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "model.weights.h5")
    source.save_weights(path)
    return f"keras.Model {source.name!r}", _read_h5(path)


def from_keras(model_name: str, source: Any, **model_kwargs: Any) -> dict[str, Any]:
  """Variables of seg_jax model ``model_name`` from the weights of Keras' same application.

  Args:
    model_name: one of ``SUPPORTED`` (``"xception"``: ``keras.applications.Xception`` with its
      top, i.e. ``include_top=True``).
    source: a ``keras.Model``, a ``.keras`` file or a ``.weights.h5`` file.
    **model_kwargs: fields of the seg_jax model (``models.create``), e.g. ``middle_repeats``.

  Returns:
    ``{"params": ..., "batch_stats": ...}`` for ``models.create(model_name, num_classes=N,
    **model_kwargs)``, N being the class count of the source's last dense layer.

  Raises:
    ValueError: a weight missing, unexpected or of another shape (the message lists them), as
      for the weights of another architecture.
  """
  names = h5_names(model_name, **model_kwargs)
  description, found = load_weights(source)
  found = {name: value for name, value in found.items() if name.startswith("layers/")}
  classifier = names["params/predictions/bias"]
  if classifier not in found:
    raise ValueError(f"{description} is not Keras' {model_name} with its top: it has no "
                     f"{classifier!r}")
  expected = common.expected_shapes(model_name, int(found[classifier].shape[0]), **model_kwargs)
  convert = {path: ((lambda w: np.transpose(w, (0, 1, 3, 2))) if path.endswith("depthwise/kernel")
                    else (lambda w: w)) for path in expected}
  return common.match(description, found, expected, names, convert)
