"""Resizing, patch extraction, majority labels, per-channel and per-class statistics."""

from __future__ import annotations

from typing import Iterable

import numpy as np
from PIL import Image

# data.prep: whole images resized to data.image_size, or cut into data.patch_size squares, or
# (rasters) data.windows_per_epoch random data.patch_size windows.
PREPS = ("resize", "patches", "windows")


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Resizes a uint8 (H, W, 3) image to `size` (H, W): bilinear, antialiased when shrinking."""
  h, w = int(size[0]), int(size[1])
  if h <= 0 or w <= 0:
    raise ValueError(f"size must be positive (H, W), got {size}.")
  if image.shape[:2] == (h, w):
    return image
  return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def resize_pair(image: np.ndarray, label: np.ndarray, size: tuple[int, int]):
  """Resizes to `size` (H, W): bilinear for the image, nearest for the label."""
  if image.shape[:2] != label.shape:
    raise ValueError(f"image shape {image.shape} and label shape {label.shape} differ.")
  image = resize_image(image, size)
  if label.shape == image.shape[:2]:
    return image, label
  return image, np.asarray(Image.fromarray(label).resize(image.shape[1::-1], Image.NEAREST))


def patch_starts(length: int, patch: int, overlap: int) -> list[int]:
  """Start offsets of patches covering `length` with at least `overlap` pixels shared."""
  if patch <= 0:
    raise ValueError(f"patch_size must be positive, got {patch}.")
  if not 0 <= overlap < patch:
    raise ValueError(f"patch_overlap must be in [0, patch_size={patch}), got {overlap}.")
  if length <= patch:
    return [0]
  stride = patch - overlap
  starts = list(range(0, length - patch + 1, stride))
  if starts[-1] != length - patch:
    starts.append(length - patch)
  return starts


def patchify(image: np.ndarray, label: np.ndarray, patch: int, overlap: int = 0,
             ignore_index: int = 255):
  """Cuts an image/label pair into patch x patch tiles covering it (edges padded with ignore)."""
  h, w = label.shape
  if image.shape[:2] != (h, w):
    raise ValueError(f"image shape {image.shape} and label shape {label.shape} differ.")
  ph, pw = max(h, patch), max(w, patch)
  if (ph, pw) != (h, w):
    image = np.pad(image, ((0, ph - h), (0, pw - w), (0, 0)))
    label = np.pad(label, ((0, ph - h), (0, pw - w)), constant_values=ignore_index)
  images, labels = [], []
  for y in patch_starts(ph, patch, overlap):
    for x in patch_starts(pw, patch, overlap):
      images.append(image[y:y + patch, x:x + patch])
      labels.append(label[y:y + patch, x:x + patch])
  return np.stack(images), np.stack(labels)


def majority_classes(labels: np.ndarray, num_classes: int,
                     min_purity: float) -> tuple[np.ndarray, np.ndarray]:
  """The majority class of each label map, and whether it is pure enough to keep.

  Args:
    labels: uint8 (N, H, W); values outside [0, num_classes) (the ignore index) are no class.
    num_classes: number of classes.
    min_purity: share of ALL of a map's pixels the majority class must cover, so ignored pixels
      count against it and a mostly ignored map is not kept.
  Returns:
    int32 (N,) majority class of each map (the lower index on a tie) and bool (N,) whether it
    covers at least `min_purity` of the map (never for a map without a class pixel).
  """
  if labels.ndim != 3:
    raise ValueError(f"labels must be (N, H, W), got shape {labels.shape}.")
  flat = labels.reshape(len(labels), -1)
  counts = np.stack([np.count_nonzero(flat == k, axis=1) for k in range(num_classes)], axis=1)
  best = counts.max(axis=1)
  kept = (best > 0) & (best >= min_purity * flat.shape[1])
  return counts.argmax(axis=1).astype(np.int32), kept


class MeanStd:
  """Running per-channel pixel sums; `result()` gives the mean and std of every image added."""

  def __init__(self):
    self.total = np.zeros(3, np.float64)
    self.total_sq = np.zeros(3, np.float64)
    self.count = 0

  def add(self, image: np.ndarray) -> None:
    px = np.asarray(image, np.float64).reshape(-1, 3)
    self.total += px.sum(0)
    self.total_sq += (px * px).sum(0)
    self.count += px.shape[0]

  def result(self):
    """(mean, std) float32 in [0, 255] units."""
    if self.count == 0:
      raise ValueError("mean_std needs at least one image, got none.")
    mean = self.total / self.count
    std = np.sqrt(np.maximum(self.total_sq / self.count - mean * mean, 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


def mean_std(images: Iterable[np.ndarray]):
  """Per-channel mean and std (float32, [0, 255] units) over all pixels of `images`."""
  acc = MeanStd()
  for im in images:
    acc.add(im)
  return acc.result()


def class_pixel_counts(source, num_classes: int) -> np.ndarray:
  """(C,) pixel count per class over a random-access split (ignored pixels not counted)."""
  counts = np.zeros(num_classes, np.int64)
  for i in range(len(source)):
    label = np.asarray(source[i]["label"]).ravel()
    counts += np.bincount(label[label < num_classes], minlength=num_classes)[:num_classes]
  return counts


def example_size(prep: str, image_size, patch_size: int) -> tuple:
  """(H, W) of every example: `image_size` for prep="resize", a square patch otherwise."""
  if prep in ("patches", "windows"):
    return (patch_size, patch_size)
  if prep == "resize":
    return tuple(image_size)
  raise ValueError(f"prep must be one of {PREPS}, got {prep!r}.")
