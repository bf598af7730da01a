"""`get_dataset`: the train/val/test sources, class names, palette and statistics of a data config.

`DATASETS` is the registry of every `data.name`: the builder of each and the fields of the
`data` group it reads. Every field of a `data` config group is documented, with its default, in
configs/default.py; the builders read the group they are given and hold no defaults of their own.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Any, Callable, Iterator, Optional

from seg_jax import storage
from seg_jax.data import folder
from seg_jax.data import palettes
from seg_jax.data import preprocess
from seg_jax.data import raster_dataset
from seg_jax.data import sources
from seg_jax.data import splits
from seg_jax.data import synthetic

# data.name = TFDS_PREFIX + "<builder>/<config>" reads a prepared TFDS dataset from data.tfds_dir.
TFDS_PREFIX = "tfds:"
SPLIT_MODES = ("tile", "image", "random_patch")
LABELS = ("pixels", "majority")
DUBAI_DOWNLOAD = (
    "the Dubai aerial images are the public 'Semantic segmentation of aerial imagery' dataset "
    "by Humans in the Loop, on Kaggle: "
    "https://www.kaggle.com/datasets/humansintheloop/semantic-segmentation-of-aerial-imagery "
    "(unzip it and pass the folder holding 'Tile 1'..'Tile 8')")


@dataclasses.dataclass(frozen=True)
class Builder:
  """How `get_dataset` builds one `data.name`, and the fields of the `data` group it reads."""

  build: Callable[[Any], sources.Dataset]
  # `full_resolution_examples` of a split; None where only preprocessed examples are stored.
  full_resolution: Optional[Callable[[Any, str], Iterator[dict[str, Any]]]]
  fields: tuple[str, ...]
  # Whether full-resolution examples are scenes read window by window ({"scene", "name"}),
  # not arrays ({"image", "label", "name"}).
  scenes: bool = False


def _tfds_dataset(c) -> sources.Dataset:
  # tensorflow_datasets is slow to import, so only tfds: names import it.
  from seg_jax.data.tfds_builders import common  # pylint: disable=g-import-not-at-top
  name, data_dir, cache_dir = c.name[len(TFDS_PREFIX):], c.tfds_dir, c.cache_dir
  if storage.is_url(data_dir):
    # array_record reads local files only: the prepared dataset (its builder/config folder) is
    # copied once into data.cache_dir, and again where a file changed size.
    prepared = name.split(":")[0]
    local = os.path.join(os.path.expanduser(cache_dir), "tfds",
                         re.sub(r"[^\w.-]+", "_", data_dir))
    storage.mirror(storage.join(data_dir, prepared), os.path.join(local, *prepared.split("/")))
    data_dir = local
  ds = common.load_prepared(name, os.path.expanduser(data_dir))
  if ds.ignore_index != c.ignore_index:
    raise ValueError(f"data.ignore_index={c.ignore_index} but {c.name!r} was prepared with "
                     f"ignore_index={ds.ignore_index}.")
  return ds


def _folder(**options) -> Builder:
  """A folder dataset (`folder.build_dataset`) with `options` (default palette, download hint)."""
  return Builder(
      functools.partial(folder.build_dataset, **options),
      functools.partial(folder.full_resolution_examples, **options),
      fields=("root", "palette", "ignore_color", "split", "prep", "image_size", "patch_size",
              "patch_overlap", "seed", "train_subset", "ignore_index", "on_bad_file",
              "max_unknown_fraction", "max_ignored_fraction", "labels", "min_purity"))


# Every data.name; TFDS_PREFIX stands for all "tfds:<builder>/<config>" names. The `fields` are
# those the builder reads; `get_dataset` refuses a set data.palette or data.train_subset for
# a name that does not read it.
DATASETS: dict[str, Builder] = {
    # Procedural scenes (seg_jax.data.synthetic), generated once into data.cache_dir.
    "synthetic_aerial": Builder(
        synthetic.build_dataset, synthetic.full_resolution_examples,
        fields=("image_size", "num_train", "num_val", "num_test", "seed", "cache_dir",
                "ignore_color", "ignore_index", "labels", "min_purity")),
    # Any images/masks folder ('Tile N/images|masks' or 'images/' + 'masks/'); data.palette
    # names its classes.
    "folder": _folder(),
    # A folder with the Dubai classes and colours unless data.palette names others.
    "dubai_aerial": _folder(default_palette=palettes.DUBAI_AERIAL,
                            download="; " + DUBAI_DOWNLOAD),
    # Image and mask rasters (seg_jax.data.raster_dataset): any band count and type, nodata,
    # read window by window; data.palette names the classes.
    "raster": Builder(
        raster_dataset.build_dataset, raster_dataset.full_resolution_examples,
        fields=("root", "palette", "ignore_color", "split", "seed", "prep", "patch_size",
                "patch_overlap", "windows_per_epoch", "ignore_index", "on_bad_file",
                "max_unknown_fraction", "bands", "rgb_bands", "nodata", "mask_nodata", "scale"),
        scenes=True),
    # A prepared TFDS dataset: size, split and palette were fixed by seg_jax.data.prepare.
    TFDS_PREFIX: Builder(_tfds_dataset, None,
                         fields=("name", "tfds_dir", "ignore_index", "cache_dir")),
}
# The names a config may hold as they are; tfds: names add "<builder>/<config>".
NAMES = tuple(name for name in DATASETS if name != TFDS_PREFIX)


def is_tfds(name: str) -> bool:
  """Whether `data.name` names a prepared TFDS dataset ("tfds:<builder>/<config>")."""
  return name.startswith(TFDS_PREFIX)


def builder(name: str) -> Builder:
  """The registry entry of `data.name`; ValueError naming the choices if there is none."""
  if is_tfds(name) and name[len(TFDS_PREFIX):]:
    return DATASETS[TFDS_PREFIX]
  if name in NAMES:
    return DATASETS[name]
  raise ValueError(f"data.name must be one of {NAMES} or '{TFDS_PREFIX}<builder>/<config>' "
                   f"(a prepared TFDS dataset), got {name!r}.")


def _readers(field: str) -> str:
  """The names whose builders read `field`, for an error message."""
  return " or ".join(repr(n) for n in NAMES if field in DATASETS[n].fields)


def _check_config(c) -> Builder:
  """Checks the fields of a `data` group and returns the builder of its name."""
  entry = builder(c.name)
  if c.split not in SPLIT_MODES:
    raise ValueError(f"data.split must be one of {SPLIT_MODES}, got {c.split!r}.")
  if c.prep not in preprocess.PREPS:
    raise ValueError(f"data.prep must be one of {preprocess.PREPS}, got {c.prep!r}.")
  if c.prep == "windows" and "windows_per_epoch" not in entry.fields:
    raise ValueError(f"data.prep='windows' draws random windows from rasters (data.name="
                     f"{_readers('windows_per_epoch')}), not from {c.name!r}.")
  if c.labels not in LABELS:
    raise ValueError(f"data.labels must be one of {LABELS}, got {c.labels!r}.")
  if not 0.0 < c.min_purity <= 1.0:
    raise ValueError(f"data.min_purity must be in (0, 1], got {c.min_purity}.")
  if c.labels == "majority" and "labels" not in entry.fields:
    raise ValueError(f"data.labels='majority' relabels examples read into memory; {c.name!r} "
                     "is read as stored (a prepared TFDS dataset): use data.name="
                     f"{_readers('labels')}.")
  if len(tuple(c.image_size)) != 2 or min(c.image_size) < 8:
    raise ValueError(f"data.image_size must be (H, W) with H, W >= 8, got {c.image_size}.")
  if not 0 <= c.ignore_index <= 255:
    raise ValueError(f"data.ignore_index must be in [0, 255], got {c.ignore_index}.")
  for field in ("max_unknown_fraction", "max_ignored_fraction"):
    if not 0.0 <= c[field] <= 1.0:
      raise ValueError(f"data.{field} must be in [0, 1], got {c[field]}.")
  palettes.parse_ignore_color(c.ignore_color)
  if c.palette and "palette" not in entry.fields:
    raise ValueError(f"data.palette names class colours of a folder dataset (data.name="
                     f"{_readers('palette')}); {c.name!r} brings its own, got {c.palette!r}.")
  if c.train_subset < 0:
    raise ValueError(f"data.train_subset must be >= 0 (0 = every training example), got "
                     f"{c.train_subset}.")
  if c.train_subset and "train_subset" not in entry.fields:
    hint = ("set data.num_train instead" if "num_train" in entry.fields
            else "prepare a smaller one")
    raise ValueError(f"data.train_subset={c.train_subset} takes a subset of a folder dataset "
                     f"(data.name={_readers('train_subset')}), not of {c.name!r}: {hint}, or "
                     "leave it 0.")
  if is_tfds(c.name) and not c.tfds_dir:
    raise ValueError(f"data.tfds_dir must name the TFDS data folder of {c.name!r}, got ''.")
  return entry


def full_resolution_examples(c, split: str) -> Iterator[dict[str, Any]]:
  """The examples {image, label, name} of `split` at their original size, nothing resized.

  A folder dataset lists the split's files as `get_dataset` assigns them and reads each pair
  with the same reader and checks (palette decoding, unknown colours, on_bad_file), stopping
  before the resize or patch cut: image uint8 (H, W, 3) and label uint8 (H, W) at the file's
  size. Synthetic scenes exist only at `data.image_size`, so they come as generated. The
  files are listed now and read one by one as the iterator advances. A raster dataset (a
  `Builder` with `scenes`) gives {scene, name} instead: `windows.Scene`s read window by window.
  Raises:
    ValueError: a TFDS dataset (prepared already resized or cut), a random_patch split (its
      splits hold patches, not images), majority labels (one class per example, not per pixel
      of an image), or a config or folder `get_dataset` refuses.
  """
  entry = _check_config(c)
  if c.labels == "majority":
    raise ValueError("data.labels='majority' gives each example one class; full-resolution "
                     "evaluation scores the per-pixel labels of whole images, which such a "
                     "model does not predict: evaluate at eval.resolution='training'.")
  if split not in splits.SPLITS:
    raise ValueError(f"split must be one of {splits.SPLITS}, got {split!r}.")
  if entry.full_resolution is None:
    raise ValueError(f"data.name {c.name!r} is a prepared TFDS dataset, stored already "
                     "resized or cut into patches: full-resolution evaluation reads the original "
                     "files, so point data.name='dubai_aerial' and data.root at their folder.")
  if c.split == "random_patch":
    raise ValueError("data.split='random_patch' assigns patches, not whole images, to the "
                     "splits: full-resolution evaluation needs data.split='tile' or 'image'.")
  return entry.full_resolution(c, split)


def get_dataset(config) -> sources.Dataset:
  """Builds the dataset a `data` config group describes (its fields: configs/default.py).

  The builder is `DATASETS`'s entry of `config.name`. Synthetic scenes are generated into
  memory once (and kept in `data.cache_dir` for later runs); a folder (`folder`,
  `dubai_aerial`) is read, decoded and preprocessed into memory; a prepared TFDS dataset
  (`tfds:...`) is read from its array_record files. The size, split and palette of a TFDS dataset were fixed when it was
  prepared (`python -m seg_jax.data.prepare`), so those fields are not read for it.
  """
  return _check_config(config).build(config)
