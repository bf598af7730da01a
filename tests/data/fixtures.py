"""Data configs from configs/default.py and small Dubai-layout folders in a temporary directory."""

import os

import ml_collections
import numpy as np
from PIL import Image

from configs import default as default_config
from seg_jax.data import palettes

PALETTE = palettes.DUBAI_AERIAL
SHARED_DUBAI = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data",
                            "dubai_aerial")


def data_config(**fields) -> ml_collections.ConfigDict:
  """configs/default.py's `data` group, locked, with `fields` changed."""
  c = default_config.get_config().data
  c.lock()
  for k, v in fields.items():
    c[k] = v
  return c


def random_label(rng, h, w, with_black=True):
  """Blocky label map over the 6 classes, 255 where the mask is black."""
  coarse = rng.integers(0, 6, (h // 8 + 1, w // 8 + 1))
  label = np.repeat(np.repeat(coarse, 8, 0), 8, 1)[:h, :w].astype(np.uint8)
  if with_black:
    label[rng.random((h, w)) < 0.02] = 255
  return label


def save_mask(path, label, mode):
  """Saves a label map as an RGB or palette ('P') PNG with the Dubai colours."""
  if mode == "RGB":
    Image.fromarray(palettes.encode_mask(label, PALETTE)).save(path)
    return
  # Palette index 6 is black; it is also what decodes to ignore.
  flat = [v for c in PALETTE.colors for v in c] + [0, 0, 0]
  idx = np.where(label == 255, 6, label).astype(np.uint8)
  im = Image.fromarray(idx, mode="P")
  im.putpalette(flat + [0] * (768 - len(flat)))
  im.save(path)


def write_pair(folder_images, folder_masks, name, rng, size, mode="RGB"):
  """Writes a random PNG image and its mask; returns (image, label)."""
  h, w = size
  label = random_label(rng, h, w)
  image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  os.makedirs(folder_images, exist_ok=True)
  os.makedirs(folder_masks, exist_ok=True)
  Image.fromarray(image).save(os.path.join(folder_images, name + ".png"))
  save_mask(os.path.join(folder_masks, name + ".png"), label, mode)
  return image, label


def make_tile_layout(root, tiles=(1, 2, 3), per_tile=2, seed=0):
  """Tiles 1..3 with `per_tile` pairs each; tile 2 uses palette masks. Returns {name: (image, label)}."""
  rng = np.random.default_rng(seed)
  out = {}
  for t in tiles:
    for i in range(per_tile):
      name = f"image_part_{i + 1:03d}"
      size = (40 + 3 * t + i, 56 + 2 * i)
      out[f"tile{t}/{name}"] = write_pair(
          os.path.join(root, f"Tile {t}", "images"), os.path.join(root, f"Tile {t}", "masks"),
          name, rng, size, mode="P" if t == 2 else "RGB")
  return out


def make_flat_layout(root, n=8, seed=0):
  """A flat images/ + masks/ folder with `n` pairs. Returns {name: (image, label)}."""
  rng = np.random.default_rng(seed)
  return {f"img{i}": write_pair(os.path.join(root, "images"), os.path.join(root, "masks"),
                                f"img{i}", rng, (36, 44), mode="P" if i % 2 else "RGB")
          for i in range(n)}
