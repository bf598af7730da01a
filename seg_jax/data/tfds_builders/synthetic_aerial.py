"""TFDS builder for the procedural aerial scenes of `seg_jax.data.synthetic`."""

from __future__ import annotations

import tensorflow_datasets as tfds

from seg_jax.data import preprocess
from seg_jax.data import splits
from seg_jax.data import synthetic
from seg_jax.data.tfds_builders import common


class SyntheticAerialConfig(tfds.core.BuilderConfig):
  """Scene size, split sizes and seed."""

  def __init__(self, *, image_size, num_train: int, num_val: int, num_test: int, seed: int,
               **kwargs):
    super().__init__(**kwargs)
    self.image_size = tuple(image_size)
    self.num_train = num_train
    self.num_val = num_val
    self.num_test = num_test
    self.seed = seed


class SyntheticAerial(tfds.core.GeneratorBasedBuilder):
  """Procedural aerial scenes in the 6 Dubai aerial classes."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "First release.", "1.1.0": "Metadata stores the ignore colour."}
  BUILDER_CONFIGS = [
      SyntheticAerialConfig(name="default", image_size=(144, 256), num_train=2048,
                            num_val=256, num_test=256, seed=0,
                            description="144x256, 2048/256/256 scenes, seed 0."),
  ]
  DEFAULT_CONFIG_NAME = "default"

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=common.features(self.builder_config.image_size),
        supervised_keys=("image", "label"),
        metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager  # Scenes are generated, nothing is downloaded.
    c = self.builder_config
    counts = {"train": c.num_train, "val": c.num_val, "test": c.num_test}
    # Statistics over the whole train split, as stored for real data; the train
    # generator adds each scene it writes.
    self._train_stats = preprocess.MeanStd()
    return {s: self._generate_examples(s, counts[s]) for s in splits.SPLITS}

  def _download_and_prepare(self, dl_manager, download_config):
    super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
    # Every split is written now; DatasetInfo (metadata.json) is saved after this returns.
    mean, std = self._train_stats.result()
    common.store_metadata(self.info, mean=mean, std=std, palette=synthetic.PALETTE,
                          ignore_index=255, skipped=(), seed=self.builder_config.seed)

  def _generate_examples(self, split: str, count: int):
    c = self.builder_config
    source = synthetic.split_source(split, count, seed=c.seed, image_size=c.image_size)
    for i in range(count):
      ex = source[i]
      if split == "train":
        self._train_stats.add(ex["image"])
      yield i, {"image": ex["image"], "label": ex["label"], "name": f"{split}/{i:06d}",
                "tile": -1}
