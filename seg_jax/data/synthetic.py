"""Procedural aerial scenes in the Dubai aerial classes, generated on the fly.

Each scene is a pure function of (seed, index, size). Class colours overlap on
purpose (beige roofs on sand, dark roofs and asphalt, shadows and deep water,
dry scrub and land, grey specks and concrete), and a per-image illumination
field, tint, haze and sensor noise move every colour further, so a per-pixel
colour classifier cannot separate the classes; shape and texture can.

This module also makes the `synthetic_aerial` dataset of them: each split from its own index
range, generated once into memory and kept in a cache folder (`data.cache_dir`) for later runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from typing import Any, Iterator, Optional

from absl import logging
import numpy as np

from seg_jax.data import palettes
from seg_jax.data import preprocess
from seg_jax.data import sources
from seg_jax.data import splits

BUILDING, LAND, ROAD, VEGETATION, WATER, UNLABELED = range(6)
PALETTE = palettes.DUBAI_AERIAL
# Splits draw scenes from disjoint index ranges, so changing one
# split's size never changes another split's scenes.
SPLIT_OFFSETS = {"train": 0, "val": 1 << 30, "test": 1 << 31}
# mean/std come from the first scenes of the train split.
STATS_SCENES = 64

_ROOF_COLORS = np.array([
    (226, 224, 218),  # white
    (172, 170, 168),  # concrete grey
    (200, 178, 144),  # beige, like sand
    (168, 96, 72),  # terracotta
    (104, 124, 146),  # blue-grey, like water
    (86, 86, 92),  # dark, like asphalt
    (150, 150, 120),  # dusty olive, like dry scrub
], np.float32)
_LAND_COLORS = np.array([
    (198, 172, 132), (184, 160, 124), (210, 190, 152), (170, 146, 110),
], np.float32)
_ROAD_COLORS = np.array([
    (96, 96, 100), (124, 122, 122), (168, 164, 156), (182, 158, 122),
], np.float32)
_VEG_COLORS = np.array([
    (72, 104, 56), (96, 124, 68), (140, 140, 92), (48, 70, 50),
], np.float32)
_WATER_DEEP = np.array([
    (22, 64, 104), (36, 88, 110), (60, 90, 84),
], np.float32)
_WATER_SHALLOW = np.array([
    (64, 156, 168), (92, 170, 160), (120, 150, 120),
], np.float32)
_POOL_COLOR = np.array((84, 186, 206), np.float32)


def _noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
  """Smooth value noise in about [-1, 1] with feature size `cell` pixels."""
  gh = int(np.ceil(h / cell)) + 2
  gw = int(np.ceil(w / cell)) + 2
  grid = rng.uniform(-1.0, 1.0, (gh, gw)).astype(np.float32)
  y = np.arange(h, dtype=np.float32) / cell
  x = np.arange(w, dtype=np.float32) / cell
  y0 = y.astype(np.int32)
  x0 = x.astype(np.int32)
  fy = y - y0
  fx = x - x0
  # Smoothstep weights avoid the visible grid of plain bilinear noise.
  fy = (fy * fy * (3 - 2 * fy))[:, None]
  fx = (fx * fx * (3 - 2 * fx))[None, :]
  a = grid[y0][:, x0]
  b = grid[y0][:, x0 + 1]
  c = grid[y0 + 1][:, x0]
  d = grid[y0 + 1][:, x0 + 1]
  return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _fractal(rng, h, w, cell, octaves=3):
  out = np.zeros((h, w), np.float32)
  amp, total = 1.0, 0.0
  for _ in range(octaves):
    out += amp * _noise(rng, h, w, max(cell, 1.0))
    total += amp
    amp *= 0.5
    cell /= 2
  return out / total


def _segment_distance(yy, xx, p0, p1):
  """Distance of every pixel to the segment p0-p1 (points as (y, x))."""
  d = np.subtract(p1, p0, dtype=np.float32)
  length2 = float(d @ d) or 1.0
  t = ((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1]) / length2
  t = np.clip(t, 0.0, 1.0)
  return np.hypot(yy - (p0[0] + t * d[0]), xx - (p0[1] + t * d[1]))


def _rotated_rect(yy, xx, cy, cx, half_h, half_w, angle):
  c, s = np.cos(angle), np.sin(angle)
  mask = np.zeros(yy.shape, bool)
  # Only the window around the rectangle's circumscribed circle can be inside.
  r = float(np.hypot(half_h, half_w)) + 1
  y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 2, yy.shape[0])
  x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 2, yy.shape[1])
  if y0 >= y1 or x0 >= x1:
    return mask
  wy, wx = yy[y0:y1, x0:x1], xx[y0:y1, x0:x1]
  u = (wy - cy) * c + (wx - cx) * s
  v = -(wy - cy) * s + (wx - cx) * c
  mask[y0:y1, x0:x1] = (np.abs(u) <= half_h) & (np.abs(v) <= half_w)
  return mask


def _footprint(rng, yy, xx, cy, cx, size, angle):
  """A rotated rectangle or L-shape of about `size` pixels across."""
  hh = size * rng.uniform(0.3, 0.6)
  hw = size * rng.uniform(0.3, 0.6)
  mask = _rotated_rect(yy, xx, cy, cx, hh, hw, angle)
  if rng.random() < 0.4:
    # A second wing sharing a corner turns the rectangle into an L.
    c, s = np.cos(angle), np.sin(angle)
    du, dv = hh * rng.choice([-1, 1]), hw * rng.choice([-1, 1])
    wy = cy + du * c - dv * s
    wx = cx + du * s + dv * c
    mask |= _rotated_rect(yy, xx, wy, wx, hh * rng.uniform(0.4, 0.9),
                          hw * rng.uniform(0.4, 0.9), angle)
  return mask


def _shift(mask, dy, dx):
  out = np.zeros_like(mask)
  h, w = mask.shape
  ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
  xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
  out[yd, xd] = mask[ys, xs]
  return out


def _land(rng, h, w, scale):
  """Textured land of one sandy colour, the background of every scene."""
  img = np.empty((h, w, 3), np.float32)
  land = _LAND_COLORS[rng.integers(len(_LAND_COLORS))] + rng.normal(0, 8, 3)
  tex = _fractal(rng, h, w, 24 * scale, 3)
  speckle = rng.normal(0, 1, (h, w)).astype(np.float32)
  img[:] = land + (tex * 22 + speckle * 6)[..., None]
  # Gravel patches darken some land towards road colours.
  gravel = _noise(rng, h, w, 30 * scale) > rng.uniform(0.3, 0.8)
  img[gravel] *= rng.uniform(0.7, 0.85)
  return img


def _add_water(rng, img, label, yy, xx, scale):
  """Paints a coastline along a random side into `img` and `label`, sometimes none."""
  if rng.random() >= 0.55:
    return
  h, w = label.shape
  side = rng.integers(4)
  along = xx if side < 2 else yy
  across = yy if side < 2 else xx
  extent = h if side < 2 else w
  level = extent * rng.uniform(0.15, 0.45)
  wobble = _noise(rng, h, w, 40 * scale) * 14 * scale + np.sin(along / (25 * scale) + rng.uniform(0, 6)) * 5 * scale
  dist = (across if side % 2 == 0 else extent - 1 - across) + wobble
  water = dist < level
  depth = np.clip((level - dist) / (0.6 * level + 1), 0, 1)[..., None]
  deep = _WATER_DEEP[rng.integers(len(_WATER_DEEP))]
  shallow = _WATER_SHALLOW[rng.integers(len(_WATER_SHALLOW))]
  ripples = _noise(rng, h, w, 4 * scale)[..., None] * 7
  wcol = shallow * (1 - depth) + deep * depth + ripples
  img[water] = wcol[water]
  label[water] = WATER


def _add_vegetation(rng, img, label, scale):
  """Textured vegetation blobs on land: the new image and the crown texture street trees reuse."""
  h, w = label.shape
  free = label == LAND
  veg_field = _fractal(rng, h, w, 26 * scale, 2)
  veg = (veg_field > rng.uniform(0.25, 0.6)) & free
  crowns = _noise(rng, h, w, 2.5 * scale)
  vcol = _VEG_COLORS[rng.integers(len(_VEG_COLORS))] + rng.normal(0, 6, 3)
  vtex = (crowns * 26 + _noise(rng, h, w, 9 * scale) * 14)[..., None]
  img = np.where(veg[..., None], vcol * (1 + vtex / 160) + vtex * 0.3, img)
  label[veg] = VEGETATION
  return img, crowns


def _road_segments(rng, h, w, scale, base_angle):
  """A few long streets through the scene plus side streets off them, as (p0, p1, width)."""
  segments = []
  for k in range(int(rng.integers(1, 4))):
    ang = base_angle + (np.pi / 2) * (k % 2) + rng.normal(0, 0.08)
    cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
    d = np.array([np.sin(ang), np.cos(ang)]) * (h + w)
    segments.append(((cy - d[0], cx - d[1]), (cy + d[0], cx + d[1]), rng.uniform(4, 10) * scale))
  # Side streets start part-way along a street, so they meet it in a junction.
  for _ in range(int(rng.integers(0, 4))):
    p0, p1, _ = segments[rng.integers(len(segments))]
    t = rng.uniform(0.3, 0.7)
    start = (p0[0] + t * (p1[0] - p0[0]), p0[1] + t * (p1[1] - p0[1]))
    ang = np.arctan2(p1[0] - p0[0], p1[1] - p0[1]) + np.pi / 2 + rng.normal(0, 0.15)
    length = rng.uniform(0.2, 0.6) * (h + w) * rng.choice([-1, 1])
    end = (start[0] + np.sin(ang) * length, start[1] + np.cos(ang) * length)
    segments.append((start, end, rng.uniform(2, 5) * scale))
  return segments


def _add_roads(rng, img, label, yy, xx, scale):
  """Paints roads off water: the street grid angle, the segments and the road mask."""
  h, w = label.shape
  road = np.zeros((h, w), bool)
  rcol = _ROAD_COLORS[rng.integers(len(_ROAD_COLORS))] + rng.normal(0, 5, 3)
  base_angle = rng.uniform(0, np.pi)
  segments = _road_segments(rng, h, w, scale, base_angle)
  center_line = np.zeros((h, w), bool)
  for p0, p1, width in segments:
    dist = _segment_distance(yy, xx, p0, p1)
    road |= dist <= width / 2
    if width > 5 * scale:
      center_line |= dist <= 0.6
  road &= label != WATER
  rtex = (_noise(rng, h, w, 3 * scale) * 8)[..., None]
  img[road] = rcol + rtex[road]
  dashes = center_line & road & (np.sin((xx + yy) / (3 * scale)) > 0.2)
  img[dashes] = (220, 218, 200)
  label[road] = ROAD
  return base_angle, segments, road


def _add_street_trees(rng, img, label, yy, xx, scale, segments, crowns):
  """Sometimes lines the first streets with trees: the new image."""
  if rng.random() >= 0.5:
    return img
  h, w = label.shape
  # Trees along streets cover road edges; they are labelled vegetation.
  near = np.zeros((h, w), bool)
  for p0, p1, width in segments[:2]:
    dist = _segment_distance(yy, xx, p0, p1)
    near |= (dist > width / 2 - 1) & (dist < width / 2 + 3 * scale)
  trees = near & (_noise(rng, h, w, 3 * scale) > 0.35) & (label != WATER)
  tcol = _VEG_COLORS[rng.integers(len(_VEG_COLORS))]
  img = np.where(trees[..., None], tcol * (1 + crowns[..., None] * 0.3), img)
  label[trees] = VEGETATION
  return img


def _add_buildings(rng, img, label, yy, xx, scale, base_angle, road):
  """Paints buildings aligned with the streets, and their cast shadows, into `img` and `label`."""
  h, w = label.shape
  # The sun direction, and so the shadow offset, is shared by the scene.
  sun = rng.uniform(0, 2 * np.pi)
  shadow_len = rng.uniform(2, 7) * scale
  sdy, sdx = int(round(np.sin(sun) * shadow_len)), int(round(np.cos(sun) * shadow_len))
  shadow = np.zeros((h, w), bool)
  buildings = np.zeros((h, w), bool)
  roof = np.zeros((h, w, 3), np.float32)
  n_build = int(rng.integers(8, 24))
  for _ in range(n_build):
    size = rng.uniform(12, 40) * scale
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    angle = base_angle + rng.choice([0.0, np.pi / 2]) + rng.normal(0, 0.05)
    fp = _footprint(rng, yy, xx, cy, cx, size, angle)
    area = int(fp.sum())
    # Buildings stand on land or vegetation, clear of water, roads and each other.
    if area == 0 or (fp & ((label == WATER) | road | buildings)).sum() > 0.05 * area:
      continue
    col = _ROOF_COLORS[rng.integers(len(_ROOF_COLORS))] + rng.normal(0, 10, 3)
    # A ridge halves the roof into a lit and a shaded side.
    c, s = np.cos(angle), np.sin(angle)
    side = ((yy[fp] - cy) * c + (xx[fp] - cx) * s) > 0
    shade = np.where(side, rng.uniform(0.8, 1.0), 1.0)[..., None]
    roof[fp] = col * shade
    buildings |= fp
    shadow |= _shift(fp, sdy, sdx)
  shadow &= ~buildings
  img[shadow] *= rng.uniform(0.35, 0.6)
  units = (_noise(rng, h, w, 1.5 * scale) > 0.6) & buildings
  roof[units] += 40
  img[buildings] = roof[buildings]
  label[buildings] = BUILDING


def _add_pools(rng, img, label, yy, xx, scale, base_angle):
  """Paints a few pools, on land only, into `img` and `label` as water."""
  h, w = label.shape
  for _ in range(int(rng.integers(0, 4))):
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    pool = _rotated_rect(yy, xx, cy, cx, rng.uniform(2, 5) * scale,
                         rng.uniform(3, 7) * scale, base_angle)
    pool &= label == LAND
    img[pool] = _POOL_COLOR + rng.normal(0, 8, 3)
    label[pool] = WATER


def _add_specks(rng, img, label, yy, xx, scale):
  """Paints a few unlabeled grey specks into `img` and `label`."""
  h, w = label.shape
  # Grey is the colour of concrete roofs and roads, so colour alone cannot tell specks apart.
  for _ in range(int(rng.integers(0, 5))):
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    r = rng.uniform(1.5, 4) * scale
    speck = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    img[speck] = (155, 155, 155) + rng.normal(0, 20, 3)
    label[speck] = UNLABELED


def _illuminate(rng, img, scale):
  """Tint, smooth brightness field (clouds, vignetting), haze and sensor noise: the uint8 image."""
  h, w = img.shape[:2]
  tint = rng.uniform(0.85, 1.15) * rng.uniform(0.92, 1.08, 3)
  field = 1 + _noise(rng, h, w, 60 * scale)[..., None] * rng.uniform(0.05, 0.25)
  img = img * tint * field
  haze = rng.uniform(0, 0.3)
  img = img * (1 - haze) + haze * np.array((205, 205, 215), np.float32)
  img += rng.normal(0, rng.uniform(3, 9), (h, w, 3))
  return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def generate(seed: int, index: int, size: tuple[int, int] = (144, 256)):
  """Returns (image uint8 (H, W, 3), label uint8 (H, W)) for scene `index` of `seed`."""
  h, w = int(size[0]), int(size[1])
  if h < 8 or w < 8:
    raise ValueError(f"size must be at least (8, 8), got {size}.")
  if index < 0:
    raise ValueError(f"index must be >= 0, got {index}.")
  rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index)]))
  scale = min(h, w) / 144.0
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  label = np.full((h, w), LAND, np.uint8)
  # Every step draws from `rng` in turn, so their order fixes the scenes of a seed.
  img = _land(rng, h, w, scale)
  _add_water(rng, img, label, yy, xx, scale)
  img, crowns = _add_vegetation(rng, img, label, scale)
  base_angle, segments, road = _add_roads(rng, img, label, yy, xx, scale)
  img = _add_street_trees(rng, img, label, yy, xx, scale, segments, crowns)
  _add_buildings(rng, img, label, yy, xx, scale, base_angle, road)
  _add_pools(rng, img, label, yy, xx, scale, base_angle)
  _add_specks(rng, img, label, yy, xx, scale)
  return _illuminate(rng, img, scale), label


def generate_split(count: int, *, seed: int, offset: int = 0,
                   image_size: tuple[int, int] = (144, 256)) -> tuple[np.ndarray, np.ndarray]:
  """Scenes `[offset, offset + count)` stacked: images uint8 (N, H, W, 3), labels uint8 (N, H, W)."""
  h, w = int(image_size[0]), int(image_size[1])
  images = np.empty((count, h, w, 3), np.uint8)
  labels = np.empty((count, h, w), np.uint8)
  for i in range(count):
    images[i], labels[i] = generate(seed, offset + i, (h, w))
  return images, labels


class SyntheticSource:
  """Random-access source of synthetic scenes `[offset, offset + length)` for `seed`."""

  def __init__(self, length: int, *, seed: int, offset: int = 0,
               image_size: tuple[int, int] = (144, 256)):
    if length < 0:
      raise ValueError(f"length must be >= 0, got {length}.")
    self._length = int(length)
    self._seed = int(seed)
    self._offset = int(offset)
    self._size = (int(image_size[0]), int(image_size[1]))

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    i = int(i)
    if i < 0:
      i += self._length
    if not 0 <= i < self._length:
      raise IndexError(f"index {i} out of range for {self._length} scenes.")
    image, label = generate(self._seed, self._offset + i, self._size)
    return {"image": image, "label": label}

  def __repr__(self):
    return (f"SyntheticSource(length={self._length}, seed={self._seed}, "
            f"offset={self._offset}, image_size={self._size})")


def split_source(split: str, count: int, *, seed: int, image_size) -> SyntheticSource:
  """The `count` synthetic scenes of `split`, from that split's own index range."""
  return SyntheticSource(count, seed=seed, offset=SPLIT_OFFSETS[split], image_size=image_size)


def _generator_version() -> str:
  """Hash of this module's source: cached scenes of an older generator are not reused."""
  with open(__file__, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:16]


def _read_cached(folder: str, shape: tuple[int, ...]) -> Optional[sources.ArraySource]:
  """The arrays cached in `folder` if they are there and whole (memory-mapped), else None.

  A folder whose arrays cannot be read, or are not of `shape`, is removed (with a warning).
  """
  try:
    images = np.load(os.path.join(folder, "images.npy"), mmap_mode="r")
    labels = np.load(os.path.join(folder, "labels.npy"), mmap_mode="r")
  except FileNotFoundError:
    if os.path.isdir(folder):  # a folder without its arrays is unreadable too
      logging.warning("generating %s again: its arrays are missing", folder)
      shutil.rmtree(folder, ignore_errors=True)
    return None
  except (OSError, ValueError) as e:  # truncated or garbled files
    logging.warning("generating %s again: its cached scenes are unreadable (%s)", folder, e)
    shutil.rmtree(folder, ignore_errors=True)
    return None
  if images.shape != shape or labels.shape != shape[:3] or not (
      images.dtype == labels.dtype == np.uint8):
    logging.warning("generating %s again: it holds %s %s / %s %s, not %s uint8", folder,
                    images.dtype, images.shape, labels.dtype, labels.shape, shape)
    shutil.rmtree(folder, ignore_errors=True)
    return None
  return sources.ArraySource(images, labels)


def _write_cached(folder: str, images: np.ndarray, labels: np.ndarray) -> None:
  """Writes the arrays into `folder` atomically (a partly written folder is never seen)."""
  tmp = f"{folder}.tmp{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  np.save(os.path.join(tmp, "images.npy"), images)
  np.save(os.path.join(tmp, "labels.npy"), labels)
  try:
    os.rename(tmp, folder)
  except OSError:  # another process wrote the same scenes first
    shutil.rmtree(tmp, ignore_errors=True)


def split_arrays(split: str, count: int, *, seed: int, image_size,
                 cache_dir: str) -> sources.ArraySource:
  """The first `count` synthetic scenes of `split` in memory, generated once per `cache_dir`.

  Scenes are written to a folder of `cache_dir` named by split, seed, size, count and the
  generator's source hash, and later runs read them from there instead of generating them
  again; with `cache_dir=""` they are generated on every call.
  """
  h, w = int(image_size[0]), int(image_size[1])
  folder = None
  if cache_dir:
    name = f"{split}_seed{seed}_{h}x{w}_n{count}_{_generator_version()}"
    folder = os.path.join(os.path.expanduser(cache_dir), "synthetic_aerial", name)
    cached = _read_cached(folder, (count, h, w, 3))
    if cached is not None:
      return cached
  logging.info("generating %d synthetic %s scenes of %dx%d%s", count, split, h, w,
               f" into {folder}" if folder else "")
  images, labels = generate_split(count, seed=seed, offset=SPLIT_OFFSETS[split],
                                  image_size=(h, w))
  if folder:
    _write_cached(folder, images, labels)
  return sources.ArraySource(images, labels)


def build_dataset(c) -> sources.Dataset:
  """The `synthetic_aerial` dataset of a `data` config group, its splits in memory."""
  size = (int(c.image_size[0]), int(c.image_size[1]))
  # The statistics come from the first train scenes, so at least those are generated.
  counts = {"train": max(c.num_train, STATS_SCENES), "val": c.num_val, "test": c.num_test}
  arrays = {s: split_arrays(s, counts[s], seed=c.seed, image_size=size, cache_dir=c.cache_dir)
            for s in splits.SPLITS}
  mean, std = preprocess.mean_std(arrays["train"].images[:STATS_SCENES])
  train = arrays["train"]
  arrays["train"] = sources.ArraySource(train.images[:c.num_train], train.labels[:c.num_train])
  palette = dataclasses.replace(PALETTE, ignore_color=palettes.parse_ignore_color(c.ignore_color))
  dropped = {}
  if c.labels == "majority":
    arrays, dropped = sources.majority_labelled(arrays, len(palette.names), c.min_purity)
  return sources.Dataset(**arrays, class_names=palette.names, palette=palette,
                         ignore_index=c.ignore_index, image_size=size, mean=mean, std=std,
                         dropped=dropped)


def full_resolution_examples(c, split: str) -> Iterator[dict[str, Any]]:
  """The scenes of `split` as generated: they exist only at `c.image_size`."""
  count = {"train": c.num_train, "val": c.num_val, "test": c.num_test}[split]
  source = split_source(split, count, seed=c.seed, image_size=c.image_size)
  return ({**source[i], "name": f"{split}/{i:04d}"} for i in range(len(source)))
