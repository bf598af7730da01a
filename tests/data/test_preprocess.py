"""Tests of the per-class statistics of a split against NumPy references."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from seg_jax import data


def _source(labels):
  labels = np.asarray(labels, np.uint8)
  return data.ArraySource(np.zeros((*labels.shape, 3), np.uint8), labels)


class ClassPixelCountsTest(parameterized.TestCase):

  @parameterized.parameters(2, 6, 9)
  def test_matches_numpy_and_skips_ignored_pixels(self, num_classes):
    rng = np.random.default_rng(num_classes)
    labels = rng.integers(0, 8, (3, 16, 24))
    labels[rng.random(labels.shape) < 0.1] = 255  # the ignore index
    counts = data.class_pixel_counts(_source(labels), num_classes)
    expected = np.array([np.count_nonzero(labels == k) for k in range(num_classes)])
    self.assertEqual(counts.dtype, np.int64)
    np.testing.assert_array_equal(counts, expected)
    self.assertEqual(counts.sum(), np.count_nonzero(labels < num_classes))

  def test_empty_class_empty_split_and_all_ignored(self):
    np.testing.assert_array_equal(
        data.class_pixel_counts(_source([[[0, 2], [2, 2]]]), 4), [1, 0, 3, 0])
    np.testing.assert_array_equal(
        data.class_pixel_counts(_source(np.zeros((0, 4, 4))), 3), [0, 0, 0])
    np.testing.assert_array_equal(
        data.class_pixel_counts(_source(np.full((2, 4, 4), 255)), 3), [0, 0, 0])


if __name__ == "__main__":
  absltest.main()
