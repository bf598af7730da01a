"""Tests of seg_jax.losses against NumPy references."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from seg_jax import losses

IGNORE = 255


def _np_softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _example(seed=0, num_classes=4, shape=(2, 5, 6)):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=shape + (num_classes,)).astype(np.float32) * 2
  labels = rng.integers(0, num_classes, size=shape).astype(np.int32)
  labels[0, 0, :3] = IGNORE
  mask = labels != IGNORE
  return logits, labels, mask


def _np_tversky(logits, labels, mask, alpha, beta):
  probs = _np_softmax(logits.astype(np.float64))
  num_classes = logits.shape[-1]
  index = []
  for c in range(num_classes):
    p = probs[..., c][mask]
    t = (labels[mask] == c).astype(np.float64)
    if t.sum() == 0:
      continue
    tp = (p * t).sum()
    fp = (p * (1 - t)).sum()
    fn = ((1 - p) * t).sum()
    index.append(tp / (tp + alpha * fp + beta * fn))
  return 1 - np.mean(index) if index else 0.0


class LossesTest(parameterized.TestCase):

  def test_cross_entropy_matches_numpy_and_ignores(self):
    logits, labels, mask = _example()
    probs = _np_softmax(logits.astype(np.float64))
    lab = np.where(mask, labels, 0)
    nll = -np.log(np.take_along_axis(probs, lab[..., None], -1)[..., 0])
    expected = nll[mask].mean()
    got = losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)

  def test_cross_entropy_weighted_smoothed(self):
    logits, labels, mask = _example(1)
    weights = np.array([0.5, 1.0, 2.0, 3.0])
    eps = 0.1
    logp = np.log(_np_softmax(logits.astype(np.float64)))
    lab = np.where(mask, labels, 0)
    target = np.eye(4)[lab] * (1 - eps) + eps / 4
    nll = -(target * logp).sum(-1)
    w = weights[lab] * mask
    expected = (w * nll).sum() / w.sum()
    got = losses.cross_entropy(logits, labels, mask, class_weights=weights, label_smoothing=eps)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)

  def test_focal_gamma_zero_is_cross_entropy_and_matches_numpy(self):
    logits, labels, mask = _example(2)
    np.testing.assert_allclose(float(losses.focal(logits, labels, mask, gamma=0.0)),
                               float(losses.cross_entropy(logits, labels, mask)), rtol=1e-6)
    probs = _np_softmax(logits.astype(np.float64))
    lab = np.where(mask, labels, 0)
    pt = np.take_along_axis(probs, lab[..., None], -1)[..., 0]
    expected = (-(1 - pt) ** 2 * np.log(pt))[mask].mean()
    np.testing.assert_allclose(float(losses.focal(logits, labels, mask, gamma=2.0)), expected,
                               rtol=1e-5)

  @parameterized.parameters((0.5, 0.5), (1.0, 1.0), (0.3, 0.7))
  def test_tversky_family_matches_numpy(self, alpha, beta):
    logits, labels, mask = _example(3, num_classes=5)
    labels[labels == 4] = 3  # class 4 absent from the labels: left out of the mean
    expected = _np_tversky(logits, labels, mask, alpha, beta)
    got = losses.tversky(logits, labels, mask, alpha=alpha, beta=beta)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)

  def test_dice_and_jaccard_are_tversky_cases(self):
    logits, labels, mask = _example(4)
    np.testing.assert_allclose(float(losses.dice(logits, labels, mask)),
                               _np_tversky(logits, labels, mask, 0.5, 0.5), rtol=1e-5)
    np.testing.assert_allclose(float(losses.jaccard(logits, labels, mask)),
                               _np_tversky(logits, labels, mask, 1.0, 1.0), rtol=1e-5)

  @parameterized.parameters("cross_entropy", "focal", "dice", "jaccard", "tversky")
  def test_all_ignored_batch_is_finite_zero(self, name):
    logits, labels, _ = _example(5)
    labels[:] = IGNORE
    mask = np.zeros(labels.shape, bool)
    value = float(getattr(losses, name)(logits, labels, mask))
    self.assertEqual(value, 0.0)

  def test_no_mask_leaves_ignored_pixels_out(self):
    logits, labels, mask = _example(7)
    probs = _np_softmax(logits.astype(np.float64))
    lab = np.where(mask, labels, 0)
    nll = -np.log(np.take_along_axis(probs, lab[..., None], -1)[..., 0])
    np.testing.assert_allclose(float(losses.cross_entropy(logits, labels, None)),
                               nll[mask].mean(), rtol=1e-5)
    pt = np.take_along_axis(probs, lab[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(losses.focal(logits, labels, None, gamma=2.0)),
                               (-(1 - pt) ** 2 * np.log(pt))[mask].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(losses.tversky(logits, labels, None, alpha=0.3, beta=0.7)),
                               _np_tversky(logits, labels, mask, 0.3, 0.7), rtol=1e-5)

  def test_perfect_prediction_dice_is_zero(self):
    labels = np.array([[[0, 1], [2, 2]]], np.int32)
    logits = np.eye(3)[labels] * 100.0
    self.assertAlmostEqual(float(losses.dice(logits, labels, None)), 0.0, places=5)

  def test_valid_mask(self):
    labels = np.array([[0, 1, 255, 7]])
    valid = np.array([True])
    np.testing.assert_array_equal(losses.valid_mask(labels, 4, 255, valid),
                                  [[True, True, False, False]])
    np.testing.assert_array_equal(losses.valid_mask(labels, 4, 255, ~valid),
                                  [[False] * 4])

  def test_class_weights_from_counts(self):
    counts = np.array([10, 30, 0, 60])
    np.testing.assert_allclose(losses.class_weights_from_counts(counts, "inverse"),
                               [100 / 30, 100 / 90, 0.0, 100 / 180], rtol=1e-6)
    np.testing.assert_allclose(losses.class_weights_from_counts(counts, "median"),
                               [3.0, 1.0, 0.0, 0.5], rtol=1e-6)
    with self.assertRaisesRegex(ValueError, "method"):
      losses.class_weights_from_counts(counts, "sqrt")

  def test_focal_with_class_weights_is_a_weighted_mean_like_cross_entropy(self):
    logits, labels, mask = _example(8)
    weights = np.array([0.5, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(
        float(losses.focal(logits, labels, mask, gamma=0.0, class_weights=weights)),
        float(losses.cross_entropy(logits, labels, mask, class_weights=weights)), rtol=1e-6)
    probs = _np_softmax(logits.astype(np.float64))
    lab = np.where(mask, labels, 0)
    pt = np.take_along_axis(probs, lab[..., None], -1)[..., 0]
    w = weights[lab] * mask
    expected = (w * -(1 - pt) ** 2 * np.log(pt)).sum() / w.sum()
    np.testing.assert_allclose(
        float(losses.focal(logits, labels, mask, gamma=2.0, class_weights=weights)), expected,
        rtol=1e-5)

  def test_summed_batch_sums_give_the_loss_of_all_pixels(self):
    logits, labels, mask = _example(9, shape=(5, 4, 6))
    cfg = ml_collections.ConfigDict(dict(
        ce_weight=1.0, dice_weight=0.5, jaccard_weight=0.25, focal_weight=0.5,
        tversky_weight=0.5, label_smoothing=0.1, focal_gamma=2.0, tversky_alpha=0.3,
        tversky_beta=0.7, smooth=1.0))
    loss = losses.make_loss(cfg, np.array([0.5, 1.0, 2.0, 3.0], np.float32))
    batches = [slice(0, 2), slice(2, 4), slice(4, 5)]
    sums = [loss.sums(logits[b], labels[b], mask[b]) for b in batches]
    total = jax.tree.map(lambda *xs: sum(xs), *sums)
    np.testing.assert_allclose(float(loss.reduce(total)), float(loss(logits, labels, mask)),
                               rtol=1e-5)
    mean_of_batches = np.mean([float(loss(logits[b], labels[b], mask[b])) for b in batches])
    self.assertGreater(abs(mean_of_batches - float(loss(logits, labels, mask))), 1e-3)

  def test_make_loss_weighted_sum(self):
    logits, labels, mask = _example(6)
    cfg = ml_collections.ConfigDict(dict(
        ce_weight=1.0, dice_weight=0.5, jaccard_weight=0.0, focal_weight=0.25,
        tversky_weight=0.0, label_smoothing=0.0, focal_gamma=2.0, tversky_alpha=0.5,
        tversky_beta=0.5, smooth=0.0))
    expected = (losses.cross_entropy(logits, labels, mask) +
                0.5 * losses.dice(logits, labels, mask) +
                0.25 * losses.focal(logits, labels, mask))
    got = losses.make_loss(cfg)(logits, labels, mask)
    np.testing.assert_allclose(float(got), float(expected), rtol=1e-6)
    cfg.ce_weight = cfg.dice_weight = cfg.focal_weight = 0.0
    with self.assertRaisesRegex(ValueError, "weight"):
      losses.make_loss(cfg)


if __name__ == "__main__":
  absltest.main()
