"""Checks of a config against its dataset and devices, before anything is compiled or written."""

from __future__ import annotations

import ml_collections

from seg_jax import data as data_lib
from seg_jax import errors
from seg_jax import models
from seg_jax import state as state_lib
from seg_jax.data import palettes

SPLITS = ("val", "test", "train")
REPLICA_MODES = ("auto", "vmap", "unroll")
RESOLUTIONS = ("training", "full")


def check_setup(config: ml_collections.ConfigDict, dataset: data_lib.Dataset,
                num_devices: int) -> int:
  """Checks the config against the dataset and devices before anything compiles.

  Returns:
    The number of classes.
  Raises:
    ConfigError: unknown model, a classifier without data.labels="majority", num_classes not
      matching the dataset's palette, images smaller than the model's minimum, a batch not
      divisible by the devices, an unknown eval split.
    DataError: an empty train split or an empty split to evaluate.
  """
  num_classes = _check_model(config, dataset)
  _check_run(config, num_devices)
  _check_eval(config, dataset)
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
  return num_classes


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
  if config.eval.resolution == "full" and config.train.mode != "eval":
    raise errors.ConfigError("eval.resolution='full' scores a checkpoint in train.mode='eval'; "
                             "training evaluates at the training resolution")
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

