"""`get_dataset`: the train/val/test sources, class names, palette and statistics of a data config.

Every field of a `data` config group is documented, with its default, in configs/default.py;
the functions here read the group they are given and hold no defaults of their own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
from typing import Any, Iterator, Optional

import numpy as np

from seg_jax.data import dubai
from seg_jax.data import palettes
from seg_jax.data import preprocess
from seg_jax.data import splits
from seg_jax.data import synthetic

NAMES = ("synthetic_aerial", "dubai_aerial")
# data.name = TFDS_PREFIX + "<builder>/<config>" reads a prepared TFDS dataset from data.tfds_dir.
TFDS_PREFIX = "tfds:"
SPLIT_MODES = ("tile", "image", "random_patch")
PREPS = ("resize", "patches")
LABELS = ("pixels", "majority")
# Synthetic splits draw scenes from disjoint index ranges, so changing one
# split's size never changes another split's scenes.
SYNTHETIC_OFFSETS = {"train": 0, "val": 1 << 30, "test": 1 << 31}
# Synthetic mean/std come from the first scenes of the train split.
SYNTHETIC_STATS_SCENES = 64
DUBAI_DOWNLOAD = (
    "the Dubai aerial images are the public 'Semantic segmentation of aerial imagery' dataset "
    "by Humans in the Loop, on Kaggle: "
    "https://www.kaggle.com/datasets/humansintheloop/semantic-segmentation-of-aerial-imagery "
    "(unzip it and pass the folder holding 'Tile 1'..'Tile 8')")


class ArraySource:
  """Random-access source over in-memory uint8 arrays images (N, H, W, 3) and labels (N, H, W)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, names: Optional[list[str]] = None):
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
      raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}.")
    if labels.shape != images.shape[:3] or labels.dtype != np.uint8:
      raise ValueError(
          f"labels must be uint8 {images.shape[:3]}, got {labels.dtype} {labels.shape}.")
    self.images = images
    self.labels = labels
    self.names = list(names) if names is not None else None

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {"image": self.images[i], "label": self.labels[i]}

  def __repr__(self):
    return f"ArraySource(images={self.images.shape}, labels={self.labels.shape})"


@dataclasses.dataclass
class Dataset:
  """Train/val/test random-access sources and what a trainer needs to know about them."""

  train: Any
  val: Any
  test: Any
  class_names: tuple[str, ...]
  palette: palettes.Palette
  ignore_index: int
  image_size: tuple[int, int]
  mean: np.ndarray
  std: np.ndarray
  # (file, reason) of every file left out under on_bad_file="skip".
  skipped: tuple[tuple[str, str], ...] = ()
  # Examples left out of each split by data.labels="majority" (below data.min_purity).
  dropped: dict[str, int] = dataclasses.field(default_factory=dict)

  @property
  def num_classes(self) -> int:
    """Number of classes."""
    return len(self.class_names)


def is_tfds(name: str) -> bool:
  """Whether `data.name` names a prepared TFDS dataset ("tfds:<builder>/<config>")."""
  return name.startswith(TFDS_PREFIX)


def _check_config(c) -> None:
  if c.name not in NAMES and not (is_tfds(c.name) and c.name[len(TFDS_PREFIX):]):
    raise ValueError(f"data.name must be one of {NAMES} or '{TFDS_PREFIX}<builder>/<config>' "
                     f"(a prepared TFDS dataset), got {c.name!r}.")
  if c.split not in SPLIT_MODES:
    raise ValueError(f"data.split must be one of {SPLIT_MODES}, got {c.split!r}.")
  if c.prep not in PREPS:
    raise ValueError(f"data.prep must be one of {PREPS}, got {c.prep!r}.")
  if c.labels not in LABELS:
    raise ValueError(f"data.labels must be one of {LABELS}, got {c.labels!r}.")
  if not 0.0 < c.min_purity <= 1.0:
    raise ValueError(f"data.min_purity must be in (0, 1], got {c.min_purity}.")
  if c.labels == "majority" and is_tfds(c.name):
    raise ValueError(f"data.labels='majority' relabels examples read into memory; {c.name!r} "
                     "is a prepared TFDS dataset, read as stored: use data.name='dubai_aerial' "
                     "or 'synthetic_aerial'.")
  if len(tuple(c.image_size)) != 2 or min(c.image_size) < 8:
    raise ValueError(f"data.image_size must be (H, W) with H, W >= 8, got {c.image_size}.")
  if not 0 <= c.ignore_index <= 255:
    raise ValueError(f"data.ignore_index must be in [0, 255], got {c.ignore_index}.")
  for field in ("max_unknown_fraction", "max_ignored_fraction"):
    if not 0.0 <= c[field] <= 1.0:
      raise ValueError(f"data.{field} must be in [0, 1], got {c[field]}.")
  palettes.parse_ignore_color(c.ignore_color)
  if c.palette and c.name != "dubai_aerial":
    raise ValueError(f"data.palette names class colours of a folder dataset (data.name="
                     f"'dubai_aerial'); {c.name!r} brings its own, got {c.palette!r}.")
  if c.train_subset < 0:
    raise ValueError(f"data.train_subset must be >= 0 (0 = every training example), got "
                     f"{c.train_subset}.")
  if c.train_subset and c.name != "dubai_aerial":
    hint = ("set data.num_train instead" if c.name == "synthetic_aerial"
            else "prepare a smaller one")
    raise ValueError(f"data.train_subset={c.train_subset} takes a subset of a folder dataset "
                     f"(data.name='dubai_aerial'), not of {c.name!r}: {hint}, or leave it 0.")
  if is_tfds(c.name) and not c.tfds_dir:
    raise ValueError(f"data.tfds_dir must name the TFDS data folder of {c.name!r}, got ''.")


def folder_palette(c) -> palettes.Palette:
  """Class colours of a folder dataset: `c.palette`'s JSON file, or the Dubai colours if ''."""
  ignore_color = palettes.parse_ignore_color(c.ignore_color)
  if c.palette:
    return palettes.load_palette(c.palette, ignore_color=ignore_color)
  return dataclasses.replace(palettes.DUBAI_AERIAL, ignore_color=ignore_color)


def iter_examples(pairs, c, palette: palettes.Palette, log: dubai.SkipLog,
                  ignored: list) -> Iterator[dict[str, Any]]:
  """Reads, decodes and preprocesses pairs into examples {image, label, name, tile}.

  Appends (mask path, ignored pixels, pixels) of each decoded mask to `ignored`.
  """
  for pair, image, label in dubai.read_pairs(
      pairs, log, palette=palette, ignore_index=c.ignore_index,
      max_unknown_fraction=c.max_unknown_fraction):
    ignored.append((pair.mask_path, int(np.count_nonzero(label == c.ignore_index)), label.size))
    tile = -1 if pair.tile is None else pair.tile
    if c.prep == "resize":
      im, lb = preprocess.resize_pair(image, label, c.image_size)
      yield {"image": im, "label": lb, "name": pair.name, "tile": tile}
    else:
      ims, lbs = preprocess.patchify(image, label, c.patch_size, c.patch_overlap, c.ignore_index)
      for k, (im, lb) in enumerate(zip(ims, lbs)):
        yield {"image": im, "label": lb, "name": f"{pair.name}/{k:04d}", "tile": tile}


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


def majority_labelled(sources: dict[str, ArraySource], num_classes: int,
                      min_purity: float) -> tuple[dict[str, ArraySource], dict[str, int]]:
  """Each split as a classification set (data.labels="majority"), and the count left out of each.

  Every kept example's label map holds its majority class at every pixel
  (`preprocess.majority_classes`), so a per-pixel loss or confusion matrix counts each image
  alike; examples whose majority class covers less than `min_purity` of their pixels are left
  out, and the counts are logged.
  """
  out, dropped = {}, {}
  for split, source in sources.items():
    classes, kept = preprocess.majority_classes(source.labels, num_classes, min_purity)
    labels = np.broadcast_to(classes[kept, None, None].astype(np.uint8),
                             (int(kept.sum()), *source.labels.shape[1:]))
    names = None if source.names is None else [n for n, k in zip(source.names, kept) if k]
    out[split] = ArraySource(source.images[kept], np.ascontiguousarray(labels), names)
    dropped[split] = len(source) - len(out[split])
  logging.warning(
      "data.labels='majority': left out %s examples whose majority class covers less than "
      "data.min_purity=%g of their pixels", ", ".join(
          f"{split} {dropped[split]} of {len(sources[split])}" for split in sources), min_purity)
  return out, dropped


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


def _to_source(examples) -> ArraySource:
  if not examples:
    return ArraySource(np.zeros((0, 1, 1, 3), np.uint8), np.zeros((0, 1, 1), np.uint8), [])
  return ArraySource(np.stack([e["image"] for e in examples]),
                     np.stack([e["label"] for e in examples]),
                     [e["name"] for e in examples])


def synthetic_source(split: str, count: int, *, seed: int, image_size) -> synthetic.SyntheticSource:
  """The `count` synthetic scenes of `split`, from that split's own index range."""
  return synthetic.SyntheticSource(count, seed=seed, offset=SYNTHETIC_OFFSETS[split],
                                   image_size=image_size)


def _generator_version() -> str:
  """Hash of the scene generator's source: cached scenes of an older generator are not reused."""
  with open(synthetic.__file__, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:16]


def _read_cached(folder: str, shape: tuple[int, ...]) -> Optional[ArraySource]:
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
  return ArraySource(images, labels)


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


def synthetic_arrays(split: str, count: int, *, seed: int, image_size,
                     cache_dir: str) -> ArraySource:
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
  images, labels = synthetic.generate_split(count, seed=seed, offset=SYNTHETIC_OFFSETS[split],
                                            image_size=(h, w))
  if folder:
    _write_cached(folder, images, labels)
  return ArraySource(images, labels)


def _synthetic_dataset(c) -> Dataset:
  size = (int(c.image_size[0]), int(c.image_size[1]))
  # The statistics come from the first train scenes, so at least those are generated.
  counts = {"train": max(c.num_train, SYNTHETIC_STATS_SCENES), "val": c.num_val,
            "test": c.num_test}
  arrays = {s: synthetic_arrays(s, counts[s], seed=c.seed, image_size=size,
                                cache_dir=c.cache_dir) for s in splits.SPLITS}
  mean, std = preprocess.mean_std(arrays["train"].images[:SYNTHETIC_STATS_SCENES])
  train = arrays["train"]
  arrays["train"] = ArraySource(train.images[:c.num_train], train.labels[:c.num_train])
  palette = dataclasses.replace(synthetic.PALETTE,
                                ignore_color=palettes.parse_ignore_color(c.ignore_color))
  dropped = {}
  if c.labels == "majority":
    arrays, dropped = majority_labelled(arrays, len(palette.names), c.min_purity)
  return Dataset(**arrays, class_names=palette.names, palette=palette,
                 ignore_index=c.ignore_index, image_size=size, mean=mean, std=std,
                 dropped=dropped)


def _check_root(c) -> None:
  if not c.root or not os.path.isdir(c.root):
    raise ValueError(
        f"data.root {c.root!r} is not a folder: pass --config.data.root=DIR, the dataset "
        f"folder ('Tile N/images|masks' or 'images/' + 'masks/'); {DUBAI_DOWNLOAD}.")


def _folder_dataset(c) -> Dataset:
  _check_root(c)
  palette = folder_palette(c)
  examples, skipped = load_folder(c.root, c, palette)
  examples["train"] = train_subset(examples["train"], c.train_subset, c.seed)
  sources = {s: _to_source(examples[s]) for s in splits.SPLITS}
  dropped = {}
  if c.labels == "majority":
    sources, dropped = majority_labelled(sources, len(palette.names), c.min_purity)
  mean, std = preprocess.mean_std(sources["train"].images)
  size = preprocess.example_size(c.prep, c.image_size, c.patch_size)
  return Dataset(**sources, class_names=palette.names, palette=palette,
                 ignore_index=c.ignore_index, image_size=tuple(int(v) for v in size),
                 mean=mean, std=std, skipped=skipped, dropped=dropped)


def _tfds_dataset(c) -> Dataset:
  # TFDS is imported only for tfds: names; its builders import this module.
  from seg_jax.data.tfds_builders import common  # pylint: disable=g-import-not-at-top
  ds = common.load_prepared(c.name[len(TFDS_PREFIX):], os.path.expanduser(c.tfds_dir))
  if ds.ignore_index != c.ignore_index:
    raise ValueError(f"data.ignore_index={c.ignore_index} but {c.name!r} was prepared with "
                     f"ignore_index={ds.ignore_index}.")
  return ds


def full_resolution_examples(c, split: str) -> Iterator[dict[str, Any]]:
  """The examples {image, label, name} of `split` at their original size, nothing resized.

  A folder dataset lists the split's files as `get_dataset` assigns them and reads each pair
  with the same reader and checks (palette decoding, unknown colours, on_bad_file), stopping
  before the resize or patch cut: image uint8 (H, W, 3) and label uint8 (H, W) at the file's
  size. Synthetic scenes exist only at `data.image_size`, so they come as generated. The
  files are listed now and read one by one as the iterator advances.
  Raises:
    ValueError: a TFDS dataset (prepared already resized or cut), a random_patch split (its
      splits hold patches, not images), majority labels (one class per example, not per pixel
      of an image), or a config or folder `get_dataset` refuses.
  """
  _check_config(c)
  if c.labels == "majority":
    raise ValueError("data.labels='majority' gives each example one class; full-resolution "
                     "evaluation scores the per-pixel labels of whole images, which such a "
                     "model does not predict: evaluate at eval.resolution='training'.")
  if split not in splits.SPLITS:
    raise ValueError(f"split must be one of {splits.SPLITS}, got {split!r}.")
  if is_tfds(c.name):
    raise ValueError(f"data.name {c.name!r} is a prepared TFDS dataset, stored already "
                     "resized or cut into patches: full-resolution evaluation reads the original "
                     "files, so point data.name='dubai_aerial' and data.root at their folder.")
  if c.split == "random_patch":
    raise ValueError("data.split='random_patch' assigns patches, not whole images, to the "
                     "splits: full-resolution evaluation needs data.split='tile' or 'image'.")
  if c.name == "synthetic_aerial":
    count = {"train": c.num_train, "val": c.num_val, "test": c.num_test}[split]
    source = synthetic_source(split, count, seed=c.seed, image_size=c.image_size)
    return ({**source[i], "name": f"{split}/{i:04d}"} for i in range(len(source)))
  _check_root(c)
  log = dubai.SkipLog(c.on_bad_file)
  pairs = split_folder(c.root, split=c.split, seed=c.seed, log=log)[split]
  read = dubai.read_pairs(pairs, log, palette=folder_palette(c), ignore_index=c.ignore_index,
                          max_unknown_fraction=c.max_unknown_fraction)
  return ({"image": image, "label": label, "name": pair.name} for pair, image, label in read)


def get_dataset(config) -> Dataset:
  """Builds the dataset a `data` config group describes (its fields: configs/default.py).

  Synthetic scenes are generated into memory once (and kept in `data.cache_dir` for later
  runs); a folder (`dubai_aerial`) is read, decoded and
  preprocessed into memory; a prepared TFDS dataset (`tfds:...`) is read from its
  array_record files. The size, split and palette of a TFDS dataset were fixed when it was
  prepared (`python -m seg_jax.data.prepare`), so those fields are not read for it.
  """
  _check_config(config)
  if is_tfds(config.name):
    return _tfds_dataset(config)
  if config.name == "synthetic_aerial":
    return _synthetic_dataset(config)
  return _folder_dataset(config)
