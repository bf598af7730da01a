"""What the seg_jax benchmarks share: a config by its command-line name, its toy size, and an
in-memory dataset of random pixels so that no data files are needed."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from experiments import sweeps
from seg_jax import config_files
from seg_jax import data as data_lib
from seg_jax import sweep
from seg_jax.data import palettes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A toy model per architecture: the smallest widths that keep every part.
TOY_MODEL_KWARGS = {
    "unet": dict(backbone_kwargs=dict(widths=(4, 8))),
    "asym_unet": config_files.load_module(
        os.path.join(REPO, "configs", "default.py")).asym_unet_kwargs(**sweeps.TOY_PROPOSAL),
}
# What a config leaves to its data files: the NAIP tiles' four bands (data.bands=() reads them
# all), named so that random data (`random_dataset_of`) has as many.
INPUT_OVERRIDES = {"configs/naip.py": {"data.bands": (1, 2, 3, 4)}}
TOY_SIZE = {"data.image_size": (32, 64), "data.patch_size": 32, "train.global_batch_size": 2,
            "eval.global_batch_size": 2}


def load_config(name: str, overrides: Mapping[str, Any] = ()) -> ml_collections.ConfigDict:
  """Config `name` as `--config` takes it ("configs/X.py" or "configs/X.py:ARG", relative to the
  repository) with {dotted key: value} `overrides` (`seg_jax.sweep.apply_overrides`), locked."""
  path, _, arg = name.partition(":")
  module = config_files.load_module(os.path.join(REPO, path))
  config = module.get_config(arg) if arg else module.get_config()
  return sweep.apply_overrides(config, dict(overrides), name)


def toy_overrides(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Overrides that shrink `config` to batch 2 of 32x64 (32x32 patches) and, where there is
  one, a toy model."""
  toy = dict(TOY_SIZE)
  if config.model.name in TOY_MODEL_KWARGS:
    toy["model.kwargs"] = TOY_MODEL_KWARGS[config.model.name]
  return toy


def random_dataset(size: tuple[int, int], num_train: int, num_val: int, bands: int = 3,
                   palette: palettes.Palette = palettes.DUBAI_AERIAL) -> data_lib.Dataset:
  """Uniform-noise uint8 images of `bands` channels and random labels over `palette`'s classes.

  Bands 1-3 are red, green and blue (a 4th is, say, near infrared); the statistics are those of
  uniform noise (mean 127.5, std 73.9 per band).
  """
  rng = np.random.default_rng(0)
  num_classes = len(palette.names)

  def split(n):
    return data_lib.ArraySource(rng.integers(0, 256, (n, *size, bands), np.uint8),
                                rng.integers(0, num_classes, (n, *size), np.uint8))

  return data_lib.Dataset(
      train=split(num_train), val=split(num_val), test=split(1), class_names=palette.names,
      palette=palette, ignore_index=255, image_size=tuple(size),
      mean=np.full(bands, 127.5, np.float32), std=np.full(bands, 73.9, np.float32),
      bands=data_lib.Bands(numbers=tuple(range(1, bands + 1)),
                           rgb=(1, 2, 3) if bands >= 3 else ()))


def random_dataset_of(config: ml_collections.ConfigDict) -> data_lib.Dataset:
  """A random dataset shaped as `config`'s input: one train batch of its image size (its patch
  size for "patches" or "windows"), its `data.bands` (3 where none are named) and its palette's
  classes (the Dubai classes where it names no palette file)."""
  c = config.data
  size = (c.patch_size, c.patch_size) if c.prep in ("patches", "windows") else c.image_size
  palette = data_lib.folder.read_palette(c, palettes.DUBAI_AERIAL)
  return random_dataset(size, config.train.global_batch_size, 1, len(c.bands) or 3, palette)
