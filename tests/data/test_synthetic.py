"""Tests of the synthetic aerial scenes and of their cache on disk."""

import os
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from seg_jax import data
from seg_jax import metrics
from seg_jax.data import synthetic
from tests.data import fixtures


class SyntheticTest(parameterized.TestCase):

  @parameterized.parameters(((144, 256),), ((32, 48),), ((64, 64),))
  def test_deterministic_per_seed_and_index(self, size):
    a_img, a_lbl = synthetic.generate(3, 7, size)
    b_img, b_lbl = synthetic.generate(3, 7, size)
    self.assertEqual(a_img.shape, size + (3,))
    self.assertEqual(a_img.dtype, np.uint8)
    self.assertEqual(a_lbl.shape, size)
    self.assertEqual(a_lbl.dtype, np.uint8)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lbl, b_lbl)
    self.assertFalse(np.array_equal(a_img, synthetic.generate(3, 8, size)[0]))
    self.assertFalse(np.array_equal(a_img, synthetic.generate(4, 7, size)[0]))

  def test_classes_present(self):
    counts = np.zeros(256, np.int64)
    for i in range(12):
      counts += np.bincount(synthetic.generate(0, i, (72, 128))[1].ravel(), minlength=256)
    self.assertTrue(np.all(counts[:6] > 0), counts[:6])
    self.assertEqual(counts[6:].sum(), 0)

  def test_per_pixel_colour_classifier_stays_below_06_miou(self):
    # The best classifier of quantised colour (a colour histogram per class),
    # fitted on some scenes and scored on others: it bounds any 1x1 model.
    def pixels(indices):
      pairs = [synthetic.generate(0, i, (72, 128)) for i in indices]
      rgb = np.concatenate([p[0].reshape(-1, 3) for p in pairs]) // 16
      key = (rgb[:, 0].astype(np.int64) * 16 + rgb[:, 1]) * 16 + rgb[:, 2]
      return key, np.concatenate([p[1].ravel() for p in pairs])
    key, lbl = pixels(range(24))
    table = np.zeros((16 ** 3, 6), np.int64)
    np.add.at(table, (key, lbl), 1)
    val_key, val_lbl = pixels(range(100, 108))
    cm = metrics.confusion_matrix(val_lbl, table.argmax(1)[val_key], 6)
    self.assertLess(metrics.scores(cm)["miou"], 0.6)

  def test_dataset_splits_are_disjoint_and_stable(self):
    c = fixtures.data_config(image_size=(32, 48), num_train=3, num_val=2, num_test=2)
    ds = data.get_dataset(c)
    self.assertEqual((len(ds.train), len(ds.val), len(ds.test)), (3, 2, 2))
    self.assertEqual(ds.class_names, data.palettes.DUBAI_AERIAL.names)
    self.assertEqual(ds.image_size, (32, 48))
    self.assertEqual(ds.mean.dtype, np.float32)
    self.assertFalse(np.array_equal(ds.train[0]["image"], ds.val[0]["image"]))
    c.num_train = 5
    ds2 = data.get_dataset(c)
    np.testing.assert_array_equal(ds.val[1]["image"], ds2.val[1]["image"])
    np.testing.assert_array_equal(ds.train[2]["label"], ds2.train[2]["label"])
    with self.assertRaises(IndexError):
      ds.train[3]  # pylint: disable=pointless-statement

  def test_mean_std_match_numpy_on_train_scenes(self):
    ds = data.get_dataset(fixtures.data_config(image_size=(24, 32), num_train=4, num_val=1,
                                               num_test=1))
    px = np.concatenate([synthetic.generate(0, i, (24, 32))[0].reshape(-1, 3)
                         for i in range(synthetic.STATS_SCENES)]).astype(np.float64)
    np.testing.assert_allclose(ds.mean, px.mean(0), rtol=1e-5)
    np.testing.assert_allclose(ds.std, px.std(0), rtol=1e-4)

  def test_bad_size(self):
    with self.assertRaisesRegex(ValueError, "size"):
      synthetic.generate(0, 0, (4, 100))


class SyntheticCacheTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.cache = tempfile.mkdtemp()
    self.config = fixtures.data_config(image_size=(16, 24), num_train=3, num_val=2, num_test=1,
                                       cache_dir=self.cache)

  def _folders(self):
    return sorted(os.listdir(os.path.join(self.cache, "synthetic_aerial")))

  def test_generated_once_then_read_from_the_cache(self):
    first = data.get_dataset(self.config)
    self.assertLen(self._folders(), 3)  # one per split
    with mock.patch.object(synthetic, "generate") as generate:
      again = data.get_dataset(self.config)
    generate.assert_not_called()
    for split in ("train", "val", "test"):
      source, cached = getattr(first, split), getattr(again, split)
      self.assertLen(cached, len(source))
      for i in range(len(source)):
        image, label = synthetic.generate(0, synthetic.SPLIT_OFFSETS[split] + i, (16, 24))
        np.testing.assert_array_equal(cached[i]["image"], image)
        np.testing.assert_array_equal(cached[i]["label"], label)
    np.testing.assert_array_equal(first.mean, again.mean)
    np.testing.assert_array_equal(first.std, again.std)

  def test_other_seed_size_or_generator_is_generated_afresh(self):
    data.get_dataset(self.config)
    self.config.seed = 1
    data.get_dataset(self.config)
    self.config.image_size = (24, 16)
    data.get_dataset(self.config)
    with mock.patch.object(synthetic, "_generator_version", return_value="changed"):
      data.get_dataset(self.config)
    self.assertLen(self._folders(), 12)

  def test_unreadable_cache_is_generated_again(self):
    first = data.get_dataset(self.config)
    val = [f for f in self._folders() if f.startswith("val_")][0]
    path = os.path.join(self.cache, "synthetic_aerial", val, "images.npy")
    with open(path, "r+b") as f:
      f.truncate(100)
    with self.assertLogs(level="WARNING") as logs:
      again = data.get_dataset(self.config)
    self.assertIn(val, "\n".join(logs.output))
    np.testing.assert_array_equal(again.val[1]["image"], first.val[1]["image"])
    self.assertGreater(os.path.getsize(path), 100)  # written whole again

  def test_empty_cache_dir_keeps_nothing_on_disk(self):
    self.config.cache_dir = ""
    ds = data.get_dataset(self.config)
    self.assertFalse(os.path.exists(os.path.join(self.cache, "synthetic_aerial")))
    np.testing.assert_array_equal(ds.test[0]["label"], synthetic.generate(
        0, synthetic.SPLIT_OFFSETS["test"], (16, 24))[1])


if __name__ == "__main__":
  absltest.main()
