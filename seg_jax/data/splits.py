"""Leak-free train/val/test assignment of whole tiles or whole images."""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np

SPLITS = ("train", "val", "test")

# Whole tiles of the Dubai aerial set. Tile 1 (val) and tile 3 (test) hold
# every class, including water and unlabeled pixels; the rest train.
DUBAI_TILE_SPLITS: Mapping[str, tuple[int, ...]] = {
    "train": (2, 4, 5, 6, 7, 8),
    "val": (1,),
    "test": (3,),
}
# Share of images for val and test in the by-image split (train takes the rest).
HOLDOUT_FRACTION = 0.125


def by_tile(items: Sequence, tiles: Sequence) -> dict[str, list]:
  """Assigns each item to the split that owns its tile in `DUBAI_TILE_SPLITS`."""
  owner = {}
  for split, ts in DUBAI_TILE_SPLITS.items():
    for t in ts:
      owner[t] = split
  out = {s: [] for s in SPLITS}
  for item, tile in zip(items, tiles):
    if tile is None:
      raise ValueError(
          "split='tile' needs the 'Tile N/images' layout; a flat images/ folder has no "
          "tiles (use split='image').")
    if tile not in owner:
      raise ValueError(
          f"tile {tile} has no split in the tile assignment {dict(DUBAI_TILE_SPLITS)}.")
    out[owner[tile]].append(item)
  return out


def holdout_counts(n: int) -> tuple[int, int]:
  """(num_val, num_test) for `n` items in a by-image or random split."""
  k = int(round(n * HOLDOUT_FRACTION))
  if n >= 3:
    k = max(k, 1)
  return k, k


def by_random(items: Sequence, seed: int) -> dict[str, list]:
  """Seeded random assignment of items to train/val/test."""
  n = len(items)
  order = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED])).permutation(n)
  num_val, num_test = holdout_counts(n)
  val = order[:num_val]
  test = order[num_val:num_val + num_test]
  train = order[num_val + num_test:]
  pick = lambda idx: [items[i] for i in sorted(idx)]
  return {"train": pick(train), "val": pick(val), "test": pick(test)}


def warn_random_patch() -> None:
  """Warns that a random patch split puts neighbouring patches in train and evaluation."""
  warnings.warn(
      "split='random_patch' assigns patches at random: overlapping and neighbouring patches of "
      "one image land in both train and val/test, so validation scores are optimistic. "
      "Use split='tile' or 'image' for honest numbers.", UserWarning, stacklevel=3)
