"""Reads image/mask pairs of the Dubai aerial layout (`Tile N/images|masks`) or a flat `images/` + `masks/` folder.

Each images/masks folder may also be named in the singular (`image/`, `mask/`).
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
from typing import Optional

from absl import logging
import numpy as np
from PIL import Image
from PIL import ImageOps

from seg_jax import storage
from seg_jax.data import palettes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
# Lossless formats (WebP may be either): JPEG blurs the colours that name the classes.
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".webp")
_TILE_RE = re.compile(r"^tile[ _-]?(\d+)$", re.IGNORECASE)
# The names the image and mask folders may have, the first the layout's own.
IMAGE_DIRS = ("images", "image")
MASK_DIRS = ("masks", "mask")
LAYOUTS = "'Tile N/images|masks' or 'images/' + 'masks/' (or singular: 'image/', 'mask/')"


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


def _files(folder: str, kind: str, extensions, log: SkipLog) -> dict[str, str]:
  """Path of each `kind` ("image" or "mask") file of `folder` by stem.

  Everything else in the folder is reported through `log`: other file types, subfolders and a
  second file with the same stem. Hidden entries (".name") are not data and are passed over.
  """
  out = {}
  for f in storage.listdir(folder):
    if f.startswith("."):
      continue
    path = storage.join(folder, f)
    stem, ext = os.path.splitext(f)
    if not storage.isfile(path):
      log.bad(path, f"not a file; {folder} must hold only {kind} files")
    elif ext.lower() not in extensions:
      lossy = " (JPEG is lossy: it blurs the class colours)" if kind == "mask" and ext.lower() in (
          ".jpg", ".jpeg") else ""
      log.bad(path, f"unsupported {kind} file type {ext or '(none)'!r}{lossy}; "
                    f"supported: {' '.join(extensions)}")
    elif stem in out:
      log.bad(path, f"a second {kind} named {stem!r} (the first is {out[stem]})")
    else:
      out[stem] = path
  return out


def _subfolder(parent: str, names: tuple[str, ...]) -> Optional[str]:
  """The first of the folders `names` that `parent` holds, or None."""
  return next((storage.join(parent, n) for n in names
               if storage.isdir(storage.join(parent, n))), None)


def _pair_folder(images_dir: str, tile: Optional[int], log: SkipLog, prefix: str) -> list[Pair]:
  """The pairs of `images_dir` and the masks folder beside it."""
  parent = storage.dirname(images_dir)
  masks_dir = _subfolder(parent, MASK_DIRS)
  if masks_dir is None:
    log.bad(storage.join(parent, MASK_DIRS[0]), f"mask folder ({' or '.join(MASK_DIRS)}/) "
            f"missing next to {images_dir}")
    return []
  images = _files(images_dir, "image", IMAGE_EXTENSIONS, log)
  masks = _files(masks_dir, "mask", MASK_EXTENSIONS, log)
  pairs = []
  for stem, path in images.items():
    if stem not in masks:
      log.bad(path, f"image has no mask (expected {storage.join(masks_dir, stem)}.png)")
      continue
    pairs.append(Pair(path, masks[stem], tile, prefix + stem))
  for stem, path in masks.items():
    if stem not in images:
      log.bad(path, f"mask has no image in {images_dir}")
  return pairs


def find_pairs(root: str, log: Optional[SkipLog] = None) -> list[Pair]:
  """Lists image/mask pairs under `root` in tile layout or flat layout, sorted by tile and name."""
  log = log or SkipLog()
  if not root or not storage.isdir(root):
    raise ValueError(f"data root {root!r} is not a folder.")
  tiles = []
  for d in storage.listdir(root):
    m = _TILE_RE.match(d)
    if m and storage.isdir(storage.join(root, d)):
      tiles.append((int(m.group(1)), d))
  pairs: list[Pair] = []
  if tiles:
    for tile, d in sorted(tiles):
      images_dir = _subfolder(storage.join(root, d), IMAGE_DIRS)
      if images_dir is None:
        log.bad(storage.join(root, d), f"tile folder has no {' or '.join(IMAGE_DIRS)}/ folder")
        continue
      pairs += _pair_folder(images_dir, tile, log, prefix=f"tile{tile}/")
  elif _subfolder(root, IMAGE_DIRS):
    pairs = _pair_folder(_subfolder(root, IMAGE_DIRS), None, log, prefix="")
  else:
    held = storage.listdir(root)
    raise ValueError(
        f"data root {root} is laid out as neither {LAYOUTS}; it holds "
        f"{held[:8] + ['...'] if len(held) > 8 else held}.")
  if not pairs:
    raise ValueError(f"data root {root} holds no image/mask pairs.")
  return pairs


def read_rgb(path: str) -> tuple[np.ndarray, str]:
  """Reads an 8-bit image file as uint8 (H, W, 3) and its Pillow mode; ValueError naming the file.

  16-bit and float files are refused: converting them to 8 bits would clip their values.
  """
  try:
    with Image.open(io.BytesIO(storage.read_bytes(path))) as im:
      mode = im.mode
      wide = mode.startswith(("I", "F"))
      # The EXIF orientation is applied, as image viewers do, to images and masks alike.
      rgb = None if wide else np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
  # Pillow's format plugins raise many exception types on corrupt files (OSError, EOFError,
  # struct.error, DecompressionBombError, ...): every one of them means an unreadable file.
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e
  if wide:
    raise ValueError(f"{path}: {mode} pixels (16/32-bit integer or float) are not read; save "
                     "the file with 8-bit channels")
  return rgb, mode


def read_image(path: str) -> np.ndarray:
  """Reads an RGB image as uint8 (H, W, 3); ValueError naming the file if unreadable."""
  return read_rgb(path)[0]


def read_pair(pair: Pair, palette: palettes.Palette, *, ignore_index: int,
              max_unknown_fraction: float):
  """Reads and decodes one pair: (image uint8 (H, W, 3), label uint8 (H, W)).

  Raises:
    ValueError naming the file: unreadable file, size mismatch, more than
    `max_unknown_fraction` of mask pixels in colours outside the palette, or a mask without
    a single pixel of a class colour.
  """
  image = read_image(pair.image_path)
  rgb, mode = read_rgb(pair.mask_path)
  if image.shape[:2] != rgb.shape[:2]:
    raise ValueError(
        f"{pair.mask_path}: mask size {rgb.shape[1]}x{rgb.shape[0]} differs from image "
        f"{pair.image_path} size {image.shape[1]}x{image.shape[0]}")
  label, unknown = palettes.decode_mask(rgb, palette, ignore_index, return_unknown=True)
  fraction = unknown / label.size
  if fraction > max_unknown_fraction:
    grey = (" The mask is greyscale: masks must draw each class in its palette colour "
            "(data.palette), not as a class index.") if mode in ("L", "1") else ""
    raise ValueError(
        f"{pair.mask_path}: {fraction:.2%} of pixels have colours outside the palette "
        f"(data.max_unknown_fraction={max_unknown_fraction}).{grey}")
  if not np.any(label != ignore_index):
    raise ValueError(f"{pair.mask_path}: no pixel has a class colour (all ignored); the mask "
                     "adds nothing to training or evaluation")
  return image, label


def read_pairs(pairs, log: SkipLog, **kwargs):
  """Yields (pair, image, label) for every readable pair, reporting bad ones through `log`."""
  for pair in pairs:
    try:
      image, label = read_pair(pair, **kwargs)
    except ValueError as e:
      if log.on_bad_file == "error":
        raise
      log.bad(pair.image_path, f"{e} (left out with its mask {pair.mask_path})")
      continue
    yield pair, image, label
