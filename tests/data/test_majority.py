"""Classification sets by majority class (data.labels="majority") on constructed labels and a
generated Dubai-layout folder."""

import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from seg_jax import data
from seg_jax.data import preprocess
from tests.data import fixtures

IGNORE = 255


def _map(counts: dict[int, int]) -> np.ndarray:
  """A 4x4 label map holding `counts[v]` pixels of value v, in value order."""
  values = np.concatenate([np.full(n, v, np.uint8) for v, n in counts.items()])
  assert values.size == 16, counts
  return values.reshape(4, 4)


class MajorityClassesTest(parameterized.TestCase):

  def test_majority_and_purity_over_all_pixels(self):
    labels = np.stack([
        _map({2: 12, 0: 4}),  # 75 % class 2
        _map({2: 11, 0: 5}),  # 69 %: below 75 %
        _map({1: 12, IGNORE: 4}),  # 75 % of all pixels, 100 % of the labelled ones
        _map({1: 6, IGNORE: 10}),  # all labelled pixels are class 1, but mostly ignored
        _map({IGNORE: 16}),  # nothing labelled
        _map({0: 8, 3: 8}),  # a tie goes to the lower class
    ])
    classes, kept = preprocess.majority_classes(labels, num_classes=4, min_purity=0.75)
    np.testing.assert_array_equal(classes[:4], [2, 2, 1, 1])
    self.assertEqual(classes[5], 0)
    np.testing.assert_array_equal(kept, [True, False, True, False, False, False])
    _, kept = preprocess.majority_classes(labels, num_classes=4, min_purity=0.5)
    np.testing.assert_array_equal(kept, [True, True, True, False, False, True])

  def test_values_outside_the_classes_are_never_the_majority(self):
    # Class 5 lies outside num_classes=4, like the ignore index.
    classes, kept = preprocess.majority_classes(_map({5: 10, 3: 6})[None], 4, 0.25)
    self.assertEqual((classes[0], kept[0]), (3, True))

  def test_shape_must_be_n_h_w(self):
    with self.assertRaisesRegex(ValueError, r"\(N, H, W\).*\(4, 4\)"):
      preprocess.majority_classes(_map({0: 16}), 4, 0.5)


def _config(root, **overrides):
  fields = dict(name="dubai_aerial", root=root, prep="patches", patch_size=16, labels="majority",
                min_purity=0.3)
  return fixtures.data_config(**{**fields, **overrides})


class MajorityDatasetTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.root = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.root, ignore_errors=True)
    fixtures.make_tile_layout(self.root)

  def test_each_kept_patch_is_labelled_with_its_majority_class(self):
    pixels = data.get_dataset(_config(self.root, labels="pixels"))
    majority = data.get_dataset(_config(self.root))
    for split in ("train", "val", "test"):
      source, relabelled = getattr(pixels, split), getattr(majority, split)
      classes, kept = preprocess.majority_classes(source.labels, 6, 0.3)
      self.assertTrue(0 < kept.sum() < len(kept), split)  # some kept, some left out
      self.assertEqual(majority.dropped[split], int((~kept).sum()))
      self.assertEqual(relabelled.names, [n for n, k in zip(source.names, kept) if k])
      np.testing.assert_array_equal(relabelled.images, source.images[kept])
      self.assertEqual(relabelled.labels.shape, (kept.sum(), 16, 16))
      np.testing.assert_array_equal(
          relabelled.labels, np.broadcast_to(classes[kept, None, None], relabelled.labels.shape))
    self.assertEqual(pixels.dropped, {})
    px = majority.train.images.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(majority.mean, px.mean(0), rtol=1e-6)  # of the kept patches

  def test_synthetic_scenes_too(self):
    config = fixtures.data_config(image_size=(16, 16), num_train=8, num_val=4, num_test=4,
                                  cache_dir="", labels="majority", min_purity=0.5)
    ds = data.get_dataset(config)
    for split in ("train", "val", "test"):
      labels = getattr(ds, split).labels
      self.assertEqual(len(labels) + ds.dropped[split], {"train": 8}.get(split, 4))
      self.assertTrue((labels == labels[:, :1, :1]).all())

  @parameterized.parameters(
      (dict(labels="class"), "data.labels must be one of .*'class'"),
      (dict(min_purity=0.0), r"data.min_purity must be in \(0, 1\], got 0.0"),
      (dict(min_purity=1.5), r"data.min_purity must be in \(0, 1\], got 1.5"),
      (dict(name="tfds:dubai_aerial/patches_256"), "prepared TFDS dataset"),
  )
  def test_bad_fields_are_named(self, fields, message):
    with self.assertRaisesRegex(ValueError, message):
      data.get_dataset(_config(self.root, **fields))

  def test_no_full_resolution_evaluation_of_one_class_per_example(self):
    with self.assertRaisesRegex(ValueError, "data.labels='majority'.*eval.resolution"):
      data.full_resolution_examples(_config(self.root), "val")


if __name__ == "__main__":
  absltest.main()
