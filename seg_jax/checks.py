"""Checks of a config against its dataset and devices, before anything is compiled or written."""

from __future__ import annotations

import math
from typing import Any, Callable

from absl import logging
import ml_collections

from seg_jax import data as data_lib
from seg_jax import errors
from seg_jax import models
from seg_jax import state as state_lib
from seg_jax.data import augment
from seg_jax.data import palettes

SPLITS = ("val", "test", "train")
REPLICA_MODES = ("auto", "vmap", "unroll")
RESOLUTIONS = ("training", "full")


def _number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _at_least(low: float, *, strict: bool = False, high: float | None = None,
              high_open: bool = False) -> tuple[Callable[[Any], bool], str]:
  """A test of a finite number in a range, and the range in words."""
  def test(v):
    return (_number(v) and (v > low if strict else v >= low)
            and (high is None or (v < high if high_open else v <= high)))
  text = f"{'>' if strict else '>='} {low:g}"
  if high is not None:
    text += f" and {'<' if high_open else '<='} {high:g}"
  return test, text


_POSITIVE = _at_least(0, strict=True)
_NON_NEGATIVE = _at_least(0)
_COUNT = _at_least(1)
_FRACTION = _at_least(0, high=1)
_BETA = _at_least(0, high=1, high_open=True)

# The range of every numeric field of configs/default.py; names and enumerations are checked by
# the module that reads them (models, optim, data, losses, the checks of `check_setup`).
RANGES = {
    "seed": _NON_NEGATIVE, "model.num_classes": _NON_NEGATIVE,
    "data.patch_size": _COUNT, "data.min_purity": _at_least(0, strict=True, high=1),
    "data.num_train": _NON_NEGATIVE, "data.num_val": _NON_NEGATIVE,
    "data.num_test": _NON_NEGATIVE, "data.seed": _NON_NEGATIVE,
    "data.train_subset": _NON_NEGATIVE, "data.ignore_index": _NON_NEGATIVE,
    "data.max_unknown_fraction": _FRACTION, "data.max_ignored_fraction": _FRACTION,
    "data.scale": _POSITIVE, "data.windows_per_epoch": _COUNT,
    "data.augment.scale_min": _POSITIVE, "data.augment.scale_max": _POSITIVE,
    "data.augment.rotate_degrees": _at_least(0, high=180),
    "data.augment.brightness": _NON_NEGATIVE, "data.augment.contrast": _NON_NEGATIVE,
    "data.augment.saturation": _NON_NEGATIVE, "data.augment.hue": _at_least(0, high=0.5),
    "data.augment.noise_std": _NON_NEGATIVE,
    "loss.ce_weight": _NON_NEGATIVE, "loss.dice_weight": _NON_NEGATIVE,
    "loss.jaccard_weight": _NON_NEGATIVE, "loss.focal_weight": _NON_NEGATIVE,
    "loss.tversky_weight": _NON_NEGATIVE, "loss.label_smoothing": _BETA,
    "loss.focal_gamma": _NON_NEGATIVE, "loss.tversky_alpha": _NON_NEGATIVE,
    "loss.tversky_beta": _NON_NEGATIVE, "loss.smooth": _NON_NEGATIVE,
    "optim.learning_rate": _POSITIVE, "optim.warmup_steps": _NON_NEGATIVE,
    "optim.schedule_steps": _NON_NEGATIVE, "optim.end_lr_factor": _NON_NEGATIVE,
    "optim.poly_power": _POSITIVE, "optim.weight_decay": _NON_NEGATIVE,
    "optim.momentum": _BETA, "optim.b1": _BETA, "optim.b2": _BETA, "optim.eps": _POSITIVE,
    "optim.grad_clip_norm": _NON_NEGATIVE, "optim.accumulation_steps": _COUNT,
    "optim.backbone_lr_factor": _NON_NEGATIVE,
    "train.num_steps": _COUNT, "train.global_batch_size": _COUNT, "train.log_every": _COUNT,
    "train.eval_every": _COUNT, "train.checkpoint_every": _COUNT,
    "train.keep_checkpoints": _COUNT, "train.num_replicas": _COUNT,
    "eval.global_batch_size": _COUNT, "eval.num_images": _NON_NEGATIVE,
    "eval.predict.overlap": _BETA, "eval.predict.batch_size": _COUNT,
}
_INTEGERS = ("seed", "model.num_classes", "data.patch_size", "data.num_train", "data.num_val",
             "data.num_test", "data.seed", "data.train_subset", "data.ignore_index",
             "data.windows_per_epoch", "optim.warmup_steps", "optim.schedule_steps",
             "optim.accumulation_steps", "eval.num_images", "eval.predict.batch_size")


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
  node = config
  for key in field.split("."):
    node = node[key]
  return node


def check_values(config: ml_collections.ConfigDict) -> None:
  """Checks the range of every numeric field (`RANGES`) and the ranges that pair two fields,
  from the config alone: before anything is written, read or compiled.

  Raises ConfigError naming the field, its value and the range it must lie in.
  """
  for field, (test, text) in RANGES.items():
    value = _get(config, field)
    integer = field in _INTEGERS
    if not test(value) or (integer and not float(value).is_integer()):
      raise errors.ConfigError(f"{field}={value!r} must be "
                               f"{'an integer' if integer else 'a finite number'} {text}")
  a = config.data.augment
  if a.scale_min > a.scale_max:
    raise errors.ConfigError(f"data.augment.scale_min={a.scale_min} must be <= "
                             f"data.augment.scale_max={a.scale_max}")
  if not 0 <= config.data.patch_overlap < config.data.patch_size:
    raise errors.ConfigError(f"data.patch_overlap={config.data.patch_overlap} must be >= 0 and "
                             f"< data.patch_size={config.data.patch_size}")
  sizes = tuple(config.data.image_size)
  if len(sizes) != 2 or not all(_number(v) and v >= 1 and float(v).is_integer() for v in sizes):
    raise errors.ConfigError(f"data.image_size={sizes} must be (H, W), two integers >= 1")
  weights = tuple(config.loss.class_weights)
  if not weights or not all(_number(w) and w >= 0 for w in weights):
    raise errors.ConfigError(f"loss.class_weights={weights} must be finite numbers >= 0")
  scales = tuple(config.eval.predict.scales)
  if not scales or not all(_number(v) and v > 0 for v in scales):
    raise errors.ConfigError(f"eval.predict.scales={scales} must be finite numbers > 0")


def check_setup(config: ml_collections.ConfigDict, dataset: data_lib.Dataset,
                num_devices: int) -> int:
  """Checks the config against the dataset and devices before anything compiles.

  Returns:
    The number of classes.
  Raises:
    ConfigError: unknown model, a classifier without data.labels="majority", num_classes not
      matching the dataset's palette, images smaller than the model's minimum, a batch not
      divisible by the devices, an unknown eval split or excluded class.
    DataError: an empty train split or an empty split to evaluate.
  """
  check_values(config)
  num_classes = _check_model(config, dataset)
  _check_run(config, num_devices)
  _check_eval(config, dataset)
  train_size = len(dataset.train)
  if config.train.mode == "train" and config.train.global_batch_size > train_size:
    logging.warning("train.global_batch_size=%d is larger than the %d training examples: every "
                    "batch holds some examples more than once", config.train.global_batch_size,
                    train_size)
  return num_classes


def _check_model(config: ml_collections.ConfigDict, dataset: data_lib.Dataset) -> int:
  """The model against the dataset's classes and image size; returns the number of classes."""
  name = config.model.name
  if name not in models.available():
    raise errors.ConfigError(f"model.name must be one of {models.available()}, got {name!r}")
  if not models.is_segmentation(name) and config.data.labels != "majority":
    raise errors.ConfigError(
        f"model.name {name!r} is a classifier: it predicts one class per image, so it trains on "
        f"data.labels='majority' (one class per example), not {config.data.labels!r}")
  num_classes = len(dataset.class_names)
  palette_size = len(palettes.palette_colors(dataset.palette))
  if palette_size != num_classes:
    raise errors.ConfigError(f"dataset {config.data.name!r} has {num_classes} class names but "
                             f"{palette_size} palette colours")
  if config.model.num_classes not in (0, num_classes):
    raise errors.ConfigError(
        f"model.num_classes={config.model.num_classes} but dataset {config.data.name!r} has "
        f"{num_classes} classes {tuple(dataset.class_names)} (0 means: take the dataset's)")
  min_size = models.min_input_size(name)
  if min(dataset.image_size) < min_size:
    raise errors.ConfigError(
        f"images are {tuple(dataset.image_size)} but model {name!r} needs at least "
        f"{min_size}x{min_size} (data.image_size / data.patch_size)")
  state_lib.dtype_from_name(config.model.dtype)
  state_lib.dtype_from_name(config.model.param_dtype)
  _check_bands(config, dataset)
  return num_classes


def _check_bands(config: ml_collections.ConfigDict, dataset: data_lib.Dataset) -> None:
  """Colour jitter needs red, green and blue bands; random windows are read, never kept."""
  if augment.has_colour_jitter(config.data.augment) and len(dataset.bands.rgb_channels) != 3:
    raise errors.ConfigError(
        f"data.augment colour jitter (brightness, contrast, saturation, hue) changes the red, "
        f"green and blue bands, and the input's bands {dataset.bands.numbers} name none: set "
        "data.rgb_bands to their band numbers, or set those augment fields to 0")
  if config.data.keep_on_device and config.data.prep == "windows":
    raise errors.ConfigError("data.keep_on_device copies a fixed training set to the devices, "
                             "but data.prep='windows' draws new windows each epoch: turn one off")


def _check_run(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Batch sizes against the devices, step counts and the replica fields."""
  for field in ("train.global_batch_size", "eval.global_batch_size"):
    group, key = field.split(".")
    batch = config[group][key]
    if batch < 1 or batch % num_devices:
      raise errors.ConfigError(f"{field}={batch} must be a positive multiple of the device "
                               f"count {num_devices}")
  for field in ("train.num_steps", "train.log_every", "train.eval_every",
                "train.checkpoint_every", "train.num_replicas"):
    group, key = field.split(".")
    if config[group][key] < 1:
      raise errors.ConfigError(f"{field} must be >= 1, got {config[group][key]}")
  if config.train.replica_mode not in REPLICA_MODES:
    raise errors.ConfigError(f"train.replica_mode must be one of {REPLICA_MODES}, got "
                             f"{config.train.replica_mode!r}")
  if config.train.mode == "eval" and config.train.num_replicas != 1:
    raise errors.ConfigError(
        f"train.mode='eval' evaluates one run folder, but train.num_replicas="
        f"{config.train.num_replicas}: evaluate each replica's folder <workdir>/seed<k> with "
        "train.num_replicas=1 and seed=k")


def _check_eval(config: ml_collections.ConfigDict, dataset: data_lib.Dataset) -> None:
  """The split to evaluate and its resolution; the splits the run reads are not empty."""
  split = config.eval.split
  if split not in SPLITS:
    raise errors.ConfigError(f"eval.split must be one of {SPLITS}, got {split!r}")
  if config.eval.resolution not in RESOLUTIONS:
    raise errors.ConfigError(f"eval.resolution must be one of {RESOLUTIONS}, got "
                             f"{config.eval.resolution!r}")
  unknown = [n for n in config.eval.exclude_classes if n not in dataset.class_names]
  if unknown or len(set(config.eval.exclude_classes)) >= len(dataset.class_names):
    raise errors.ConfigError(
        f"eval.exclude_classes={tuple(config.eval.exclude_classes)} must name some (not all) of "
        f"the classes of dataset {config.data.name!r} {tuple(dataset.class_names)}"
        + (f"; {unknown} is not one" if unknown else ""))
  if config.eval.resolution == "full" and config.train.mode != "eval":
    raise errors.ConfigError("eval.resolution='full' scores a checkpoint in train.mode='eval'; "
                             "training evaluates at the training resolution")
  predict = config.eval.predict
  if (config.eval.resolution == "full" and data_lib.dataset.builder(config.data.name).scenes
      and (predict.mode != "slide" or tuple(predict.scales) != (1.0,))):
    raise errors.ConfigError(
        f"eval.resolution='full' reads the scenes of data.name={config.data.name!r} window by "
        f"window: eval.predict.mode must be 'slide' and eval.predict.scales (1.0,), got "
        f"{predict.mode!r} and {tuple(predict.scales)}")
  where = f" (data.root {config.data.root!r})" if config.data.root else ""
  needed = {split: "evaluation"}
  if config.train.mode == "train":
    needed["train"] = "training"
  for part, needed_by in needed.items():
    if len(getattr(dataset, part)) == 0:
      raise errors.DataError(
          f"the {part!r} split of dataset {config.data.name!r}{where} is empty, so {needed_by} "
          f"has nothing to read; give it examples (data.split, data.num_{part} or more files) "
          "or evaluate another split (eval.split)")

