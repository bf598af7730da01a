"""`ArraySource`, the `Dataset` every builder returns, and majority relabelling of its splits."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from absl import logging
import numpy as np

from seg_jax.data import palettes
from seg_jax.data import preprocess


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


def from_examples(examples: list[dict[str, Any]]) -> ArraySource:
  """Examples {image, label, name} stacked into an `ArraySource` (an empty one for none)."""
  if not examples:
    return ArraySource(np.zeros((0, 1, 1, 3), np.uint8), np.zeros((0, 1, 1), np.uint8), [])
  return ArraySource(np.stack([e["image"] for e in examples]),
                     np.stack([e["label"] for e in examples]),
                     [e["name"] for e in examples])


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
  # Examples left out of each split by data.labels="majority" (below data.min_purity).
  dropped: dict[str, int] = dataclasses.field(default_factory=dict)

  @property
  def num_classes(self) -> int:
    """Number of classes."""
    return len(self.class_names)


def majority_labelled(sources: dict[str, ArraySource], num_classes: int,
                      min_purity: float) -> tuple[dict[str, ArraySource], dict[str, int]]:
  """Each split as a classification set (data.labels="majority"), and the count left out of each.

  Every kept example's label map holds its majority class at every pixel
  (`preprocess.majority_classes`), so a per-pixel loss or confusion matrix counts each image
  alike; examples whose majority class covers less than `min_purity` of their pixels are left
  out, and the counts are logged.
  """
  out, dropped = {}, {}
  for split, source in sources.items():
    classes, kept = preprocess.majority_classes(source.labels, num_classes, min_purity)
    labels = np.broadcast_to(classes[kept, None, None].astype(np.uint8),
                             (int(kept.sum()), *source.labels.shape[1:]))
    names = None if source.names is None else [n for n, k in zip(source.names, kept) if k]
    out[split] = ArraySource(source.images[kept], np.ascontiguousarray(labels), names)
    dropped[split] = len(source) - len(out[split])
  logging.warning(
      "data.labels='majority': left out %s examples whose majority class covers less than "
      "data.min_purity=%g of their pixels", ", ".join(
          f"{split} {dropped[split]} of {len(sources[split])}" for split in sources), min_purity)
  return out, dropped
