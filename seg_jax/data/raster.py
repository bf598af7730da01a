"""Rasters (GeoTIFFs, or any file GDAL opens) through rasterio: bands, nodata, masks, windows.

An image raster holds N bands of uint8, uint16, int16 or float32 values; its mask raster one
band of class indices or three (or four) uint8 bands of palette colours, on the same pixel grid
(size, CRS and transform). Every band is read as data whatever its colour interpretation says
(NAIP tags its near-infrared band as alpha). A pixel is nodata when any selected band holds the
image's nodata value (the file's, else `data.nodata`) or is not finite; its label becomes the
ignore index, as does a mask pixel holding the mask's nodata value (the file's, else
`data.mask_nodata`). Every error is one line that starts with the file it is about.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Optional, Sequence

import numpy as np
import rasterio
from rasterio.enums import Interleaving
from rasterio.errors import NotGeoreferencedWarning
from rasterio.errors import RasterioError
from rasterio.windows import Window

from seg_jax import storage
from seg_jax.data import palettes

DTYPES = ("uint8", "uint16", "int16", "float32")
# Side of the square chunks a scan reads: a scene larger than memory is read one chunk at a time.
CHUNK = 512
# GDAL's block cache in MB while seg_jax reads (its default, 5 % of RAM, grew to 1.3 GB when a
# 20000x20000 scene was read once).
GDAL_CACHE_MB = 64


def gdal_env() -> rasterio.Env:
  """The GDAL settings of every read: a small block cache."""
  return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB)


@dataclasses.dataclass(frozen=True)
class RasterInfo:
  """What a raster file's header says."""

  path: str
  height: int
  width: int
  count: int
  dtype: str
  crs: Optional[str]  # None: the file has no coordinate reference system
  transform: tuple[float, ...]  # affine (a, b, c, d, e, f) of pixel -> map coordinates
  nodata: Optional[float]
  descriptions: tuple[str, ...]  # "" where a band has none
  colormap: bool = False  # a single band with a colour table (a palette mask)


def open_raster(path: str):
  """`path` opened by rasterio for reading (the caller closes it): a local file directly, an
  object in a bucket through fsspec (GDAL reads the byte ranges a window needs from the
  storage's file object, not the whole file); a file without a CRS says nothing."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", NotGeoreferencedWarning)
    if storage.is_url(path):
      return rasterio.open(path, opener=storage.open_file)
    return rasterio.open(path)


def describe(path: str) -> RasterInfo:
  """The header of `path`; ValueError naming it if GDAL cannot open it or it has no bands."""
  try:
    with gdal_env(), open_raster(path) as ds:
      colormap = _has_colormap(ds)
      info = RasterInfo(
          path=path, height=ds.height, width=ds.width, count=ds.count,
          dtype=ds.dtypes[0] if ds.count else "", crs=ds.crs.to_string() if ds.crs else None,
          transform=tuple(ds.transform)[:6], nodata=ds.nodata,
          descriptions=tuple(d or "" for d in ds.descriptions), colormap=colormap)
      dtypes = set(ds.dtypes)
      missing = _missing_bytes(ds, path)
  except (RasterioError, OSError) as e:
    raise ValueError(f"{path}: not a raster GDAL can open ({_one_line(e)})") from e
  if info.count == 0:
    raise ValueError(f"{path}: the raster has no bands")
  if len(dtypes) > 1:
    raise ValueError(f"{path}: its bands have different types {sorted(dtypes)}")
  if missing:
    raise ValueError(f"{path}: the file is cut short: its pixel blocks end at byte {missing[0]} "
                     f"but it holds {missing[1]} bytes")
  return info


def _missing_bytes(ds, path: str) -> Optional[tuple[int, int]]:
  """(end of the last pixel block, file size) of a TIFF cut short, else None (also for files
  of other formats, whose reads fail instead).

  The TIFF header lists every block's offset and size, so a cut file is found before any pixel
  is read.
  """
  if ds.driver != "GTiff" or not ds.count:
    return None
  (block_h, block_w), end = ds.block_shapes[0], 0
  rows, columns = -(-ds.height // block_h), -(-ds.width // block_w)
  planes = range(1, ds.count + 1) if ds.interleaving == Interleaving.band else (1,)
  for band in planes:
    for i in range(rows):
      for j in range(columns):
        offset = ds.get_tag_item(f"BLOCK_OFFSET_{j}_{i}", "TIFF", bidx=band)
        size = ds.get_tag_item(f"BLOCK_SIZE_{j}_{i}", "TIFF", bidx=band)
        end = max(end, int(offset or 0) + int(size or 0))
  length = storage.size(path)
  return (end, length) if end > length else None


def _has_colormap(ds) -> bool:
  if ds.count != 1:
    return False
  try:
    return bool(ds.colormap(1))
  except ValueError:  # rasterio raises it for a band without a colour table
    return False


def _one_line(e: BaseException) -> str:
  """GDAL's own message (rasterio chains it as the cause), on one line."""
  return " ".join(str(e.__cause__ or e).split())


def select_bands(info: RasterInfo, bands: Sequence[Any]) -> tuple[int, ...]:
  """The 1-based band numbers `data.bands` names in `info`'s file, in the order named.

  An entry is a band number or a band description (case-insensitive); () selects every band.
  Raises:
    ValueError naming the file: a number out of range, a description no band has, a band
    named twice.
  """
  if not bands:
    return tuple(range(1, info.count + 1))
  out = []
  described = [d.lower() for d in info.descriptions]
  for b in bands:
    if isinstance(b, str):
      if b.lower() not in described:
        raise ValueError(f"{info.path}: no band is described as {b!r} (data.bands="
                         f"{tuple(bands)}); its band descriptions are {info.descriptions}")
      number = described.index(b.lower()) + 1
    elif not 1 <= int(b) <= info.count:
      raise ValueError(f"{info.path}: band {b} of data.bands={tuple(bands)} is out of range: "
                       f"the file has {info.count} bands (numbered from 1)")
    else:
      number = int(b)
    if number in out:
      raise ValueError(f"{info.path}: data.bands={tuple(bands)} names band {number} twice")
    out.append(number)
  return tuple(out)


def check_rgb_bands(bands: Sequence[int], rgb_bands: Sequence[int]) -> None:
  """ValueError unless `data.rgb_bands` is () or three distinct bands among the selected `bands`."""
  if not rgb_bands:
    return
  if len(rgb_bands) != 3 or len(set(rgb_bands)) != 3:
    raise ValueError(f"data.rgb_bands must name the red, green and blue band numbers (three "
                     f"distinct) or be () when there are none, got {tuple(rgb_bands)}")
  missing = [b for b in rgb_bands if b not in bands]
  if missing:
    raise ValueError(f"data.rgb_bands={tuple(rgb_bands)} names band {missing[0]}, which the "
                     f"input does not hold (its bands: {tuple(bands)}, from data.bands)")


def _transform_differs(a: Sequence[float], b: Sequence[float]) -> bool:
  """Whether two pixel grids differ by more than a thousandth of a pixel."""
  grid = ~rasterio.Affine(*a) @ rasterio.Affine(*b)
  return (max(abs(grid.a - 1), abs(grid.b), abs(grid.d), abs(grid.e - 1)) > 1e-6
          or max(abs(grid.c), abs(grid.f)) > 1e-3)


def check_grids(image: RasterInfo, mask: RasterInfo) -> None:
  """ValueError naming both files when their size, CRS or transform differ (or one lacks a CRS)."""
  both = f"{image.path} and its mask {mask.path}"
  if (image.height, image.width) != (mask.height, mask.width):
    raise ValueError(f"{both} differ in size: {image.width}x{image.height} vs "
                     f"{mask.width}x{mask.height} pixels")
  if (image.crs is None) != (mask.crs is None):
    lacking, other = (image, mask) if image.crs is None else (mask, image)
    raise ValueError(f"{lacking.path}: has no CRS, but {other.path} of the same pair has "
                     f"{other.crs}")
  if image.crs != mask.crs:
    raise ValueError(f"{both} differ in CRS: {image.crs} vs {mask.crs}")
  if _transform_differs(image.transform, mask.transform):
    raise ValueError(f"{both} differ in transform: {image.transform} vs {mask.transform}")


@dataclasses.dataclass(frozen=True)
class Pair:
  """An image raster and its mask raster on one pixel grid, and how to read them."""

  name: str
  image: RasterInfo
  mask: RasterInfo
  bands: tuple[int, ...]  # image band numbers read, in model input order
  nodata: Optional[float]  # image nodata value: the file's, else data.nodata
  mask_nodata: Optional[float]  # mask nodata value: the file's, else data.mask_nodata

  @property
  def shape(self) -> tuple[int, int]:
    """(H, W) of the pair's pixel grid."""
    return self.image.height, self.image.width


def make_pair(name: str, image: RasterInfo, mask: RasterInfo, *, bands: Sequence[Any],
              nodata: Optional[float], mask_nodata: Optional[float]) -> Pair:
  """A checked pair: supported image type, a mask of indices or colours, one pixel grid."""
  if image.dtype not in DTYPES:
    raise ValueError(f"{image.path}: {image.dtype} pixels are not read; image rasters hold "
                     f"one of {DTYPES}")
  if not (mask.count == 1 and np.issubdtype(np.dtype(mask.dtype), np.integer)) and not (
      mask.count in (3, 4) and mask.dtype == "uint8"):
    raise ValueError(f"{mask.path}: a mask holds one integer band of class indices or three "
                     f"uint8 bands of palette colours, this one {mask.count} {mask.dtype} bands")
  check_grids(image, mask)
  return Pair(name, image, mask, select_bands(image, bands),
              image.nodata if image.nodata is not None else nodata,
              mask.nodata if mask.nodata is not None else mask_nodata)


def equals_nodata(values: np.ndarray, nodata: Optional[float]) -> np.ndarray:
  """Where `values` hold `nodata` (NaN matches NaN; None matches nothing)."""
  if nodata is None:
    return np.zeros(values.shape, bool)
  if np.isnan(nodata):
    return np.isnan(values)
  stored = np.asarray(nodata).astype(values.dtype)
  if stored != nodata:  # not a value of this type (out of range, or a fraction for integers)
    return np.zeros(values.shape, bool)
  return values == stored


@dataclasses.dataclass(frozen=True)
class Labels:
  """How mask values become class labels."""

  palette: palettes.Palette
  ignore_index: int

  def decode(self, raw: np.ndarray, pair: Pair) -> tuple[np.ndarray, int]:
    """(uint8 labels (h, w), unknown-colour pixels) of mask values `raw` (bands, h, w).

    Raises ValueError naming the mask when an index mask holds a value outside the classes.
    """
    if pair.mask.count == 1:
      values, n = raw[0], self.palette.num_classes
      nodata = equals_nodata(values, pair.mask_nodata)
      bad = ~nodata & ((values < 0) | (values >= n))
      if bad.any():
        raise ValueError(
            f"{pair.mask.path}: mask value {values[bad].max()} is not a class: data.palette has "
            f"{n} classes (0..{n - 1}); set data.mask_nodata if it marks pixels of no class")
      label = values.astype(np.uint8)
      label[nodata] = self.ignore_index
      return label, 0
    rgb = np.moveaxis(raw[:3], 0, -1)
    return palettes.decode_mask(rgb, self.palette, self.ignore_index, return_unknown=True)


def read_pixels(ds, path: str, bands: Sequence[int], nodata: Optional[float], window: Window):
  """(image (h, w, N) as stored, nodata (h, w) bool) of `bands` of an open raster in `window`.

  A pixel is nodata where any band holds `nodata` or is not finite.
  Raises ValueError naming `path` when GDAL cannot read it (a truncated file).
  """
  try:
    image = np.moveaxis(ds.read(list(bands), window=window), 0, -1)
  except (RasterioError, OSError) as e:
    raise ValueError(f"{path}: cannot read pixels ({_one_line(e)})") from e
  missing = equals_nodata(image, nodata).any(axis=-1)
  if image.dtype.kind == "f":
    missing |= ~np.isfinite(image).all(axis=-1)
  return image, missing


def fill_values(mean: Sequence[float], scale: float, dtype: str) -> np.ndarray:
  """What nodata pixels become, per band, in `dtype`: the band means (`mean` of values times
  `scale`) as stored, rounded for integer types and clipped to the type's range, so that they
  normalise to about 0."""
  fill = np.asarray(mean, np.float64) / scale
  if np.dtype(dtype).kind != "f":
    limits = np.iinfo(dtype)
    fill = np.clip(np.round(fill), limits.min, limits.max)
  return fill.astype(dtype)


def read_window(image_ds, mask_ds, pair: Pair, labels: Labels, window: Window):
  """One window of a pair: (image (h, w, N) as stored, nodata (h, w) bool, labels, unknown).

  The labels are the ignore index wherever the image is nodata.
  Raises ValueError naming the file GDAL could not read (a truncated file).
  """
  image, nodata = read_pixels(image_ds, pair.image.path, pair.bands, pair.nodata, window)
  try:
    raw = mask_ds.read(window=window)
  except (RasterioError, OSError) as e:
    raise ValueError(f"{pair.mask.path}: cannot read pixels ({_one_line(e)})") from e
  label, unknown = labels.decode(raw, pair)
  label[nodata] = labels.ignore_index
  return image, nodata, label, unknown


def open_pair(pair: Pair):
  """The pair's two files opened (the caller closes them)."""
  return open_raster(pair.image.path), open_raster(pair.mask.path)


def chunks(height: int, width: int, size: int = CHUNK):
  """(row, column, window) of the `size` squares that tile an image (cut at its edges)."""
  for i, y in enumerate(range(0, height, size)):
    for j, x in enumerate(range(0, width, size)):
      yield i, j, Window(x, y, min(size, width - x), min(size, height - y))


@dataclasses.dataclass
class Scan:
  """What one pass over a pair found: per-band sums over its valid pixels, labelled chunks."""

  sums: np.ndarray  # per band, over valid pixels, in stored units (float64)
  squares: np.ndarray
  valid: int = 0  # pixels that are not nodata
  labelled: int = 0  # pixels with a class
  unknown: int = 0  # mask pixels in colours outside the palette
  # {(chunk row, chunk column): labelled pixels} of chunks (CHUNK squares) with any.
  chunks: dict[tuple[int, int], int] = dataclasses.field(default_factory=dict)


def scan(pair: Pair, labels: Labels) -> Scan:
  """Reads a pair chunk by chunk: checks every pixel can be read and decoded, and sums it."""
  out = Scan(np.zeros(len(pair.bands)), np.zeros(len(pair.bands)))
  with gdal_env():
    image_ds, mask_ds = open_pair(pair)
    with image_ds, mask_ds:
      for i, j, window in chunks(*pair.shape):
        image, nodata, label, unknown = read_window(image_ds, mask_ds, pair, labels, window)
        valid = image[~nodata].astype(np.float64)
        out.valid += len(valid)
        out.sums += valid.sum(axis=0)
        out.squares += (valid * valid).sum(axis=0)
        out.unknown += unknown
        count = int(np.count_nonzero(label < labels.palette.num_classes))
        if count:
          out.chunks[(i, j)] = count
          out.labelled += count
  return out


def mean_std(scans: Sequence[Scan], scale: float) -> tuple[np.ndarray, ...]:
  """Per-band mean and std (float32, times `scale`) over the valid pixels of `scans`."""
  valid = sum(s.valid for s in scans)
  if not valid:
    raise ValueError("the train split has no pixel that is not nodata")
  mean = sum(s.sums for s in scans) / valid
  squares = sum(s.squares for s in scans) / valid
  std = np.sqrt(np.maximum(squares - mean * mean, 0.0))
  return (mean * scale).astype(np.float32), (std * abs(scale)).astype(np.float32)
