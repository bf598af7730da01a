"""GeoTIFFs written top to bottom, strip by strip: the class maps and probability rasters of
predicted scenes.

A `StripWriter` makes a tiled (`BLOCK` pixel tiles), DEFLATE-compressed GeoTIFF on the pixel grid
(size, CRS, transform) of a source raster and takes its rows in strips of any height. Rows are
held until a whole row of tiles is complete, so each tile is compressed and written once and
memory holds at most one row of tiles plus a strip. With `cog`, the finished file is copied into
a Cloud-Optimized GeoTIFF (GDAL's COG driver) with overviews, `overview` resampling. The file
appears under its name only when complete; a file in a bucket is written on the local disk, then
uploaded whole (`seg_jax.storage.put`).

- classes: one uint8 band of class indices, `CLASS_NODATA` where the source is nodata, the
  palette's colours as its colour table (nodata transparent), nearest-neighbour overviews.
- probabilities: one uint8 band per class (named by the class), round(probability x
  `PROB_SCALE`), so 0..254, with `PROB_NODATA` (255) where the source is nodata; each band's
  scale metadata is 1 / `PROB_SCALE`, so GDAL-aware readers (`rasterio`'s `ds.scales`, QGIS)
  know the probability of a value. Overviews average.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Optional, Sequence

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from seg_jax import storage
from seg_jax.data import palettes

BLOCK = 256  # tile side of every GeoTIFF written, and of a COG's tiles
CLASS_NODATA = 255  # class value of nodata pixels (so at most 255 classes)
PROB_SCALE = 254  # probability 1 is stored as 254
PROB_NODATA = 255


class StripWriter:
  """A GeoTIFF on `like`'s pixel grid (an open rasterio dataset), written strip by strip.

  Use it as a context manager: leaving it normally finishes the file (and its COG copy);
  leaving it on an exception removes what was written.
  """

  def __init__(self, path: str, like, *, count: int, nodata: float, cog: bool = False,
               overview: str = "nearest", descriptions: Sequence[str] = (),
               colormap: Optional[dict[int, tuple[int, ...]]] = None,
               scales: Optional[Sequence[float]] = None):
    self.path, self.cog, self.overview = path, cog, overview
    self.width, self.height = like.width, like.height
    self._tmp = (os.path.join(tempfile.mkdtemp(), "part.tif") if storage.is_url(path)
                 else path + ".part.tif")
    profile = dict(driver="GTiff", width=like.width, height=like.height, count=count,
                   dtype="uint8", nodata=nodata, tiled=True, blockxsize=BLOCK, blockysize=BLOCK,
                   compress="deflate", transform=like.transform)
    if like.crs is not None:
      profile["crs"] = like.crs
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", NotGeoreferencedWarning)
      self._ds = rasterio.open(self._tmp, "w", **profile)
    for band, text in enumerate(descriptions, start=1):
      self._ds.set_band_description(band, text)
    if colormap is not None:
      self._ds.write_colormap(1, colormap)
    if scales is not None:
      self._ds.scales = tuple(scales)
    self._pending: list[np.ndarray] = []
    self._top = 0  # the first row not written to the file

  def __enter__(self) -> StripWriter:
    return self

  def write(self, rows: np.ndarray) -> None:
    """Appends uint8 rows (count, n, width) below those written so far."""
    self._pending.append(np.asarray(rows, np.uint8))
    held = sum(r.shape[1] for r in self._pending)
    end = self._top + held
    if end < self.height:
      end = self._top + held // BLOCK * BLOCK  # whole rows of tiles only
    if end > self._top:
      self._flush(end - self._top)

  def _flush(self, n: int) -> None:
    """Writes the first `n` held rows."""
    held = np.concatenate(self._pending, axis=1)
    self._ds.write(held[:, :n], window=Window(0, self._top, self.width, n))
    self._pending = [held[:, n:]] if held.shape[1] > n else []
    self._top += n

  def __exit__(self, kind, error, trace) -> None:
    self._ds.close()
    finished = self._tmp + ".cog.tif" if self.cog else self._tmp
    try:
      if kind is not None:
        return
      if self._top != self.height:
        raise ValueError(f"{self.path}: {self._top} of {self.height} rows were written")
      if self.cog:
        rasterio.shutil.copy(self._tmp, finished, driver="COG", compress="DEFLATE",
                             blocksize=BLOCK, overview_resampling=self.overview.upper())
      storage.put(finished, self.path)
    finally:
      for leftover in {self._tmp, finished}:
        if os.path.exists(leftover):
          os.remove(leftover)


def class_writer(path: str, like, palette: palettes.Palette, *, cog: bool) -> StripWriter:
  """The writer of a class map: uint8 classes, the palette's colours as its colour table."""
  if len(palette.names) > CLASS_NODATA:
    raise ValueError(f"{path}: {len(palette.names)} classes do not fit a uint8 class map with "
                     f"nodata {CLASS_NODATA}")
  colormap = {i: tuple(int(v) for v in c) for i, c in enumerate(palette.colors)}
  colormap[CLASS_NODATA] = (*(palette.ignore_color or palettes.BLACK), 0)
  return StripWriter(path, like, count=1, nodata=CLASS_NODATA, cog=cog, overview="nearest",
                     descriptions=("class",), colormap=colormap)


def probs_writer(path: str, like, class_names: Sequence[str], *, cog: bool) -> StripWriter:
  """The writer of a probability raster: one uint8 band per class (see `encode_probs`)."""
  return StripWriter(path, like, count=len(class_names), nodata=PROB_NODATA, cog=cog,
                     overview="average", descriptions=class_names,
                     scales=(1 / PROB_SCALE,) * len(class_names))


def encode_classes(labels: np.ndarray, nodata: np.ndarray) -> np.ndarray:
  """(1, h, w) uint8 of class indices (h, w), `CLASS_NODATA` where `nodata`."""
  out = labels.astype(np.uint8)
  out[nodata] = CLASS_NODATA
  return out[None]


def encode_probs(probs: np.ndarray, nodata: np.ndarray) -> np.ndarray:
  """(C, h, w) uint8 of probabilities (h, w, C): round(p x `PROB_SCALE`), `PROB_NODATA` where
  `nodata`."""
  out = np.round(np.clip(probs, 0, 1) * PROB_SCALE).astype(np.uint8)
  out[nodata] = PROB_NODATA
  return np.moveaxis(out, -1, 0)
