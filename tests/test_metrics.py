"""Tests of seg_jax.metrics against NumPy references."""

from absl.testing import absltest
import jax
import numpy as np

from seg_jax import metrics

IGNORE = 255


def _np_confusion(labels, preds, num_classes):
  cm = np.zeros((num_classes, num_classes), np.int64)
  for t, p in zip(labels.ravel(), preds.ravel()):
    if t != IGNORE and 0 <= t < num_classes:
      cm[t, p] += 1
  return cm


class MetricsTest(absltest.TestCase):

  def test_confusion_matrix_matches_numpy_under_jit(self):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=(2, 7, 9))
    labels[0, :2] = IGNORE
    preds = rng.integers(0, 5, size=(2, 7, 9))
    fn = jax.jit(metrics.confusion_matrix, static_argnums=(2, 3))
    got = np.asarray(fn(labels, preds, 5, IGNORE))
    np.testing.assert_array_equal(got, _np_confusion(labels, preds, 5))
    self.assertEqual(got.sum(), (labels != IGNORE).sum())

  def test_confusion_matrix_mask(self):
    labels = np.array([[0, 1], [1, 1]])
    preds = np.array([[0, 0], [1, 1]])
    mask = np.array([[True, True], [False, True]])
    np.testing.assert_array_equal(metrics.confusion_matrix(labels, preds, 2, mask=mask),
                                  [[1, 0], [1, 1]])

  def test_scores_hand_computed(self):
    # class 0: tp 3, fn 1, fp 1; class 1: tp 2, fn 2, fp 1; class 2: tp 0, fn 0, fp 1;
    # class 3 absent everywhere.
    cm = np.array([[3, 1, 0, 0],
                   [1, 2, 1, 0],
                   [0, 0, 0, 0],
                   [0, 0, 0, 0]])
    s = metrics.scores(cm)
    np.testing.assert_allclose(s["iou"], [3 / 5, 2 / 5, 0.0, np.nan])
    np.testing.assert_allclose(s["dice"], [6 / 8, 4 / 7, 0.0, np.nan])
    np.testing.assert_allclose(s["accuracy"], [3 / 4, 2 / 4, np.nan, np.nan])
    self.assertAlmostEqual(s["miou"], (0.6 + 0.4 + 0.0) / 3)
    self.assertAlmostEqual(s["mean_dice"], (6 / 8 + 4 / 7 + 0.0) / 3)
    self.assertAlmostEqual(s["mean_accuracy"], (0.75 + 0.5) / 2)
    self.assertAlmostEqual(s["pixel_accuracy"], 5 / 8)
    self.assertAlmostEqual(s["fw_iou"], 0.5 * 0.6 + 0.5 * 0.4)

  def test_scores_empty_matrix_is_nan(self):
    s = metrics.scores(np.zeros((3, 3)))
    self.assertTrue(np.isnan(s["miou"]))
    self.assertTrue(np.isnan(s["pixel_accuracy"]))
    self.assertTrue(np.isnan(s["iou"]).all())

  def test_scores_rejects_non_square(self):
    with self.assertRaisesRegex(ValueError, "cm"):
      metrics.scores(np.zeros((3, 2)))

  def test_metric_accumulates_not_averages(self):
    # Per-batch mIoUs differ from the mIoU of the summed matrix; the metric must give the latter.
    batches = [(np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0])),
               (np.array([1, 1]), np.array([1, 1]))]
    step = jax.jit(lambda l, p: metrics.ConfusionMatrix.from_model_output(
        labels=l, preds=p, num_classes=2))
    acc = metrics.ConfusionMatrix.empty(2)
    for labels, preds in batches:
      acc = acc.merge(jax.device_get(step(labels, preds)))
    self.assertEqual(acc.matrix.dtype, np.int64)
    np.testing.assert_array_equal(acc.matrix, [[3, 0], [1, 2]])
    self.assertAlmostEqual(acc.compute()["miou"], (3 / 4 + 2 / 3) / 2)

  def test_metric_reduce_sums_stack(self):
    stacked = metrics.ConfusionMatrix(matrix=np.ones((3, 2, 2), np.int32))
    np.testing.assert_array_equal(stacked.reduce().matrix, 3 * np.ones((2, 2)))

  def test_format_table(self):
    table = metrics.format_table(metrics.scores(np.array([[3, 1], [0, 0]])), ["a", "b"])
    lines = table.splitlines()
    self.assertEqual(lines[1].split(), ["a", "0.7500", "0.8571", "0.7500"])
    self.assertEqual(lines[2].split(), ["b", "0.0000", "0.0000", "nan"])
    self.assertEqual(lines[3].split(), ["miou", "0.3750"])
    self.assertLen({len(l) for l in lines[:3]}, 1)

  def test_means_excluding_classes(self):
    # The hand-computed matrix of test_scores_hand_computed: "c" (IoU 0) left out of the means.
    cm = np.array([[3, 1, 0, 0], [1, 2, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    names = ["a", "b", "c", "d"]
    s = metrics.scores(cm)
    self.assertEqual(metrics.excluding(s, names, ()), {})
    out = metrics.excluding(s, names, ("c",))
    self.assertAlmostEqual(out["miou_excluding"], (0.6 + 0.4) / 2)
    self.assertAlmostEqual(out["mean_dice_excluding"], (6 / 8 + 4 / 7) / 2)
    self.assertAlmostEqual(out["mean_accuracy_excluding"], (0.75 + 0.5) / 2)
    lines = metrics.format_table({**s, **out}, names, ("c",)).splitlines()
    self.assertEqual(lines[-3].split(), ["miou", "w/o", "c", "0.5000"])
    self.assertLen({len(l) for l in lines[len(names) + 1:]}, 1)  # the scores in one column


if __name__ == "__main__":
  absltest.main()
