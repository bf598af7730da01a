"""`data.name="raster"`: image and mask rasters of a folder, paired, split, checked and windowed.

`data.root` holds `images/` + `masks/` (split by whole scenes, `data.split="image"`), or is
split already into `train/`, `val/` and `test/`, each holding `img/` + `mask/` or `images/` +
`masks/` (the NAIP layout; `data.split` is then not read). An image pairs with the mask of the
same file stem, else with the mask whose name holds the same number (`tile_12.tif` and
`mask_12.tif`). Every file GDAL opens is a raster; any other entry is a bad file.

Before anything trains, every pair is checked (`raster.make_pair`: types, bands, one pixel
grid) and read once chunk by chunk (`raster.scan`: every pixel readable, every mask value a
class, per-band sums over the pixels that are not nodata). The train split's sums give the
per-band mean and std; nodata pixels are filled with the band means, so they normalise to 0.
Scans are kept for the process, keyed by the files' size and modification time, so a
full-resolution evaluation after `get_dataset` does not read the scenes twice.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Iterator

import numpy as np

from seg_jax import storage
from seg_jax.data import dubai
from seg_jax.data import folder
from seg_jax.data import palettes
from seg_jax.data import raster
from seg_jax.data import sources
from seg_jax.data import splits
from seg_jax.data import windows

# (images, masks) folder names of a split, in the order they are looked for.
LAYOUTS = (("img", "mask"), ("images", "masks"))
_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def _entries(directory: str, kind: str, log: dubai.SkipLog) -> dict[str, str]:
  """{stem: path} of the files of `directory`; other entries (folders, a repeated stem) are bad."""
  out = {}
  for name in storage.listdir(directory):
    path = storage.join(directory, name)
    stem = os.path.splitext(name)[0]
    if name.startswith("."):
      continue
    if not storage.isfile(path):
      log.bad(path, f"not a file; {directory} must hold only {kind} rasters")
    elif stem in out:
      log.bad(path, f"a second {kind} named {stem!r} (the first is {out[stem]})")
    else:
      out[stem] = path
  return out


def _by_number(stems) -> dict[int, str]:
  """{the last number in a name: its stem} of the names whose number no other name has."""
  numbers: dict[int, list[str]] = {}
  for stem in stems:
    match = _NUMBER.search(stem)
    if match is not None:
      numbers.setdefault(int(match.group(1)), []).append(stem)
  return {number: found[0] for number, found in numbers.items() if len(found) == 1}


def pair_files(images_dir: str, masks_dir: str, log: dubai.SkipLog,
               prefix: str = "") -> list[tuple[str, str, str]]:
  """(name, image path, mask path) of the pairs of two folders: by stem, else by number."""
  if not storage.isdir(masks_dir):
    log.bad(masks_dir, f"mask folder missing next to {images_dir}")
    return []
  images = _entries(images_dir, "image", log)
  masks = _entries(masks_dir, "mask", log)
  matched = {stem: stem for stem in images if stem in masks}
  mask_numbers = _by_number(s for s in masks if s not in matched)
  for number, stem in _by_number(s for s in images if s not in matched).items():
    if number in mask_numbers:
      matched[stem] = mask_numbers.pop(number)
  for stem in sorted(set(images) - set(matched)):
    log.bad(images[stem], f"image has no mask in {masks_dir} (by file stem or by the number "
                          "in its name)")
  for stem in sorted(set(masks) - set(matched.values())):
    log.bad(masks[stem], f"mask has no image in {images_dir}")
  return [(prefix + stem, images[stem], masks[matched[stem]]) for stem in sorted(matched)]


def find_splits(root: str, split: str, seed: int, log: dubai.SkipLog) -> dict[str, list]:
  """(name, image, mask) paths of each split of `root` (see the module docstring)."""
  split_dirs = [s for s in splits.SPLITS if storage.isdir(storage.join(root, s))]
  if not split_dirs:
    if not storage.isdir(storage.join(root, "images")):
      raise ValueError(f"data root {root} holds neither train/, val/, test/ folders nor "
                       "images/ + masks/")
    if split != "image":
      raise ValueError(f"data.split={split!r}: a raster folder of images/ + masks/ is split "
                       "by whole scenes, data.split='image' (or split it into train/, val/ "
                       "and test/ folders)")
    return splits.by_random(pair_files(storage.join(root, "images"),
                                       storage.join(root, "masks"), log), seed)
  out = {s: [] for s in splits.SPLITS}
  for s in split_dirs:
    names = next((n for n in LAYOUTS if storage.isdir(storage.join(root, s, n[0]))), None)
    if names is None:
      raise ValueError(f"{storage.join(root, s)} holds no images folder (one of "
                       f"{[n[0] for n in LAYOUTS]})")
    out[s] = pair_files(*(storage.join(root, s, n) for n in names), log, prefix=f"{s}/")
  return out


def _pairs(found: list, c, log: dubai.SkipLog) -> list[raster.Pair]:
  """The checked pairs of (name, image, mask) paths; bad ones raise or are left out (logged)."""
  out = []
  for name, image_path, mask_path in found:
    try:
      out.append(raster.make_pair(
          name, raster.describe(image_path), raster.describe(mask_path), bands=c.bands,
          nodata=c.nodata, mask_nodata=c.mask_nodata))
    except ValueError as e:
      if log.on_bad_file == "error":
        raise
      log.bad(image_path, f"{e} (left out with its mask {mask_path})")
  return out


# Scans of this process by file (real path, size, modification time) and reading settings.
_SCANS: dict[tuple, raster.Scan] = {}


def _scan(pair: raster.Pair, labels: raster.Labels) -> raster.Scan:
  """`raster.scan` of a pair, once per process for files reached by any path (rewritten files
  are scanned again)."""
  key = (labels, pair.bands, repr(pair.nodata), repr(pair.mask_nodata))
  for path in (pair.image.path, pair.mask.path):
    if storage.is_url(path):
      key += (path, storage.size(path), storage.mtime(path))
    else:
      info = os.stat(path)
      key += (os.path.realpath(path), info.st_size, info.st_mtime_ns)
  if key not in _SCANS:
    _SCANS[key] = raster.scan(pair, labels)
  return _SCANS[key]


def _scanned(pairs: list[raster.Pair], labels: raster.Labels, c, log: dubai.SkipLog):
  """(pairs, scans) of the pairs whose every pixel reads and decodes into a labelled mask."""
  kept, scans = [], []
  for pair in pairs:
    try:
      scan = _scan(pair, labels)
      unknown = scan.unknown / (pair.shape[0] * pair.shape[1])
      if unknown > c.max_unknown_fraction:
        raise ValueError(f"{pair.mask.path}: {unknown:.2%} of pixels have colours outside the "
                         f"palette (data.max_unknown_fraction={c.max_unknown_fraction})")
      if not scan.labelled:
        raise ValueError(f"{pair.mask.path}: no pixel has a class (all nodata or ignored); the "
                         "pair adds nothing to training or evaluation")
    except ValueError as e:
      if log.on_bad_file == "error":
        raise
      log.bad(pair.image.path, f"{e} (left out with its mask {pair.mask.path})")
      continue
    kept.append(pair)
    scans.append(scan)
  return kept, scans


def _check_inputs(pairs: dict[str, list[raster.Pair]]) -> raster.Pair:
  """The first train pair; ValueError naming any image whose band count or type differs."""
  if not pairs["train"]:
    raise ValueError("the train split of the raster dataset is empty")
  first = pairs["train"][0]
  for pair in (p for s in splits.SPLITS for p in pairs[s]):
    if (len(pair.bands), pair.image.dtype) != (len(first.bands), first.image.dtype):
      raise ValueError(f"{pair.image.path}: {len(pair.bands)} {pair.image.dtype} bands are "
                       f"read, but {len(first.bands)} {first.image.dtype} from "
                       f"{first.image.path}; every image must give the model the same input")
  return first


def _value_range(dtype: str, scale: float) -> tuple[float, float]:
  if np.dtype(dtype).kind == "f":
    return (-np.inf, np.inf)
  info = np.iinfo(dtype)
  return tuple(sorted((float(info.min) * scale, float(info.max) * scale)))


@dataclasses.dataclass
class Loaded:
  """A raster dataset's checked pairs, their scans, statistics and readers, per split."""

  palette: palettes.Palette
  bands: sources.Bands
  mean: np.ndarray
  std: np.ndarray
  scenes: dict[str, windows.Scenes]
  scans: dict[str, list[raster.Scan]]
  skipped: tuple[tuple[str, str], ...]


def load(c) -> Loaded:
  """Pairs, checks, scans and statistics of the raster dataset of `data` group `c`."""
  if not c.root or not storage.isdir(c.root):
    raise ValueError(f"data.root {c.root!r} is not a folder: pass --config.data.root=DIR, a "
                     "folder of images/ + masks/ or of train/, val/, test/ raster folders")
  if c.prep not in ("patches", "windows"):
    raise ValueError(f"data.prep={c.prep!r}: raster scenes are read at full resolution, as "
                     "a grid of patches ('patches') or random windows ('windows')")
  if c.scale <= 0:
    raise ValueError(f"data.scale must be positive, got {c.scale}")
  palette = folder.read_palette(c, None)
  labels = raster.Labels(palette, c.ignore_index)
  log = dubai.SkipLog(c.on_bad_file)
  found = find_splits(c.root, c.split, c.seed, log)
  pairs, scans = {}, {}
  for s in splits.SPLITS:
    pairs[s], scans[s] = _scanned(_pairs(found[s], c, log), labels, c, log)
  first = _check_inputs(pairs)
  raster.check_rgb_bands(first.bands, tuple(c.rgb_bands))
  mean, std = raster.mean_std(scans["train"], c.scale)
  fill = raster.fill_values(mean, c.scale, first.image.dtype)
  bands = sources.Bands(numbers=first.bands, rgb=tuple(c.rgb_bands), scale=float(c.scale),
                        value_range=_value_range(first.image.dtype, c.scale))
  scenes = {s: windows.Scenes(pairs[s], labels, fill)
            for s in splits.SPLITS}
  return Loaded(palette, bands, mean, std, scenes, scans, tuple(log.skipped))


def build_dataset(c) -> sources.Dataset:
  """The raster dataset of `data` group `c`: windows read lazily from its checked scenes."""
  loaded = load(c)
  grids = {s: windows.GridWindows(loaded.scenes[s], loaded.scans[s], c.patch_size,
                                  c.patch_overlap) for s in splits.SPLITS}
  if c.prep == "windows":
    if c.windows_per_epoch < 1:
      raise ValueError(f"data.windows_per_epoch must be >= 1, got {c.windows_per_epoch}")
    grids["train"] = windows.RandomWindows(loaded.scenes["train"], loaded.scans["train"],
                                           c.patch_size, c.windows_per_epoch, c.seed)
  return sources.Dataset(**grids, class_names=loaded.palette.names, palette=loaded.palette,
                         ignore_index=c.ignore_index, image_size=(c.patch_size, c.patch_size),
                         mean=loaded.mean, std=loaded.std, skipped=loaded.skipped,
                         bands=loaded.bands)


def full_resolution_examples(c, split: str) -> Iterator[dict[str, Any]]:
  """{"scene": windows.Scene, "name"} of each scene of `split`, read window by window."""
  loaded = load(c)
  scenes = loaded.scenes[split]
  return ({"scene": windows.Scene(scenes, k, scan), "name": pair.name}
          for k, (pair, scan) in enumerate(zip(scenes.pairs, loaded.scans[split])))

