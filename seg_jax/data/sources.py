"""`ArraySource`, the `Dataset` every builder returns, and majority relabelling of its splits."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from absl import logging
import numpy as np

from seg_jax.data import palettes
from seg_jax.data import preprocess


# Types an image may hold until it is normalised on the accelerator.
IMAGE_DTYPES = (np.uint8, np.uint16, np.int16, np.float32)


class ArraySource:
  """Random-access source over in-memory images (N, H, W, C) and uint8 labels (N, H, W).

  Images are uint8 RGB for photographs, or any of `IMAGE_DTYPES` with C bands for rasters.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, names: Optional[list[str]] = None):
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.shape[-1] < 1 or images.dtype not in IMAGE_DTYPES:
      raise ValueError(f"images must be (N, H, W, C) of {[np.dtype(t).name for t in IMAGE_DTYPES]}"
                       f", got {images.dtype} {images.shape}.")
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


@dataclasses.dataclass(frozen=True)
class Bands:
  """The bands of the model input: which file bands, which of them are red, green and blue.

  The defaults describe an 8-bit RGB photograph (the folder and synthetic datasets).
  """

  numbers: tuple[int, ...] = (1, 2, 3)  # the file's band numbers (1-based), in input order
  rgb: tuple[int, ...] = (1, 2, 3)  # the band numbers of red, green, blue; () for none
  scale: float = 1.0  # stored values times `scale` are the units of mean, std and augmentation
  value_range: tuple[float, float] = (0.0, 255.0)  # of scaled values; augmentation clips to it

  def __len__(self) -> int:
    return len(self.numbers)

  @property
  def rgb_channels(self) -> tuple[int, ...]:
    """Positions of red, green and blue in the model input (() when there are none)."""
    return tuple(self.numbers.index(b) for b in self.rgb)

  def preview(self, image: np.ndarray) -> np.ndarray:
    """A uint8 RGB picture of an (H, W, C) input: as stored for 8-bit RGB, else its red, green
    and blue bands (the first band as grey without them) stretched between their 2nd and
    98th percentiles."""
    image = np.asarray(image)
    if image.dtype == np.uint8 and self.rgb_channels == (0, 1, 2) and image.shape[-1] == 3:
      return image
    rgb = image[..., list(self.rgb_channels or (0, 0, 0))].astype(np.float32)
    lo, hi = np.percentile(rgb, (2, 98))
    return np.clip((rgb - lo) * (255.0 / max(hi - lo, 1e-6)), 0, 255).astype(np.uint8)


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
  bands: Bands = Bands()
  # The scale objects have in the training examples relative to the files: the median over the
  # training images of sqrt(example area / original area); 0.25 = shrunk 4 times per side, 1 =
  # as stored (patches, windows, generated scenes, prepared TFDS data).
  training_scale: float = 1.0

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
