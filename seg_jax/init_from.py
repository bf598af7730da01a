"""Initial weights of a fresh run from ``model.init_from``: a workdir, a weight file or a name.

A source is one of:

* a seg_jax workdir: the variables of its best checkpoint (fine-tuning a seg_jax run);
* a Keras file (``.keras``, ``.weights.h5``) or a torch file (``.pth``, ``.pt``,
  ``.safetensors``) of an architecture seg_jax has layer for layer (``seg_jax.weights``);
* ``torchvision:<model>:<weights>`` or ``keras:<model>:<weights>``: weights fetched by the
  library's own download function, ``torchvision.models.get_model(model, weights=weights)`` or
  ``keras.applications.<Application>(weights=weights)`` (a network and the library needed).

``model.init_part`` says what the source initialises:

* ``"backbone"``: the model's ``backbone`` part. A file or library name holds the classifier
  whose architecture is the backbone's, built with ``backbone_kwargs`` (torchvision's
  ``resnet50`` for backbone ``resnet50``, Keras' ``Xception`` for ``xception``); its classifier
  layers have no place in a backbone and are skipped. A workdir gives its model's backbone.
* ``"model"``: every variable. A file or library name holds the weights of the same seg_jax
  model (torchvision's ``deeplabv3_resnet50`` or ``fcn_resnet50``; torchvision's auxiliary head
  is skipped), a workdir those of its whole model.

A model whose input has other bands than red, green, blue (``data.bands``, ``data.rgb_bands``)
takes RGB weights (a file, a library name, or a workdir of 3 bands) in its input layers (those
whose shapes follow the input's band count, i.e. the first convolution): the red, green and blue
kernels go to the bands ``data.rgb_bands`` names, every other band gets their mean, and all are
scaled by 3/N for N bands (the convention of timm and torchgeo), so the layer's response to a
grey image stays the same; ``describe`` says which band got what. With the bands red, green,
blue in that order the import is the RGB import unchanged.

Variables whose shape differs from the source's only where the model has ``num_classes``
entries (a head trained for another class count) keep their fresh initialisation; any other
difference (an array missing, unexpected or of another shape: another architecture) is an error
naming it. ``load`` reads the source and checks it against the model's variable shapes, before
anything compiles; ``apply`` puts the arrays into the fresh train state; ``describe`` says where
each variable came from.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from seg_jax import errors
from seg_jax import models
from seg_jax import state as state_lib
from seg_jax import weights
from seg_jax import workdir as workdir_lib
from seg_jax.data import sources as data_sources
from seg_jax.weights import common as weights_common
from seg_jax.weights import keras_layout
from seg_jax.weights import torch_layout

INIT_PARTS = ("backbone", "model")
LIBRARIES = ("torchvision", "keras")
KERAS_FILES = (".keras", ".weights.h5")
TORCH_FILES = (".pth", ".pt", ".safetensors")
# The keras.applications constructor of each seg_jax model that is a Keras application.
KERAS_APPLICATIONS = {"xception": "Xception"}
# torchvision's segmentation models carry an auxiliary head that seg_jax's have not.
TORCH_AUX = "aux_classifier."
IMPORTED = "imported"

@dataclasses.dataclass(frozen=True)
class Initial:
  """Variables read from a source and placed in the model's tree, with their provenance.

  Attributes:
    source: what was read, in words.
    variables: ``{path: array}`` of the imported variables, by model path
      (``"params/backbone/conv1/kernel"``).
    provenance: for every model path, ``"imported"``, ``"initialised"`` or
      ``"re-initialised: ..."``, and ``"skipped"`` for every source path not taken.
    shapes: ``{path: shape}`` of the model's variables.
  """

  source: str
  variables: dict[str, Any]
  provenance: dict[str, str]
  shapes: dict[str, tuple[int, ...]]
  # One line per input layer whose RGB kernels were mapped onto the model's bands.
  band_mapping: tuple[str, ...] = ()


def _spec_kind(spec: str) -> str:
  """What ``spec`` names: "workdir", "keras_file", "torch_file" or a library (``LIBRARIES``)."""
  library = spec.split(":", 1)[0]
  if library in LIBRARIES and ":" in spec:
    return library
  if os.path.isdir(spec):
    return "workdir"
  if spec.endswith(KERAS_FILES):
    kind = "keras_file"
  elif spec.endswith(TORCH_FILES):
    kind = "torch_file"
  else:
    raise ValueError(
        "must be a seg_jax workdir, a Keras file (" + ", ".join(KERAS_FILES) + "), a torch file ("
        + ", ".join(TORCH_FILES) + ") or library:model:weights with library one of "
        f"{LIBRARIES} (e.g. torchvision:resnet50:IMAGENET1K_V2)")
  if not os.path.isfile(spec):
    raise ValueError("no such file")
  return kind


def _architecture(model_config: ml_collections.ConfigDict, model: nn.Module, part: str
                  ) -> tuple[str, dict[str, Any]]:
  """(seg_jax model name, its create() kwargs) whose weights a file or library name must hold."""
  if part == "backbone":
    return model.backbone, dict(model.backbone_kwargs)
  return model_config.name, {**model_config.kwargs.to_dict(), "ablation": model_config.ablation}


def _download(library: str, name: str, weights_name: str) -> Any:
  """The state dict (torchvision) or keras.Model (Keras) the library downloads for ``name``."""
  if library == "torchvision":
    try:
      import torchvision  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ValueError("needs torch and torchvision (pip install -e '.[torch]')") from e
    try:
      return torchvision.models.get_model(name, weights=weights_name).state_dict()
    except (OSError, RuntimeError) as e:  # no network, a broken download
      raise ValueError(f"torchvision could not download {name} {weights_name} ({e}); "
                       "without a network, download the file elsewhere and give its path") from e
  if name not in KERAS_APPLICATIONS:
    raise ValueError(f"Keras applications seg_jax has are {sorted(KERAS_APPLICATIONS)}, got "
                     f"{name!r}")
  if "keras" not in sys.modules and os.environ.get("KERAS_BACKEND") != "jax":
    raise ValueError("Keras must run on JAX here: set KERAS_BACKEND=jax before starting Python "
                     "(the seg_jax commands set it)")
  try:
    import keras  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError("needs keras (pip install -e '.[keras]')") from e
  try:
    return getattr(keras.applications, KERAS_APPLICATIONS[name])(weights=weights_name)
  except OSError as e:
    raise ValueError(f"Keras could not download {name} {weights_name} ({e}); without a "
                     "network, download the file elsewhere and give its path") from e


def _read_weights(spec: str, kind: str, arch: str, arch_kwargs: dict[str, Any], part: str
                  ) -> tuple[str, dict[str, Any], list[str]]:
  """(description, variables of ``arch``, skipped source names) of a file or library name."""
  source: Any = spec
  description = spec
  target = "the model's backbone" if part == "backbone" else "the model"
  if kind in LIBRARIES:
    parts = spec.split(":")
    if len(parts) != 3 or not all(parts):
      raise ValueError(f"a library source is {kind}:<model>:<weights>, e.g. "
                       "torchvision:resnet50:IMAGENET1K_V2 or keras:xception:imagenet")
    _, name, weights_name = parts
    if name != arch:
      raise ValueError(f"names {kind}'s {name!r}, but {target} is {arch!r} "
                       f"(model.init_part={part!r})")
    source = _download(kind, name, weights_name)
  layout = "torch" if kind in ("torch_file", "torchvision") else "keras"
  supported = torch_layout.SUPPORTED if layout == "torch" else keras_layout.SUPPORTED
  if arch not in supported:
    hint = (" (model.init_part='backbone' takes the backbone's weights from a classifier)"
            if part == "model" else "")
    raise ValueError(f"{layout} weights are known for {list(supported)}, and {target} is "
                     f"{arch!r}{hint}")
  if layout == "keras":
    return description, weights.from_keras(arch, source, **arch_kwargs), []
  state = torch_layout.load_state_dict(source)
  skipped = sorted(n for n in state if n.startswith(TORCH_AUX))
  return (description, weights.from_torch(arch, state, skip=(TORCH_AUX,), **arch_kwargs),
          skipped)


def _read_workdir(path: str, part: str) -> tuple[str, dict[str, Any]]:
  """(description, variables) of the best checkpoint of a seg_jax workdir (its backbone only
  when ``part`` is "backbone")."""
  run_dir = workdir_lib.RunDir(path)
  config = run_dir.load_config()
  variables, step = state_lib.restore_variables(run_dir, config, run_dir.data_info(), "best")
  if part == "backbone":
    variables = {c: tree["backbone"] for c, tree in variables.items() if "backbone" in tree}
  return f"the best checkpoint of {path} (step {step}, model {config.model.name!r})", variables


def _class_count_only(source: tuple[int, ...], target: tuple[int, ...], num_classes: int
                      ) -> bool:
  """Whether two shapes differ only on axes where ``target`` has ``num_classes`` entries."""
  return len(source) == len(target) and source != target and all(
      s == t or t == num_classes for s, t in zip(source, target))


def _short(items: list[str], limit: int = 4) -> str:
  """The first ``limit`` items and how many more, for a one-line message."""
  more = f" and {len(items) - limit} more" if len(items) > limit else ""
  return ", ".join(items[:limit]) + more


_QUOTED = r"'(?:[^'\\]|\\.)*'"
_LIST = re.compile(rf"\[({_QUOTED}(?:, {_QUOTED})*)\]")


def _shorten_lists(message: str, limit: int = 4) -> str:
  """``message`` with each quoted list longer than ``limit`` cut to its first items and a count
  (the name lists of ``seg_jax.weights`` errors run to hundreds for another architecture)."""
  def cut(match):
    items = re.findall(_QUOTED, match.group(1))
    if len(items) <= limit:
      return match.group(0)
    return "[" + ", ".join(items[:limit]) + f", ... {len(items) - limit} more]"
  return _LIST.sub(cut, message)


def _place(imported: Mapping[str, Any], shapes: Mapping[str, Any], part: str,
           num_classes: int, skip_modules: bool) -> tuple[dict[str, Any], dict[str, str]]:
  """Merges ``imported`` into the model's variable ``shapes``; (flat variables, provenance).

  ``skip_modules``: top-level modules of ``imported`` that the backbone lacks (a classifier's
  top) are skipped rather than refused.
  """
  into = "backbone" if part == "backbone" else ""
  skip = []
  if skip_modules:
    skip = [f"{c}/{m}/" for c, tree in imported.items() for m in tree
            if m not in shapes.get(c, {}).get("backbone", {})]
  target = weights_common.flatten(shapes)
  reinit = []
  if part == "model":
    for path, value in weights_common.flatten(imported).items():
      if path in target and _class_count_only(tuple(value.shape), tuple(target[path].shape),
                                              num_classes):
        reinit.append(path)
  merged, provenance = weights.merge_variables(shapes, imported, into=into, skip=skip,
                                               reinit=reinit)
  missing = [p for p, how in provenance.items()
             if how == "initialised" and (part == "model" or p.split("/")[1] == "backbone")]
  if missing:
    raise ValueError(f"the source has no value for {len(missing)} variables of the model's "
                     f"{part}: {_short(missing)}")
  flat = weights_common.flatten(merged)
  return {p: flat[p] for p, how in provenance.items() if how == IMPORTED}, provenance


def input_layers(model: nn.Module, num_bands: int, size: int) -> dict[str, int]:
  """``{path: band axis}`` of the variables whose shape follows the input's band count.

  Found by comparing the variable shapes of an input of ``num_bands`` bands with those of one
  band more, so whatever a model calls its first convolution is found.
  """
  def shapes(bands: int) -> dict[str, Any]:
    x = jnp.zeros((1, size, size, bands))
    key = jax.random.key(0)
    return weights_common.flatten(jax.eval_shape(
        lambda: model.init({"params": key, "dropout": key}, x, train=False)))

  these, more = shapes(num_bands), shapes(num_bands + 1)
  return {path: next(axis for axis, (a, b) in enumerate(zip(leaf.shape, more[path].shape))
                     if a != b)
          for path, leaf in these.items() if leaf.shape != more[path].shape}


def rgb_to_bands(kernel: Any, axis: int, rgb_channels: tuple[int, ...], num_bands: int) -> Any:
  """An RGB kernel (3 entries along ``axis``) for ``num_bands`` bands: red, green and blue to
  ``rgb_channels``, their mean to every other band, all times 3 / ``num_bands``."""
  rgb = np.moveaxis(np.asarray(kernel), axis, 0)
  mean = rgb.mean(axis=0)
  bands = np.stack([rgb[rgb_channels.index(c)] if c in rgb_channels else mean
                    for c in range(num_bands)])
  return np.moveaxis(bands * np.asarray(3.0 / num_bands, rgb.dtype), 0, axis)


def _map_bands(imported: dict[str, Any], layers: dict[str, int], part: str,
               bands: data_sources.Bands, from_workdir: bool
               ) -> tuple[dict[str, Any], tuple[str, ...]]:
  """``imported`` with the RGB kernels of the input ``layers`` mapped onto ``bands``, and a
  line per layer saying which band got what."""
  flat, lines, n = weights_common.flatten(imported), [], len(bands)
  for path, axis in layers.items():
    collection, module, rest = path.split("/", 2)
    source = f"{collection}/{rest}" if part == "backbone" and module == "backbone" else path
    if source not in flat or np.shape(flat[source])[axis] != 3 or (from_workdir and n == 3):
      continue  # the model's own band count (or another architecture: merging names it)
    if len(bands.rgb_channels) != 3:
      raise ValueError(f"{source} holds RGB weights (3 input bands) and the model reads bands "
                       f"{bands.numbers}, none named red, green, blue: set data.rgb_bands")
    flat[source] = rgb_to_bands(flat[source], axis, bands.rgb_channels, n)
    rgb = ", ".join(f"band {bands.numbers[c]} <- {colour}" for c, colour in
                    zip(bands.rgb_channels, ("red", "green", "blue")))
    others = [str(b) for c, b in enumerate(bands.numbers) if c not in bands.rgb_channels]
    mean = (f", band{'s' * (len(others) > 1)} {', '.join(others)} <- the mean of the RGB "
            "kernels" if others else "")
    lines.append(f"{path}: {rgb}{mean}; all times 3/{n}")
  return weights_common.unflatten(flat), tuple(lines)


def load(model_config: ml_collections.ConfigDict, model: nn.Module, state_shapes: Any,
         bands: data_sources.Bands = data_sources.Bands()) -> Initial | None:
  """Reads ``model.init_from`` and checks it against the model; None when it is empty.

  Args:
    model_config: the config's ``model`` group (``init_from``, ``init_part``, ``name``,
      ``kwargs``, ``ablation``).
    model: the model being trained (a ``SegmentationModel``).
    state_shapes: the shapes of its train state (``params`` and ``batch_stats`` are read).
    bands: the bands of the model's input (the dataset's), onto which RGB weights are mapped.

  Raises:
    ConfigError: naming the source and what is wrong with it (missing, not readable, another
      architecture, shapes that do not fit, a download that failed).
  """
  spec = model_config.init_from
  if not spec:
    return None
  part = model_config.init_part
  if part not in INIT_PARTS:
    raise errors.ConfigError(f"model.init_part must be one of {INIT_PARTS}, got {part!r}")
  shapes = state_lib.variables(state_shapes)
  try:
    kind = _spec_kind(spec)
    if kind == "workdir":
      description, imported = _read_workdir(spec, part)
      skipped = []
    else:
      arch, arch_kwargs = _architecture(model_config, model, part)
      description, imported, skipped = _read_weights(spec, kind, arch, arch_kwargs, part)
    band_mapping = ()
    if bands.rgb_channels != (0, 1, 2) or len(bands) != 3:  # else RGB weights fit as they are
      layers = input_layers(model, len(bands),
                            max(64, models.min_input_size(model_config.name)))
      imported, band_mapping = _map_bands(imported, layers, part, bands, kind == "workdir")
    variables, provenance = _place(imported, shapes, part, model.num_classes,
                                   skip_modules=kind != "workdir" and part == "backbone")
  except (ValueError, OSError, errors.WorkdirError) as e:
    raise errors.ConfigError(f"model.init_from={spec!r}: {_shorten_lists(str(e))}") from e
  provenance.update({name: "skipped" for name in skipped})
  return Initial(description, variables, provenance,
                 {p: tuple(v.shape) for p, v in weights_common.flatten(shapes).items()},
                 band_mapping)


def apply(state: Any, initial: Initial) -> Any:
  """The fresh train ``state`` with ``initial``'s variables in place and its optimizer state
  initialised for them (each array keeps the fresh one's dtype and sharding)."""
  fresh = weights_common.flatten(state_lib.variables(state))
  flat = {path: (jax.device_put(jnp.asarray(initial.variables[path], value.dtype),
                                value.sharding) if path in initial.variables else value)
          for path, value in fresh.items()}
  variables = weights_common.unflatten(flat)
  params = variables["params"]
  sharding = jax.tree.leaves(state.params)[0].sharding
  opt_state = jax.jit(state.tx.init, out_shardings=sharding)(params)
  return state.replace(params=params, batch_stats=variables.get("batch_stats", {}),
                       opt_state=opt_state)


def describe(initial: Initial) -> str:
  """Where each variable came from: counts per part and source, re-initialised and skipped paths."""
  counts: dict[tuple[str, str], list[int]] = collections.defaultdict(lambda: [0, 0])
  reinitialised, skipped = [], []
  for path, how in sorted(initial.provenance.items()):
    if how == "skipped":
      skipped.append(path)
      continue
    kind = how.split(":")[0]
    if kind == "re-initialised":
      reinitialised.append(f"{path} ({how.split(': ', 1)[1]})")
    entry = counts[(path.split("/")[1], kind)]
    entry[0] += 1
    entry[1] += math.prod(initial.shapes[path])
  lines = [f"initial weights from {initial.source}:"]
  for (module, kind), (arrays, values) in sorted(counts.items()):
    source = "the source" if kind == IMPORTED else "the seed"
    lines.append(f"  {module}: {arrays} arrays ({values:,} values) {kind} from {source}")
  lines += [f"  re-initialised (class count differs): {p}" for p in reinitialised]
  lines += [f"  RGB weights onto the input bands: {line}" for line in initial.band_mapping]
  if skipped:
    lines.append(f"  not taken from the source ({len(skipped)} arrays): {_short(skipped, 8)}")
  return "\n".join(lines)
