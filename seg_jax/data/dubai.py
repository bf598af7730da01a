"""Reads image/mask pairs of the Dubai aerial layout (`Tile N/images|masks`) or a flat `images/` + `masks/` folder."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Optional

import numpy as np
from PIL import Image

from seg_jax.data import palettes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")
_TILE_RE = re.compile(r"^tile[ _-]?(\d+)$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Pair:
  """One image file, its mask file and the tile it comes from (None in a flat layout)."""

  image_path: str
  mask_path: str
  tile: Optional[int]
  name: str


class SkipLog:
  """Records files skipped under `on_bad_file="skip"`; raises under "error"."""

  def __init__(self, on_bad_file: str = "error"):
    if on_bad_file not in ("error", "skip"):
      raise ValueError(f"on_bad_file must be 'error' or 'skip', got {on_bad_file!r}.")
    self.on_bad_file = on_bad_file
    self.skipped: list[tuple[str, str]] = []

  def bad(self, path: str, reason: str) -> None:
    """Raises a ValueError naming `path`, or records it when skipping."""
    if self.on_bad_file == "error":
      raise ValueError(f"{path}: {reason}")
    logging.warning("Skipping %s: %s", path, reason)
    self.skipped.append((path, reason))


def _files(folder: str, extensions) -> dict[str, str]:
  out = {}
  for f in sorted(os.listdir(folder)):
    stem, ext = os.path.splitext(f)
    if ext.lower() in extensions and not f.startswith("."):
      out[stem] = os.path.join(folder, f)
  return out


def _pair_folder(images_dir: str, masks_dir: str, tile: Optional[int], log: SkipLog,
                 prefix: str) -> list[Pair]:
  if not os.path.isdir(masks_dir):
    log.bad(masks_dir, f"mask folder missing next to {images_dir}")
    return []
  images = _files(images_dir, IMAGE_EXTENSIONS)
  masks = _files(masks_dir, MASK_EXTENSIONS)
  pairs = []
  for stem, path in images.items():
    if stem not in masks:
      log.bad(path, f"image has no mask (expected {os.path.join(masks_dir, stem)}.png)")
      continue
    pairs.append(Pair(path, masks[stem], tile, prefix + stem))
  for stem, path in masks.items():
    if stem not in images:
      log.bad(path, f"mask has no image in {images_dir}")
  return pairs


def find_pairs(root: str, log: Optional[SkipLog] = None) -> list[Pair]:
  """Lists image/mask pairs under `root` in tile layout or flat layout, sorted by tile and name."""
  log = log or SkipLog()
  if not root or not os.path.isdir(root):
    raise ValueError(f"data root {root!r} is not a folder.")
  tiles = []
  for d in sorted(os.listdir(root)):
    m = _TILE_RE.match(d)
    if m and os.path.isdir(os.path.join(root, d)):
      tiles.append((int(m.group(1)), d))
  pairs: list[Pair] = []
  if tiles:
    for tile, d in sorted(tiles):
      images_dir = os.path.join(root, d, "images")
      if not os.path.isdir(images_dir):
        log.bad(os.path.join(root, d), "tile folder has no images/ folder")
        continue
      pairs += _pair_folder(images_dir, os.path.join(root, d, "masks"), tile, log,
                            prefix=f"tile{tile}/")
  elif os.path.isdir(os.path.join(root, "images")):
    pairs = _pair_folder(os.path.join(root, "images"), os.path.join(root, "masks"),
                         None, log, prefix="")
  else:
    raise ValueError(
        f"data root {root} has neither 'Tile N/images' folders nor an 'images/' folder.")
  if not pairs:
    raise ValueError(f"data root {root} holds no image/mask pairs.")
  return pairs


def read_image(path: str) -> np.ndarray:
  """Reads an RGB image as uint8 (H, W, 3); ValueError naming the file if unreadable."""
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"))
  except (OSError, SyntaxError, ValueError) as e:
    raise ValueError(f"{path}: cannot read image ({e})") from e


def read_pair(pair: Pair, palette: palettes.Palette = palettes.DUBAI_AERIAL, *,
              ignore_index: int = 255, max_unknown_fraction: float = 0.01):
  """Reads and decodes one pair: (image uint8 (H, W, 3), label uint8 (H, W)).

  Raises:
    ValueError naming the file: unreadable file, size mismatch, or more than
    `max_unknown_fraction` of mask pixels in colours outside the palette.
  """
  image = read_image(pair.image_path)
  rgb = read_image(pair.mask_path)
  if image.shape[:2] != rgb.shape[:2]:
    raise ValueError(
        f"{pair.mask_path}: mask size {rgb.shape[1]}x{rgb.shape[0]} differs from image "
        f"{pair.image_path} size {image.shape[1]}x{image.shape[0]}")
  label, unknown = palettes.decode_mask(rgb, palette, ignore_index, return_unknown=True)
  fraction = unknown / label.size
  if fraction > max_unknown_fraction:
    raise ValueError(
        f"{pair.mask_path}: {fraction:.2%} of pixels have colours outside the palette "
        f"(max_unknown_fraction={max_unknown_fraction})")
  return image, label


def read_pairs(pairs, log: SkipLog, **kwargs):
  """Yields (pair, image, label) for every readable pair, reporting bad ones through `log`."""
  for pair in pairs:
    try:
      image, label = read_pair(pair, **kwargs)
    except ValueError as e:
      if log.on_bad_file == "error":
        raise
      log.bad(pair.image_path, str(e))
      continue
    yield pair, image, label
