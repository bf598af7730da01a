"""GeoTIFFs written by the tests: images of any band count and type, masks, raster folders."""

import os

import numpy as np
import rasterio
from rasterio.transform import from_origin

# (CRS, top-left corner) of the scenes the tests write: UTM 33N, NAD83 / UTM 17N, Web Mercator.
CRSS = (("EPSG:32633", (500000.0, 4000000.0)), ("EPSG:26917", (266115.6, 4303356.0)),
        ("EPSG:3857", (1113194.9, 6446275.8)))
SIZE = (40, 48)
NUM_CLASSES = 6


def write(path, array, *, crs="EPSG:32633", corner=(500000.0, 4000000.0), pixel=10.0,
          nodata=None, descriptions=None, **profile):
  """Writes a (C, H, W) (or (H, W)) array as a GeoTIFF; crs=None writes none."""
  array = np.asarray(array)
  array = array[None] if array.ndim == 2 else array
  count, height, width = array.shape
  options = dict(driver="GTiff", width=width, height=height, count=count, dtype=array.dtype.name,
                 nodata=nodata, **profile)
  if crs is not None:
    options.update(crs=crs, transform=from_origin(*corner, pixel, pixel))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with rasterio.open(path, "w", **options) as ds:
    ds.write(array)
    for band, text in enumerate(descriptions or (), start=1):
      ds.set_band_description(band, text)
  return path


def scene(rng, *, bands=4, dtype="uint16", size=SIZE, border=0, nodata=None):
  """A random (C, H, W) image and its (H, W) uint8 class map; `border` pixels of nodata."""
  h, w = size
  if np.dtype(dtype).kind == "f":
    image = rng.normal(0.3, 0.1, (bands, h, w)).astype(dtype)
  else:
    info = np.iinfo(dtype)
    image = rng.integers(max(info.min, -3000), min(info.max, 4000), (bands, h, w)).astype(dtype)
  coarse = rng.integers(0, NUM_CLASSES, (h // 8 + 1, w // 8 + 1))
  label = np.repeat(np.repeat(coarse, 8, 0), 8, 1)[:h, :w].astype(np.uint8)
  if border:
    image[:, :border] = nodata
    image[:, :, -border:] = nodata
  return image, label


def split_layout(root, *, per_split=(2, 1, 1), names=("img", "mask"), seed=0, crs_index=0,
                 **scene_kwargs):
  """train/, val/, test/ folders of tile_<n>.tif images and mask_<n>.tif masks (NAIP's naming).

  Returns {split: [(image (C, H, W), label (H, W)), ...]}.
  """
  rng = np.random.default_rng(seed)
  crs, corner = CRSS[crs_index]
  out, n = {}, 0
  for split, count in zip(("train", "val", "test"), per_split):
    out[split] = []
    for _ in range(count):
      image, label = scene(rng, **scene_kwargs)
      nodata = scene_kwargs.get("nodata")
      write(os.path.join(root, split, names[0], f"tile_{n}.tif"), image, crs=crs, corner=corner,
            nodata=nodata)
      write(os.path.join(root, split, names[1], f"mask_{n}.tif"), label, crs=crs, corner=corner)
      out[split].append((image, label))
      n += 1
  return out


PALETTE = {"background": "#B4B4B4", "building": "#E6194B", "road": "#FFE119",
           "bare land": "#D2A06E", "forest": "#228B22", "water": "#1E64DC"}
