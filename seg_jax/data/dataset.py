"""`get_dataset`: the train/val/test sources, class names, palette and statistics of a data config."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterator, Optional

import ml_collections
import numpy as np

from seg_jax.data import dubai
from seg_jax.data import palettes
from seg_jax.data import preprocess
from seg_jax.data import splits
from seg_jax.data import synthetic

NAMES = ("synthetic_aerial", "dubai_aerial")
SPLIT_MODES = ("tile", "image", "random_patch")
PREPS = ("resize", "patches")
# Synthetic splits draw scenes from disjoint index ranges, so changing one
# split's size never changes another split's scenes.
SYNTHETIC_OFFSETS = {"train": 0, "val": 1 << 30, "test": 1 << 31}
# Synthetic mean/std come from the first scenes of the train split.
SYNTHETIC_STATS_SCENES = 64


def default_data_config() -> ml_collections.ConfigDict:
  """A `data` config group with every field the data code reads."""
  c = ml_collections.ConfigDict()
  c.name = "synthetic_aerial"
  c.root = ""
  c.image_size = (144, 256)
  c.split = "tile"
  c.prep = "resize"
  c.patch_size = 256
  c.patch_overlap = 0
  c.num_train = 2048
  c.num_val = 256
  c.num_test = 256
  c.seed = 0
  c.ignore_index = 255
  c.on_bad_file = "error"
  c.max_unknown_fraction = 0.01
  c.keep_on_device = False
  c.augment = default_augment_config()
  return c


def default_augment_config() -> ml_collections.ConfigDict:
  """The `data.augment` group: flips, rot90, scale+crop, rotation, colour jitter, noise."""
  a = ml_collections.ConfigDict()
  a.enabled = True
  a.hflip = True
  a.vflip = True
  a.rot90 = True
  a.scale_min = 1.0
  a.scale_max = 1.5
  a.rotate_degrees = 10.0
  a.brightness = 0.2
  a.contrast = 0.2
  a.saturation = 0.2
  a.hue = 0.02
  a.noise_std = 3.0
  return a


class ArraySource:
  """Random-access source over in-memory uint8 arrays images (N, H, W, 3) and labels (N, H, W)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, names: Optional[list[str]] = None):
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
      raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}.")
    if labels.shape != images.shape[:3] or labels.dtype != np.uint8:
      raise ValueError(
          f"labels must be uint8 {images.shape[:3]}, got {labels.dtype} {labels.shape}.")
    self.images = images
    self.labels = labels
    self.names = list(names) if names is not None else None

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {"image": self.images[i], "label": self.labels[i]}

  def __repr__(self):
    return f"ArraySource(images={self.images.shape}, labels={self.labels.shape})"


@dataclasses.dataclass
class Dataset:
  """Train/val/test random-access sources and what a trainer needs to know about them."""

  train: Any
  val: Any
  test: Any
  class_names: tuple[str, ...]
  palette: palettes.Palette
  ignore_index: int
  image_size: tuple[int, int]
  mean: np.ndarray
  std: np.ndarray
  # (file, reason) of every file left out under on_bad_file="skip".
  skipped: tuple[tuple[str, str], ...] = ()

  @property
  def num_classes(self) -> int:
    """Number of classes."""
    return len(self.class_names)


def _check_config(c) -> None:
  if c.name not in NAMES:
    raise ValueError(f"data.name must be one of {NAMES}, got {c.name!r}.")
  if c.split not in SPLIT_MODES:
    raise ValueError(f"data.split must be one of {SPLIT_MODES}, got {c.split!r}.")
  if c.prep not in PREPS:
    raise ValueError(f"data.prep must be one of {PREPS}, got {c.prep!r}.")
  if len(tuple(c.image_size)) != 2 or min(c.image_size) < 8:
    raise ValueError(f"data.image_size must be (H, W) with H, W >= 8, got {c.image_size}.")
  if not 0 <= c.ignore_index <= 255:
    raise ValueError(f"data.ignore_index must be in [0, 255], got {c.ignore_index}.")
  if not 0.0 <= c.max_unknown_fraction <= 1.0:
    raise ValueError(
        f"data.max_unknown_fraction must be in [0, 1], got {c.max_unknown_fraction}.")


def iter_examples(pairs, *, prep: str, image_size, patch_size: int, patch_overlap: int,
                  ignore_index: int, log: dubai.SkipLog,
                  max_unknown_fraction: float) -> Iterator[dict[str, Any]]:
  """Reads, decodes and preprocesses pairs into examples {image, label, name, tile}."""
  for pair, image, label in dubai.read_pairs(
      pairs, log, ignore_index=ignore_index, max_unknown_fraction=max_unknown_fraction):
    tile = -1 if pair.tile is None else pair.tile
    if prep == "resize":
      im, lb = preprocess.resize_pair(image, label, image_size)
      yield {"image": im, "label": lb, "name": pair.name, "tile": tile}
    else:
      ims, lbs = preprocess.patchify(image, label, patch_size, patch_overlap, ignore_index)
      for k, (im, lb) in enumerate(zip(ims, lbs)):
        yield {"image": im, "label": lb, "name": f"{pair.name}/{k:04d}", "tile": tile}


def split_folder(root: str, *, split: str, seed: int, log: dubai.SkipLog) -> dict[str, list]:
  """Pairs of a dataset folder assigned to splits (random_patch puts all in 'train' for later)."""
  pairs = dubai.find_pairs(root, log)
  if split == "tile":
    return splits.by_tile(pairs, [p.tile for p in pairs])
  if split == "image":
    return splits.by_random(pairs, seed)
  return {"train": pairs, "val": [], "test": []}


def load_folder(root: str, *, split: str, prep: str, image_size, patch_size: int,
                patch_overlap: int, seed: int, ignore_index: int, on_bad_file: str,
                max_unknown_fraction: float):
  """Reads a Dubai-layout folder into {split: list of examples} and the skipped files."""
  if split == "random_patch":
    splits.warn_random_patch()
  log = dubai.SkipLog(on_bad_file)
  assigned = split_folder(root, split=split, seed=seed, log=log)
  kwargs = dict(prep=prep, image_size=image_size, patch_size=patch_size,
                patch_overlap=patch_overlap, ignore_index=ignore_index, log=log,
                max_unknown_fraction=max_unknown_fraction)
  out = {s: list(iter_examples(assigned[s], **kwargs)) for s in splits.SPLITS}
  if split == "random_patch":
    out = splits.by_random(out["train"], seed)
  if log.skipped:
    logging.warning("Skipped %d bad files under %s (on_bad_file='skip').",
                    len(log.skipped), root)
  if not out["train"]:
    raise ValueError(f"data root {root}: the train split is empty after reading.")
  return out, tuple(log.skipped)


def _to_source(examples) -> ArraySource:
  if not examples:
    return ArraySource(np.zeros((0, 1, 1, 3), np.uint8), np.zeros((0, 1, 1), np.uint8), [])
  return ArraySource(np.stack([e["image"] for e in examples]),
                     np.stack([e["label"] for e in examples]),
                     [e["name"] for e in examples])


def synthetic_source(split: str, count: int, *, seed: int, image_size) -> synthetic.SyntheticSource:
  """The `count` synthetic scenes of `split`, from that split's own index range."""
  return synthetic.SyntheticSource(count, seed=seed, offset=SYNTHETIC_OFFSETS[split],
                                   image_size=image_size)


def synthetic_mean_std(seed: int, image_size) -> tuple[np.ndarray, np.ndarray]:
  """Mean/std of the first synthetic train scenes for `seed` and `image_size`."""
  return preprocess.mean_std(
      synthetic.generate(seed, i, image_size)[0] for i in range(SYNTHETIC_STATS_SCENES))


def get_dataset(config) -> Dataset:
  """Builds the dataset described by a `data` config group (see `default_data_config`)."""
  _check_config(config)
  size = (int(config.image_size[0]), int(config.image_size[1]))
  if config.name == "synthetic_aerial":
    counts = {"train": config.num_train, "val": config.num_val, "test": config.num_test}
    sources = {s: synthetic_source(s, counts[s], seed=config.seed, image_size=size)
               for s in splits.SPLITS}
    mean, std = synthetic_mean_std(config.seed, size)
    return Dataset(**sources, class_names=synthetic.CLASS_NAMES, palette=synthetic.PALETTE,
                   ignore_index=config.ignore_index, image_size=size, mean=mean, std=std)
  examples, skipped = load_folder(
      config.root, split=config.split, prep=config.prep, image_size=size,
      patch_size=config.patch_size, patch_overlap=config.patch_overlap, seed=config.seed,
      ignore_index=config.ignore_index, on_bad_file=config.on_bad_file,
      max_unknown_fraction=config.max_unknown_fraction)
  sources = {s: _to_source(examples[s]) for s in splits.SPLITS}
  mean, std = preprocess.mean_std(sources["train"].images)
  size = preprocess.example_size(config.prep, size, config.patch_size)
  return Dataset(**sources, class_names=palettes.DUBAI_AERIAL.names,
                 palette=palettes.DUBAI_AERIAL, ignore_index=config.ignore_index,
                 image_size=size, mean=mean, std=std, skipped=skipped)
