"""Prints per-split counts and class histograms of a dataset and writes an image | mask | overlay grid.

  python -m seg_jax.data.inspect --name=synthetic_aerial --out=docs/inspect_synthetic.png
  python -m seg_jax.data.inspect --name=dubai_aerial --root=../shared/data/dubai_aerial \
      --out=docs/inspect_dubai.png
"""

from __future__ import annotations

from absl import app
from absl import flags
import numpy as np
from PIL import Image
from PIL import ImageDraw

from seg_jax.data import dataset as dataset_lib
from seg_jax.data import palettes

_NAME = flags.DEFINE_enum("name", "synthetic_aerial", list(dataset_lib.NAMES), "Dataset.")
_ROOT = flags.DEFINE_string("root", "", "Dataset folder (dubai_aerial).")
_SPLIT = flags.DEFINE_enum("split", "tile", list(dataset_lib.SPLIT_MODES), "Split mode.")
_PREP = flags.DEFINE_enum("prep", "resize", list(dataset_lib.PREPS), "Preprocessing.")
_IMAGE_SIZE = flags.DEFINE_list("image_size", ["144", "256"], "H,W for prep=resize.")
_PATCH_SIZE = flags.DEFINE_integer("patch_size", 256, "Patch size for prep=patches.")
_PATCH_OVERLAP = flags.DEFINE_integer("patch_overlap", 0, "Patch overlap for prep=patches.")
_NUM = flags.DEFINE_list("num", ["256", "64", "64"], "Synthetic train,val,test counts.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")
_ON_BAD_FILE = flags.DEFINE_enum("on_bad_file", "error", ["error", "skip"], "Bad files.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 4, "Rows of the PNG grid.")
_OUT = flags.DEFINE_string("out", "", "PNG grid path ('' to skip).")


def class_histogram(source, num_classes: int) -> np.ndarray:
  """Pixel counts per class of a source; values >= `num_classes` (ignored) share the last slot."""
  counts = np.zeros(num_classes + 1, np.int64)
  for i in range(len(source)):
    b = np.bincount(np.asarray(source[i]["label"]).ravel(), minlength=256)
    counts[:num_classes] += b[:num_classes]
    counts[num_classes] += b.sum() - b[:num_classes].sum()
  return counts


def overlay_grid(examples, palette: palettes.Palette, alpha: float = 0.5) -> np.ndarray:
  """Rows of image | colour mask | blend, followed by a legend of class colours."""
  rows = []
  for ex in examples:
    image = np.asarray(ex["image"], np.uint8)
    mask = palettes.encode_mask(np.asarray(ex["label"]), palette)
    blend = (image * (1 - alpha) + mask * alpha).astype(np.uint8)
    gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
    rows.append(np.concatenate([image, gap, mask, gap, blend], axis=1))
    rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
  grid = np.concatenate(rows, axis=0)
  legend = Image.new("RGB", (grid.shape[1], 18), (255, 255, 255))
  draw = ImageDraw.Draw(legend)
  x = 4
  for name, color in zip(palette.names + ("ignore",), palette.colors + (palette.ignore_color,)):
    draw.rectangle([x, 3, x + 11, 14], fill=tuple(color), outline=(0, 0, 0))
    draw.text((x + 15, 3), name, fill=(0, 0, 0))
    x += 20 + 7 * len(name)
  return np.concatenate([grid, np.asarray(legend)], axis=0)


def main(argv):
  del argv
  c = dataset_lib.default_data_config()
  c.name = _NAME.value
  c.root = _ROOT.value
  c.split = _SPLIT.value
  c.prep = _PREP.value
  c.image_size = tuple(int(v) for v in _IMAGE_SIZE.value)
  c.patch_size = _PATCH_SIZE.value
  c.patch_overlap = _PATCH_OVERLAP.value
  c.num_train, c.num_val, c.num_test = (int(v) for v in _NUM.value)
  c.seed = _SEED.value
  c.on_bad_file = _ON_BAD_FILE.value
  ds = dataset_lib.get_dataset(c)
  names = ds.class_names + ("ignore",)
  print(f"{c.name}: image_size={ds.image_size} classes={len(ds.class_names)} "
        f"mean={[round(float(v), 2) for v in ds.mean]} "
        f"std={[round(float(v), 2) for v in ds.std]}")
  if ds.skipped:
    print(f"skipped {len(ds.skipped)} files:")
    for path, reason in ds.skipped:
      print(f"  {path}: {reason}")
  print(f"{'split':6s} {'count':>6s} " + " ".join(f"{n[:10]:>10s}" for n in names))
  for split in ("train", "val", "test"):
    source = getattr(ds, split)
    counts = class_histogram(source, len(ds.class_names))
    share = 100.0 * counts / max(counts.sum(), 1)
    print(f"{split:6s} {len(source):6d} " + " ".join(f"{s:9.2f}%" for s in share))
  if _OUT.value:
    n = min(_NUM_IMAGES.value, len(ds.train))
    step = max(len(ds.train) // max(n, 1), 1)
    grid = overlay_grid([ds.train[i * step] for i in range(n)], ds.palette)
    # An adaptive 256-colour palette keeps the PNG small enough to commit.
    Image.fromarray(grid).quantize(256).save(_OUT.value, optimize=True)
    print(f"wrote {_OUT.value} ({grid.shape[1]}x{grid.shape[0]})")


if __name__ == "__main__":
  app.run(main)
