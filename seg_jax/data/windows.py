"""Windows of rasters read lazily: a grid of windows over every scene, or random windows.

`Scenes` reads any window of its pairs (selected bands, nodata filled with the band means,
labels decoded; beyond a scene's edge the image is the fill and the label the ignore index),
keeping a few files open per reading thread. `GridWindows` is the random-access source of the
windows that tile each scene (the evaluation splits, and `prep="patches"`); `RandomWindows` the
source of `data.windows_per_epoch` windows drawn anew each epoch (`prep="windows"`). Neither
holds pixels in memory, so a scene may be larger than memory. A window without a pixel of a
class (nodata or ignored everywhere) is never served: grids leave out windows that miss every
labelled chunk of the scan, and a random window that has no labelled pixel is drawn again;
both are counted.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from typing import Sequence

from absl import logging
import numpy as np
from rasterio.windows import Window

from seg_jax.data import preprocess
from seg_jax.data import raster

# Files each reading thread keeps open (an image and its mask are two).
OPEN_FILES = 8
# Draws of a random window before giving up on finding one with a labelled pixel.
MAX_DRAWS = 100


class Scenes:
  """Reads windows of raster pairs; picklable (open files are per process and thread)."""

  def __init__(self, pairs: Sequence[raster.Pair], labels: raster.Labels, fill: np.ndarray):
    self.pairs = list(pairs)
    self.labels = labels
    self.fill = np.asarray(fill)  # per band, in the stored type: what nodata pixels become
    self._local = threading.local()

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k != "_local"}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._local = threading.local()

  def _open(self, k: int):
    """The open (image, mask) datasets of pair k, from this thread's small cache."""
    cache = getattr(self._local, "cache", None)
    if cache is None:
      cache = self._local.cache = collections.OrderedDict()
    if k in cache:
      cache.move_to_end(k)
      return cache[k]
    while len(cache) >= OPEN_FILES // 2:
      for ds in cache.popitem(last=False)[1]:
        ds.close()
    cache[k] = raster.open_pair(self.pairs[k])
    return cache[k]

  def read(self, k: int, y: int, x: int, h: int, w: int) -> dict[str, np.ndarray]:
    """{"image": (h, w, N) stored type, "label": uint8 (h, w)} of pair k at rows y.., cols x..."""
    pair = self.pairs[k]
    height, width = pair.shape
    image = np.broadcast_to(self.fill, (h, w, len(self.fill))).copy()
    label = np.full((h, w), self.labels.ignore_index, np.uint8)
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, height), min(x + w, width)
    if y1 > y0 and x1 > x0:
      with raster.gdal_env():
        part, nodata, part_label, _ = raster.read_window(
            *self._open(k), pair, self.labels, Window(x0, y0, x1 - x0, y1 - y0))
      part[nodata] = self.fill
      image[y0 - y:y1 - y, x0 - x:x1 - x] = part
      label[y0 - y:y1 - y, x0 - x:x1 - x] = part_label
    return {"image": image, "label": label}


def touches_labelled(scan: raster.Scan, y: int, x: int, h: int, w: int) -> bool:
  """Whether window (y, x, h, w) overlaps a chunk of the scan that holds a labelled pixel."""
  c = raster.CHUNK
  return any((i, j) in scan.chunks for i in range(max(y, 0) // c, (y + h - 1) // c + 1)
             for j in range(max(x, 0) // c, (x + w - 1) // c + 1))


@dataclasses.dataclass(frozen=True)
class Scene:
  """Pair `index` of `scenes`, read window by window (full-resolution evaluation)."""

  scenes: Scenes
  index: int
  scan: raster.Scan

  @property
  def shape(self) -> tuple[int, int]:
    """(H, W) of the scene."""
    return self.scenes.pairs[self.index].shape

  @property
  def name(self) -> str:
    """The pair's name."""
    return self.scenes.pairs[self.index].name

  def read(self, y: int, x: int, h: int, w: int) -> dict[str, np.ndarray]:
    """`Scenes.read` of this scene."""
    return self.scenes.read(self.index, y, x, h, w)

  def labelled(self, y: int, x: int, h: int, w: int) -> bool:
    """Whether the window may hold a labelled pixel (it overlaps a labelled chunk)."""
    return touches_labelled(self.scan, y, x, h, w)


class GridWindows:
  """The `size` windows tiling each scene (`patch_overlap` shared), as a random-access source.

  Windows that miss every labelled chunk of the scene are left out and counted (`skipped`).
  """

  def __init__(self, scenes: Scenes, scans: Sequence[raster.Scan], size: int, overlap: int):
    self.scenes, self.size = scenes, size
    self.windows, self.names, self.skipped = [], [], 0
    for k, (pair, scan) in enumerate(zip(scenes.pairs, scans)):
      height, width = pair.shape
      for y in preprocess.patch_starts(height, size, overlap):
        for x in preprocess.patch_starts(width, size, overlap):
          if touches_labelled(scan, y, x, size, size):
            self.windows.append((k, y, x))
            self.names.append(f"{pair.name}/{y}_{x}")
          else:
            self.skipped += 1

  def __len__(self) -> int:
    return len(self.windows)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    k, y, x = self.windows[i]
    return self.scenes.read(k, y, x, self.size, self.size)

  def __repr__(self):
    return f"GridWindows({len(self)} windows of {self.size}, {self.skipped} left out)"


class RandomWindows:
  """`count` random `size` windows a epoch, each a pure function of (seed, epoch, index).

  A window is drawn around a chunk of a scene holding labelled pixels, chunks weighted by how
  many, so scenes mostly nodata cost no wasted reads; a window that still holds no labelled
  pixel is drawn again and counted (`skipped`).
  """

  def __init__(self, scenes: Scenes, scans: Sequence[raster.Scan], size: int, count: int,
               seed: int):
    self.scenes, self.size, self.count, self.seed = scenes, size, int(count), int(seed)
    self.chunks = [(k, i, j) for k, scan in enumerate(scans) for (i, j) in sorted(scan.chunks)]
    weights = np.array([scans[k].chunks[(i, j)] for k, i, j in self.chunks], np.float64)
    if not len(weights):
      raise ValueError("the train split has no labelled pixel to draw windows around")
    self.cumulative = np.cumsum(weights) / weights.sum()
    self.skipped = 0

  def __len__(self) -> int:
    return self.count

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return self.at(i, 0)

  def _start(self, rng: np.random.Generator, offset: int, length: int) -> int:
    """A start along one axis so the window overlaps chunk [offset, offset + CHUNK)."""
    lo = max(0, offset - self.size + 1)
    hi = max(lo, min(offset + raster.CHUNK - 1, length - self.size))
    return int(rng.integers(lo, hi + 1))

  def at(self, index: int, epoch: int) -> dict[str, np.ndarray]:
    """Window `index` of epoch `epoch`."""
    rng = np.random.default_rng([self.seed, int(epoch), int(index)])
    for _ in range(MAX_DRAWS):
      pick = int(np.searchsorted(self.cumulative, rng.random(), side="right"))
      k, i, j = self.chunks[min(pick, len(self.chunks) - 1)]
      height, width = self.scenes.pairs[k].shape
      y = self._start(rng, i * raster.CHUNK, height)
      x = self._start(rng, j * raster.CHUNK, width)
      example = self.scenes.read(k, y, x, self.size, self.size)
      if np.any(example["label"] < self.scenes.labels.palette.num_classes):
        return example
      self.skipped += 1
      logging.log_every_n_seconds(logging.INFO, "%d random windows without a labelled pixel "
                                  "drawn again so far", 60, self.skipped)
    raise ValueError(f"{MAX_DRAWS} random windows in a row held no labelled pixel")

  def __repr__(self):
    return f"RandomWindows({self.count} a epoch of {self.size}, seed {self.seed})"


class ImageScene:
  """An image raster without a mask, read window by window to be predicted (`seg_jax.scenes`).

  Its labels only say where the image is nodata (`NODATA`) or not (`DATA`): there are no classes
  to read. Nodata pixels become `fill` (the training band means, `raster.fill_values`), as in
  training. Use it as a context manager (it holds the file open).
  """

  DATA, NODATA = 0, 1

  def __init__(self, info: raster.RasterInfo, bands: Sequence[int], fill: np.ndarray):
    self.info, self.bands, self.fill = info, tuple(bands), np.asarray(fill)
    self.shape = (info.height, info.width)
    self.name = info.path
    self.nodata = info.nodata
    self._ds = None

  def __enter__(self):
    self._ds = raster.open_raster(self.info.path)
    return self

  def __exit__(self, *exc):
    self._ds.close()

  @property
  def dataset(self):
    """The open rasterio dataset (its CRS and transform are the outputs')."""
    return self._ds

  def read(self, y: int, x: int, h: int, w: int) -> dict[str, np.ndarray]:
    """{"image": (h, w, N) stored type, "label": uint8 (h, w) `NODATA` or `DATA`} of rows y..,
    columns x.. inside the scene."""
    with raster.gdal_env():
      image, nodata = raster.read_pixels(self._ds, self.info.path, self.bands, self.nodata,
                                         Window(x, y, w, h))
    image[nodata] = self.fill
    return {"image": image, "label": nodata.astype(np.uint8)}

  def labelled(self, y: int, x: int, h: int, w: int) -> bool:
    """Every window is predicted (a window of nodata only costs its forward pass)."""
    del y, x, h, w
    return True
