"""Neighbouring rasters stitched by their transforms into one scene, read window by window.

Tiles cut from one survey (the NAIP tiles, a scene delivered in quarters) share a CRS, a pixel
size and a pixel grid; a `Mosaic` places each on the grid of their union, so a model sees across
the tiles' edges and one class map covers them all. Nothing is copied: `MosaicScene` reads a
window from each tile it overlaps. Where no tile lies, and where a tile holds its own nodata,
the mosaic is nodata. Where tiles overlap, the first one given wins (as `rasterio.merge` does).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from affine import Affine
import numpy as np
from rasterio.windows import Window

from seg_jax.data import raster

# How far (in pixels) a tile's corner may lie off the mosaic's pixel grid, and how far (relative)
# its pixel size may differ, and still be placed: transforms written as decimal text carry
# rounding noise (the NAIP tiles' pixel height is 0.600000000599999).
ALIGN_TOLERANCE = 0.01


@dataclasses.dataclass(frozen=True)
class Tile:
  """A raster of a mosaic and where its first row and column lie in the mosaic."""
  info: raster.RasterInfo
  row: int
  col: int


@dataclasses.dataclass(frozen=True)
class Mosaic:
  """The grid of the union of rasters, with each raster placed on it.

  It has the attributes of a `raster.RasterInfo` that prediction reads: `path` (the mosaic's
  name: its outputs are named after it), height, width and dtype; each tile's nodata is read
  from its own header.
  """
  path: str
  height: int
  width: int
  dtype: str
  crs: str
  transform: Affine
  tiles: tuple[Tile, ...]

  @property
  def tile_share(self) -> float:
    """The share of the grid the tiles cover (at most; overlaps counted once per tile)."""
    area = sum(t.info.height * t.info.width for t in self.tiles)
    return min(1.0, area / (self.height * self.width))


def plan(name: str, infos: Sequence[raster.RasterInfo]) -> Mosaic:
  """The mosaic named `name` of rasters `infos` (the headers of `raster.describe`).

  Raises ValueError naming the raster at fault (and the first one, which it is compared with):
  no CRS, another CRS, band count, pixel type or pixel size, a rotated grid, or a corner off the
  first raster's pixel grid.
  """
  if not infos:
    raise ValueError(f"mosaic {name}: no rasters to stitch")
  first = infos[0]
  a, _, _, _, e, _ = first.transform
  for info in infos:
    _check_like(info, first)
  corners = [(info.transform[2], info.transform[5]) for info in infos]
  left, top = min(x for x, _ in corners), max(y for _, y in corners)
  tiles = []
  for info, (x, y) in zip(infos, corners):
    col, row = (x - left) / a, (y - top) / e
    if max(abs(col - round(col)), abs(row - round(row))) > ALIGN_TOLERANCE:
      raise ValueError(f"{info.path}: its corner lies {col:.3f}, {row:.3f} pixels from that of "
                       f"{first.path}: not on the same pixel grid, so the tiles cannot be "
                       "stitched without resampling")
    tiles.append(Tile(info, round(row), round(col)))
  height = max(t.row + t.info.height for t in tiles)
  width = max(t.col + t.info.width for t in tiles)
  return Mosaic(path=name, height=height, width=width, dtype=first.dtype, crs=first.crs,
                transform=Affine(a, 0.0, left, 0.0, e, top), tiles=tuple(tiles))


def _check_like(info: raster.RasterInfo, first: raster.RasterInfo) -> None:
  """Raises ValueError if `info` cannot share `first`'s grid."""
  if info.crs is None:
    raise ValueError(f"{info.path}: the file has no coordinate reference system, so it has no "
                     "place in a mosaic")
  for what, value, expected in (("coordinate reference system", info.crs, first.crs),
                                ("band count", info.count, first.count),
                                ("pixel type", info.dtype, first.dtype)):
    if value != expected:
      raise ValueError(f"{info.path}: {what} {value}, but {first.path} has {expected}; the "
                       "tiles of a mosaic share one")
  a, b, _, d, e, _ = info.transform
  if b or d:
    raise ValueError(f"{info.path}: a rotated pixel grid (transform {info.transform}); tiles "
                     "of a mosaic are north-up")
  size, expected = (a, e), (first.transform[0], first.transform[4])
  if any(not math.isclose(s, t, rel_tol=ALIGN_TOLERANCE / max(info.width, info.height, 1))
         for s, t in zip(size, expected)):
    raise ValueError(f"{info.path}: pixel size {a} x {-e}, but {first.path} has "
                     f"{expected[0]} x {-expected[1]}; the tiles of a mosaic share one")


@dataclasses.dataclass(frozen=True)
class Grid:
  """The pixel grid of a mosaic as the GeoTIFF writers read it (`seg_jax.data.geotiff`)."""
  width: int
  height: int
  transform: Affine
  crs: str


class MosaicScene:
  """A `Mosaic` read window by window to be predicted, as `windows.ImageScene` reads one raster.

  Use it as a context manager (it holds every tile open).
  """

  DATA, NODATA = 0, 1

  def __init__(self, mosaic: Mosaic, bands: Sequence[int], fill: np.ndarray):
    self.mosaic, self.bands, self.fill = mosaic, tuple(bands), np.asarray(fill)
    self.shape = (mosaic.height, mosaic.width)
    self.name = mosaic.path
    self._open = []

  def __enter__(self):
    self._open = [raster.open_raster(tile.info.path) for tile in self.mosaic.tiles]
    return self

  def __exit__(self, *exc):
    for ds in self._open:
      ds.close()

  @property
  def dataset(self) -> Grid:
    """The mosaic's grid (the outputs' CRS and transform)."""
    m = self.mosaic
    return Grid(m.width, m.height, m.transform, m.crs)

  def read(self, y: int, x: int, h: int, w: int) -> dict[str, np.ndarray]:
    """{"image": (h, w, N) stored type, "label": uint8 (h, w) `NODATA` or `DATA`} of rows y..,
    columns x.. of the mosaic."""
    image = np.empty((h, w, len(self.bands)), self.mosaic.dtype)  # filled below where nodata
    nodata = np.ones((h, w), bool)
    covered = np.zeros((h, w), bool)
    with raster.gdal_env():
      for tile, ds in zip(self.mosaic.tiles, self._open):
        top, left = max(y, tile.row), max(x, tile.col)
        bottom = min(y + h, tile.row + tile.info.height)
        right = min(x + w, tile.col + tile.info.width)
        if bottom <= top or right <= left:
          continue
        rows, cols = slice(top - y, bottom - y), slice(left - x, right - x)
        new = ~covered[rows, cols]  # the first tile given wins where tiles overlap
        pixels, missing = raster.read_pixels(
            ds, tile.info.path, self.bands, tile.info.nodata,
            Window(left - tile.col, top - tile.row, right - left, bottom - top))
        image[rows, cols][new] = pixels[new]
        nodata[rows, cols][new] = missing[new]
        covered[rows, cols] = True
    image[nodata] = self.fill
    return {"image": image, "label": nodata.astype(np.uint8)}

  def labelled(self, y: int, x: int, h: int, w: int) -> bool:
    """Every window is predicted, as in `windows.ImageScene`."""
    del y, x, h, w
    return True
