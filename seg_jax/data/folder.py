"""A dataset read from an images/masks folder: splits, decoding, preprocessing and statistics.

`data.name="folder"` reads any such folder with the classes of `data.palette`;
`"dubai_aerial"` is the same reader with the Dubai classes when `data.palette` is empty. Both
are registered in `seg_jax.data.dataset`; the `dubai_aerial` TFDS builder reads through here too.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Optional

from absl import logging
import numpy as np

from seg_jax import storage
from seg_jax.data import dubai
from seg_jax.data import palettes
from seg_jax.data import preprocess
from seg_jax.data import sources
from seg_jax.data import splits


def read_palette(c, default: Optional[palettes.Palette]) -> palettes.Palette:
  """Class colours of a folder dataset: `c.palette`'s JSON file, or `default` if it is ''.

  Raises:
    ValueError: `c.palette` is '' and there is no `default` (data.name="folder").
  """
  ignore_color = palettes.parse_ignore_color(c.ignore_color)
  if c.palette:
    return palettes.load_palette(c.palette, ignore_color=ignore_color)
  if default is None:
    raise ValueError("data.palette must name the JSON file of the class names and mask colours "
                     "of a folder dataset (data.name='folder'), got ''; data.name='dubai_aerial' "
                     "reads a folder with the Dubai classes.")
  return dataclasses.replace(default, ignore_color=ignore_color)


def iter_examples(pairs, c, palette: palettes.Palette, log: dubai.SkipLog,
                  ignored: list) -> Iterator[dict[str, Any]]:
  """Reads, decodes and preprocesses pairs into examples {image, label, name, tile, scale}.

  `scale` is the example's size relative to its file's (`resize_scale`; 1 for patches). Appends
  (mask path, ignored pixels, pixels) of each decoded mask to `ignored`.
  """
  for pair, image, label in dubai.read_pairs(
      pairs, log, palette=palette, ignore_index=c.ignore_index,
      max_unknown_fraction=c.max_unknown_fraction):
    ignored.append((pair.mask_path, int(np.count_nonzero(label == c.ignore_index)), label.size))
    tile = -1 if pair.tile is None else pair.tile
    if c.prep == "resize":
      im, lb = preprocess.resize_pair(image, label, c.image_size)
      yield {"image": im, "label": lb, "name": pair.name, "tile": tile,
             "scale": resize_scale(label.shape, lb.shape)}
    else:
      ims, lbs = preprocess.patchify(image, label, c.patch_size, c.patch_overlap, c.ignore_index)
      for k, (im, lb) in enumerate(zip(ims, lbs)):
        yield {"image": im, "label": lb, "name": f"{pair.name}/{k:04d}", "tile": tile,
               "scale": 1.0}


def resize_scale(original: tuple[int, int], resized: tuple[int, int]) -> float:
  """How much a resize from `original` (H, W) to `resized` scaled objects: the geometric mean of
  the height and width factors (sqrt of the area ratio), so a squeeze counts by its area."""
  return float(np.sqrt(resized[0] / original[0] * resized[1] / original[1]))


def training_scale(examples: list) -> float:
  """The median `scale` of the training examples (1 for none): the scale the model learns at,
  which prediction at the files' own size must reproduce."""
  return float(np.median([e["scale"] for e in examples])) if examples else 1.0


def split_folder(root: str, *, split: str, seed: int, log: dubai.SkipLog) -> dict[str, list]:
  """Pairs of a dataset folder assigned to splits (random_patch puts all in 'train' for later)."""
  pairs = dubai.find_pairs(root, log)
  if split == "tile":
    return splits.by_tile(pairs, [p.tile for p in pairs])
  if split == "image":
    return splits.by_random(pairs, seed)
  return {"train": pairs, "val": [], "test": []}


def check_ignored_share(ignored, *, what: str, max_ignored_fraction: float) -> None:
  """Raises a ValueError naming `what` and its most-ignored masks if too many pixels are ignored.

  `ignored` holds (mask path, ignored pixels, pixels) per mask, as `iter_examples` lists them.
  """
  if not ignored:
    return
  share = sum(n for _, n, _ in ignored) / sum(size for _, _, size in ignored)
  if share > max_ignored_fraction:
    worst = sorted(ignored, key=lambda t: -t[1] / t[2])[:3]
    names = ", ".join(f"{path} ({n / size:.0%})" for path, n, size in worst)
    raise ValueError(
        f"{share:.1%} of the mask pixels of {what} are ignored (ignore colour or unknown "
        f"colours), more than data.max_ignored_fraction={max_ignored_fraction}; most ignored: "
        f"{names}. Fix the masks or raise data.max_ignored_fraction.")


def load_folder(root: str, c, palette: palettes.Palette):
  """Reads a Dubai-layout folder into {split: list of examples} and the skipped files.

  `c` holds the reading fields of a `data` config group (split, prep, image_size, patch_size,
  patch_overlap, seed, ignore_index, on_bad_file, max_unknown_fraction, max_ignored_fraction).
  """
  if c.split == "random_patch":
    splits.warn_random_patch()
  log = dubai.SkipLog(c.on_bad_file)
  assigned = split_folder(root, split=c.split, seed=c.seed, log=log)
  ignored = {s: [] for s in splits.SPLITS}
  out = {s: list(iter_examples(assigned[s], c, palette, log, ignored[s])) for s in splits.SPLITS}
  if c.split == "random_patch":
    out = splits.by_random(out["train"], c.seed)
  if log.skipped:
    logging.warning("Skipped %d bad files under %s (on_bad_file='skip').",
                    len(log.skipped), root)
  if not out["train"]:
    raise ValueError(f"data root {root}: the train split is empty after reading.")
  for s in splits.SPLITS:
    what = f"the {s} split" if c.split != "random_patch" else f"{root} (random_patch split)"
    check_ignored_share(ignored[s], what=what, max_ignored_fraction=c.max_ignored_fraction)
  return out, tuple(log.skipped)


def train_subset(examples: list, size: int, seed: int) -> list:
  """`size` of the training `examples` drawn without replacement by `seed`, in their order
  (all of them for size 0); ValueError if there are fewer than `size`."""
  if not size:
    return examples
  if size > len(examples):
    raise ValueError(f"data.train_subset={size} but the train split holds only "
                     f"{len(examples)} examples.")
  keep = np.random.default_rng(seed).choice(len(examples), size, replace=False)
  return [examples[i] for i in sorted(keep)]


def _check_root(c, download: str) -> None:
  if not c.root or not storage.isdir(c.root):
    raise ValueError(
        f"data.root {c.root!r} is not a folder: pass --config.data.root=DIR, the dataset "
        f"folder ({dubai.LAYOUTS}){download}.")


def build_dataset(c, *, default_palette: Optional[palettes.Palette] = None,
                  download: str = "") -> sources.Dataset:
  """The folder `c.root` read, split and preprocessed into memory.

  Args:
    c: a `data` config group.
    default_palette: the classes when `c.palette` is '' (None: `c.palette` must name them).
    download: where to get the data, appended to the error for a missing `c.root`.
  """
  _check_root(c, download)
  palette = read_palette(c, default_palette)
  examples, skipped = load_folder(c.root, c, palette)
  examples["train"] = train_subset(examples["train"], c.train_subset, c.seed)
  split_sources = {s: sources.from_examples(examples[s]) for s in splits.SPLITS}
  dropped = {}
  if c.labels == "majority":
    split_sources, dropped = sources.majority_labelled(split_sources, len(palette.names),
                                                       c.min_purity)
  mean, std = preprocess.mean_std(split_sources["train"].images)
  size = preprocess.example_size(c.prep, c.image_size, c.patch_size)
  scale = training_scale(examples["train"])
  if scale != 1.0:
    logging.info("training examples show objects at %.3g of their size in the files (median over "
                 "the training images): predict whole files at that scale", scale)
  return sources.Dataset(**split_sources, class_names=palette.names, palette=palette,
                         ignore_index=c.ignore_index, image_size=tuple(int(v) for v in size),
                         mean=mean, std=std, skipped=skipped, dropped=dropped,
                         training_scale=scale)


def full_resolution_examples(c, split: str, *,
                             default_palette: Optional[palettes.Palette] = None,
                             download: str = "") -> Iterator[dict[str, Any]]:
  """The files `build_dataset` assigns to `split`, read one by one and not resized.

  Each pair goes through the same reader and checks (palette decoding, unknown colours,
  on_bad_file), stopping before the resize or patch cut; the files are listed now.
  Arguments as for `build_dataset`.
  """
  _check_root(c, download)
  log = dubai.SkipLog(c.on_bad_file)
  pairs = split_folder(c.root, split=c.split, seed=c.seed, log=log)[split]
  palette = read_palette(c, default_palette)
  read = dubai.read_pairs(pairs, log, palette=palette, ignore_index=c.ignore_index,
                          max_unknown_fraction=c.max_unknown_fraction)
  return ({"image": image, "label": label, "name": pair.name} for pair, image, label in read)
