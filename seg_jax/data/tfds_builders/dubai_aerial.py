"""TFDS builder for the Dubai aerial imagery (manual_dir = the folder with `Tile N/`)."""

from __future__ import annotations

import tensorflow_datasets as tfds

from seg_jax.data import folder
from seg_jax.data import palettes
from seg_jax.data import preprocess
from seg_jax.data import splits
from seg_jax.data.tfds_builders import common


# How both registered variants read the folder: the fields of a `data` config group that
# decide which pixels and files are kept (see configs/default.py).
READING = dict(split="tile", seed=0, ignore_index=255, palette="", ignore_color="#000000",
               on_bad_file="error", max_unknown_fraction=0.01, max_ignored_fraction=0.25)


class DubaiAerialConfig(tfds.core.BuilderConfig):
  """How images are preprocessed, split and decoded; fields named as in a `data` config group."""

  def __init__(self, *, prep: str, image_size, patch_size: int, patch_overlap: int,
               split: str, seed: int, ignore_index: int, palette: str, ignore_color: str,
               on_bad_file: str, max_unknown_fraction: float, max_ignored_fraction: float,
               **kwargs):
    super().__init__(**kwargs)
    if prep not in preprocess.PREPS:
      raise ValueError(f"prep must be one of {preprocess.PREPS}, got {prep!r}.")
    self.prep = prep
    self.image_size = tuple(image_size)
    self.patch_size = patch_size
    self.patch_overlap = patch_overlap
    self.split = split
    self.seed = seed
    self.ignore_index = ignore_index
    self.palette = palette
    self.ignore_color = ignore_color
    self.on_bad_file = on_bad_file
    self.max_unknown_fraction = max_unknown_fraction
    self.max_ignored_fraction = max_ignored_fraction

  @property
  def example_size(self) -> tuple[int, int]:
    """(H, W) of every stored example."""
    return preprocess.example_size(self.prep, self.image_size, self.patch_size)


class DubaiAerial(tfds.core.GeneratorBasedBuilder):
  """Semantic segmentation of aerial imagery of Dubai: 72 images, 6 classes, 8 tiles."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Tile split, true mask colours, black pixels ignored.",
      "1.1.0": "Metadata stores the ignore colour; masks without a labelled pixel refused.",
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download 'Semantic segmentation of aerial imagery' (Humans in the Loop, on Kaggle) and "
      "point manual_dir at the unzipped folder holding 'Tile 1' .. 'Tile 8' (each with "
      "images/ and masks/) or at a flat images/ + masks/ folder.")
  BUILDER_CONFIGS = [
      DubaiAerialConfig(name="resized_144x256", prep="resize", image_size=(144, 256),
                        patch_size=256, patch_overlap=0, **READING,
                        description="Whole images resized to 144x256; split by tile."),
      DubaiAerialConfig(name="patches_256", prep="patches", image_size=(144, 256),
                        patch_size=256, patch_overlap=0, **READING,
                        description="Full-resolution 256x256 patches; split by tile."),
  ]
  DEFAULT_CONFIG_NAME = "resized_144x256"

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=common.features(self.builder_config.example_size),
        supervised_keys=("image", "label"),
        metadata=tfds.core.MetadataDict(),
        homepage=("https://www.kaggle.com/datasets/humansintheloop/"
                  "semantic-segmentation-of-aerial-imagery"),
        license="CC0 1.0")

  def _split_generators(self, dl_manager):
    c = self.builder_config
    palette = folder.read_palette(c, palettes.DUBAI_AERIAL)
    examples, skipped = folder.load_folder(str(dl_manager.manual_dir), c, palette)
    mean, std = preprocess.mean_std(e["image"] for e in examples["train"])
    common.store_metadata(
        self.info, mean=mean, std=std, palette=palette,
        ignore_index=c.ignore_index, split=c.split,
        tile_splits={k: list(v) for k, v in splits.DUBAI_TILE_SPLITS.items()},
        skipped=skipped, training_scale=folder.training_scale(examples["train"]))
    return {s: self._generate_examples(examples[s]) for s in splits.SPLITS}

  def _generate_examples(self, examples):
    for e in examples:
      yield e["name"], {k: e[k] for k in ("image", "label", "name", "tile")}
