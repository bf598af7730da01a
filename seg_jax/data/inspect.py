"""Prints a config's dataset: per-split counts and class shares, and an image | mask | overlay grid.

  python -m seg_jax.data.inspect                                  # configs/default.py
  python -m seg_jax.data.inspect --config=configs/dubai.py --out=docs/inspect_dubai.png
  python -m seg_jax.data.inspect --config=configs/dubai.py --config.data.prep=patches

`--config` takes any run config (`configs/*.py[:arg]`) and `--config.data.<field>=value`
overrides, exactly as `seg_jax.main` does; only its `data` group is read. Without `--out` the
grid goes to the system's temporary folder (the path is printed), never into the working
directory. A dataset that cannot be read is one line `error (data): ...` (exit code 2).
"""

from __future__ import annotations

import functools
import os
import re
import tempfile

from absl import flags
import numpy as np
from PIL import Image
from PIL import ImageDraw

from seg_jax import cli
from seg_jax import errors
from seg_jax import writers
from seg_jax.data import dataset as dataset_lib
from seg_jax.data import palettes

FLAGS = flags.FLAGS
DEFAULT_CONFIG = os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs", "default.py"))


@functools.cache
def define_flags() -> None:
  """Defines this command's flags besides --config (once per process)."""
  flags.DEFINE_integer("num_images", 4, "Train examples in the PNG grid (0: no picture).")
  flags.DEFINE_string("out", "", "PNG grid path ('': inspect_<data.name>.png in the system's "
                      "temporary folder, printed).")


def default_out(name: str) -> str:
  """Where the grid of dataset `name` goes without --out: the temporary folder, not the working
  directory (which may be a clone whose committed pictures it would replace)."""
  return os.path.join(tempfile.gettempdir(),
                      "inspect_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".png")


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
  colors = palette.colors + (palette.display_ignore_color,)
  for name, color in zip(palette.names + ("ignore",), colors):
    draw.rectangle([x, 3, x + 11, 14], fill=tuple(color), outline=(0, 0, 0))
    draw.text((x + 15, 3), name, fill=(0, 0, 0))
    x += 20 + 7 * len(name)
  return np.concatenate([grid, np.asarray(legend)], axis=0)


def main(argv) -> None:
  """Prints the counts and class shares of --config's dataset and writes the grid."""
  del argv
  c = FLAGS.config.data
  try:
    ds = dataset_lib.get_dataset(c)
  except ValueError as e:  # a folder, file or field the reader cannot use: named in `e`
    raise errors.DataError(str(e)) from e
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
  n = min(FLAGS.num_images, len(ds.train))
  if n > 0:
    out = FLAGS.out or default_out(c.name)
    step = max(len(ds.train) // n, 1)
    examples = [ds.train[i * step] for i in range(n)]
    grid = overlay_grid([dict(ex, image=ds.bands.preview(ex["image"])) for ex in examples],
                        ds.palette)
    # An adaptive 256-colour palette keeps the PNG small enough to commit.
    writers.makedirs_for(out)
    Image.fromarray(grid).quantize(256).save(out, optimize=True)
    where = "" if FLAGS.out else "; --out=FILE writes it elsewhere"
    print(f"wrote {out} ({grid.shape[1]}x{grid.shape[0]}{where})")


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, shared=["config"], config_default=DEFAULT_CONFIG)
