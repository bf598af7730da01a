"""Tests of the dataset registry: every data.name builds and reads exactly the fields it lists."""

import json
import os
import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from seg_jax import data
from seg_jax.data import dataset
from seg_jax.data import palettes
from seg_jax.data import tfds_builders
from tests.data import fixtures
from tests.data import raster_fixtures

# Every key of dataset.DATASETS; test_every_registered_name_is_tested keeps this complete.
NAMES = ("synthetic_aerial", "folder", "dubai_aerial", "raster", dataset.TFDS_PREFIX)


class _Recorder:
  """A `data` group that records the names of the fields read from it."""

  def __init__(self, config):
    self._config = config
    self.read = set()

  def __getattr__(self, field):
    self.read.add(field)
    return getattr(self._config, field)

  __getitem__ = __getattr__


class RegistryTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.root = os.path.join(cls.tmp, "tiles")
    fixtures.make_tile_layout(cls.root)
    cls.palette = os.path.join(cls.tmp, "classes.json")
    with open(cls.palette, "w") as f:
      json.dump(palettes.DUBAI_AERIAL.to_dict(), f)
    cls.rasters = os.path.join(cls.tmp, "rasters")
    rng = np.random.default_rng(0)
    for n in range(8):  # 3-band uint8 rasters, so every name gives the same kind of example
      image, label = raster_fixtures.scene(rng, bands=3, dtype="uint8", size=(16, 16))
      raster_fixtures.write(os.path.join(cls.rasters, "images", f"{n}.tif"), image)
      raster_fixtures.write(os.path.join(cls.rasters, "masks", f"{n}.tif"), label)
    cls.tfds_dir = os.path.join(cls.tmp, "tfds")
    tfds_builders.SyntheticAerial(
        config=tfds_builders.SyntheticAerialConfig(
            name="tiny", image_size=(16, 16), num_train=2, num_val=1, num_test=1, seed=0),
        data_dir=cls.tfds_dir, file_format="array_record").download_and_prepare()

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def _config(self, key, **fields):
    """A data group of registry entry `key` that makes its builder read every field it can."""
    majority = dict(labels="majority", min_purity=0.3)
    folder = dict(root=self.root, prep="patches", patch_size=16, **majority)
    per_name = {
        "synthetic_aerial": dict(image_size=(16, 16), num_train=4, num_val=2, num_test=2,
                                 cache_dir=os.path.join(self.tmp, "cache"), **majority),
        "folder": dict(palette=self.palette, **folder),
        "dubai_aerial": folder,
        "raster": dict(root=self.rasters, palette=self.palette, split="image", prep="windows",
                       patch_size=16, windows_per_epoch=4),
        dataset.TFDS_PREFIX: dict(name="tfds:synthetic_aerial/tiny", tfds_dir=self.tfds_dir),
    }[key]
    return fixtures.data_config(**{"name": key, **per_name, **fields})

  def test_every_registered_name_is_tested(self):
    self.assertCountEqual(NAMES, dataset.DATASETS)
    self.assertCountEqual(data.DATASETS, dataset.DATASETS)

  @parameterized.parameters(*NAMES)
  def test_builds_and_reads_exactly_its_fields(self, key):
    c = self._config(key)
    ds = data.get_dataset(c)
    self.assertEqual(ds.class_names, palettes.DUBAI_AERIAL.names)
    self.assertGreater(len(ds.train), 0)
    self.assertEqual(ds.train[0]["image"].shape, (*ds.image_size, 3))
    self.assertEqual(ds.train[0]["image"].dtype, np.uint8)
    recorder = _Recorder(c)
    dataset.builder(c.name).build(recorder)
    self.assertCountEqual(recorder.read, dataset.DATASETS[key].fields)

  @parameterized.parameters(*NAMES)
  def test_full_resolution_examples_read_only_listed_fields(self, key):
    c = self._config(key, labels="pixels")
    entry = dataset.builder(c.name)
    if entry.full_resolution is None:
      with self.assertRaisesRegex(ValueError, "prepared TFDS dataset"):
        data.full_resolution_examples(c, "val")
      return
    examples = list(data.full_resolution_examples(c, "val"))
    self.assertNotEmpty(examples)
    recorder = _Recorder(c)
    list(entry.full_resolution(recorder, "val"))
    self.assertContainsSubset(recorder.read, entry.fields)

  def test_folder_is_dubai_aerial_with_its_palette_named(self):
    dubai = data.get_dataset(self._config("dubai_aerial", prep="resize", labels="pixels"))
    folder = data.get_dataset(self._config("folder", prep="resize", labels="pixels"))
    self.assertEqual(folder.palette, dubai.palette)
    for split in ("train", "val", "test"):
      self.assertEqual(getattr(folder, split).names, getattr(dubai, split).names)
      np.testing.assert_array_equal(getattr(folder, split).images, getattr(dubai, split).images)
      np.testing.assert_array_equal(getattr(folder, split).labels, getattr(dubai, split).labels)
    np.testing.assert_array_equal(folder.mean, dubai.mean)
    np.testing.assert_array_equal(folder.std, dubai.std)

  def test_folder_needs_a_palette(self):
    c = self._config("folder", palette="")
    with self.assertRaisesRegex(ValueError, "data.palette must name .*data.name='folder'"):
      data.get_dataset(c)
    with self.assertRaisesRegex(ValueError, "data.palette must name .*data.name='folder'"):
      list(data.full_resolution_examples(self._config("folder", palette="", labels="pixels"),
                                         "val"))

  def test_missing_root_hints_at_the_download_of_dubai_aerial_only(self):
    for key, download in (("dubai_aerial", True), ("folder", False)):
      with self.subTest(key), self.assertRaisesRegex(ValueError, "data.root") as raised:
        data.get_dataset(self._config(key, root=os.path.join(self.tmp, "nope")))
      self.assertEqual("kaggle.com" in str(raised.exception), download)

  @parameterized.parameters("nope", "tfds:", "folders")
  def test_unknown_name_lists_the_registered_ones(self, name):
    with self.assertRaisesRegex(
        ValueError, r"data.name must be one of \('synthetic_aerial', 'folder', 'dubai_aerial', "
        r"'raster'\) "
        r"or 'tfds:<builder>/<config>'"):
      data.get_dataset(fixtures.data_config(name=name))

  @parameterized.parameters(
      ("synthetic_aerial", dict(palette="p.json"), "data.palette"),
      ("synthetic_aerial", dict(train_subset=2), "train_subset=2 .*data.num_train"),
      (dataset.TFDS_PREFIX, dict(train_subset=2), "train_subset=2 .*prepare a smaller one"),
      (dataset.TFDS_PREFIX, dict(labels="majority"), "read as stored.*'dubai_aerial'"))
  def test_fields_a_name_does_not_read_are_refused(self, key, fields, message):
    with self.assertRaisesRegex(ValueError, message):
      data.get_dataset(self._config(key, **fields))

  def test_folder_takes_a_train_subset(self):
    ds = data.get_dataset(self._config("folder", prep="resize", labels="pixels", split="image",
                                       train_subset=2))
    self.assertLen(ds.train, 2)


if __name__ == "__main__":
  absltest.main()
