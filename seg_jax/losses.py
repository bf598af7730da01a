"""Segmentation losses: pure functions `(logits, labels, mask) -> scalar`.

`logits` is (N, H, W, C) float, `labels` is (N, H, W) int and `mask` is (N, H, W) bool or float
marking the pixels that count (the caller folds `ignore_index` and padded examples into it; see
`valid_mask`). Pixels outside the mask may hold any label value, including `ignore_index`.
A mask of None counts every pixel whose label is a class in [0, C), so `ignore_index` (255)
and other out-of-range labels are left out.
Every loss is finite when the mask is empty (it returns 0) and when a class is absent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

LossFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

_EPS = 1e-7


def valid_mask(labels: jax.Array, num_classes: int, ignore_index: int = 255,
               valid: jax.Array | None = None) -> jax.Array:
  """Boolean (N, H, W) mask of pixels whose label is a real class (and whose example is valid)."""
  mask = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
  if valid is not None:
    mask = mask & valid.reshape(valid.shape + (1,) * (labels.ndim - valid.ndim))
  return mask


def _prepare(logits, labels, mask):
  """Casts to float32 and replaces labels outside the mask by class 0 so gathers stay in range.

  Without a mask, the pixels that count are those whose label is a class in [0, C)
  (`valid_mask` with the default `ignore_index`).
  """
  num_classes = logits.shape[-1]
  if logits.shape[:-1] != labels.shape:
    raise ValueError(f"logits shape {logits.shape} does not match labels shape {labels.shape}")
  if mask is None:
    mask = valid_mask(jnp.asarray(labels), num_classes)
  mask = jnp.asarray(mask).astype(jnp.float32)
  labels = jnp.where(mask > 0, labels, 0).astype(jnp.int32)
  labels = jnp.clip(labels, 0, num_classes - 1)
  return logits.astype(jnp.float32), labels, mask


def cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None, *,
                  class_weights: Sequence[float] | jax.Array | None = None,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Pixel cross-entropy averaged over the mask, optionally class-weighted and label-smoothed.

  With class weights the mean is weighted: sum(w[y] * nll) / sum(w[y]) (as in PyTorch).
  Label smoothing mixes the one-hot target with the uniform distribution over classes.
  """
  logits, labels, mask = _prepare(logits, labels, mask)
  num_classes = logits.shape[-1]
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing:
    targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
  nll = -jnp.sum(targets * log_probs, axis=-1)
  weights = mask
  if class_weights is not None:
    class_weights = jnp.asarray(class_weights, jnp.float32)
    if class_weights.shape != (num_classes,):
      raise ValueError(f"class_weights has shape {class_weights.shape}, expected ({num_classes},)")
    weights = weights * class_weights[labels]
  return jnp.sum(weights * nll) / jnp.maximum(jnp.sum(weights), _EPS)


def focal(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None, *,
          gamma: float = 2.0, class_weights: Sequence[float] | jax.Array | None = None
          ) -> jax.Array:
  """Focal loss -(1 - p_t)^gamma log p_t averaged over the mask (alpha given as class weights)."""
  logits, labels, mask = _prepare(logits, labels, mask)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  log_pt = jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
  loss = -((1.0 - jnp.exp(log_pt)) ** gamma) * log_pt
  if class_weights is not None:
    loss = loss * jnp.asarray(class_weights, jnp.float32)[labels]
  return jnp.sum(mask * loss) / jnp.maximum(jnp.sum(mask), _EPS)


def _soft_counts(logits, labels, mask):
  """Per-class soft true positives, false positives and false negatives summed over the batch."""
  logits, labels, mask = _prepare(logits, labels, mask)
  probs = jax.nn.softmax(logits, axis=-1) * mask[..., None]
  targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32) * mask[..., None]
  axes = tuple(range(probs.ndim - 1))
  tp = jnp.sum(probs * targets, axis=axes)
  fp = jnp.sum(probs, axis=axes) - tp
  fn = jnp.sum(targets, axis=axes) - tp
  present = jnp.sum(targets, axis=axes) > 0
  return tp, fp, fn, present


def _mean_over_present(scores, present):
  """1 - mean score over classes present in the labels; 0 when none is present."""
  count = jnp.sum(present)
  mean = jnp.sum(jnp.where(present, scores, 0.0)) / jnp.maximum(count, 1)
  return jnp.where(count > 0, 1.0 - mean, 0.0)


def tversky(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None, *,
            alpha: float = 0.5, beta: float = 0.5, smooth: float = 0.0) -> jax.Array:
  """1 - mean Tversky index TP / (TP + alpha FP + beta FN) over classes present in the labels.

  Per-class counts are summed over the whole batch; classes absent from the labels (in the mask)
  are left out of the mean, so an absent class neither helps nor hurts.
  """
  tp, fp, fn, present = _soft_counts(logits, labels, mask)
  index = (tp + smooth) / jnp.maximum(tp + alpha * fp + beta * fn + smooth, _EPS)
  return _mean_over_present(index, present)


def dice(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None, *,
         smooth: float = 0.0) -> jax.Array:
  """Soft Dice loss 1 - mean 2TP / (2TP + FP + FN) over classes present in the labels."""
  return tversky(logits, labels, mask, alpha=0.5, beta=0.5, smooth=smooth)


def jaccard(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None, *,
            smooth: float = 0.0) -> jax.Array:
  """Soft Jaccard (IoU) loss 1 - mean TP / (TP + FP + FN) over classes present in the labels."""
  return tversky(logits, labels, mask, alpha=1.0, beta=1.0, smooth=smooth)


def class_weights_from_counts(counts: Sequence[int] | np.ndarray, method: str) -> np.ndarray:
  """Class weights from per-class pixel counts of the training split.

  Args:
    counts: (C,) pixel count per class.
    method: "inverse" (w_c = total / (C * n_c)) or "median" (median frequency balancing,
      w_c = median(f) / f_c with f over classes that occur).
  Returns:
    float32 (C,) weights; a class with no pixels gets weight 0.
  """
  counts = np.asarray(counts, np.float64)
  present = counts > 0
  if not present.any():
    raise ValueError(f"counts has no non-zero entry: {counts.tolist()}")
  safe = np.where(present, counts, 1.0)
  if method == "inverse":
    weights = counts.sum() / (present.sum() * safe)
  elif method == "median":
    freq = safe / counts.sum()
    weights = np.median(freq[present]) / freq
  else:
    raise ValueError(f"method must be 'inverse' or 'median', got {method!r}")
  return np.where(present, weights, 0.0).astype(np.float32)


def make_loss(loss_config, class_weights: np.ndarray | None = None) -> LossFn:
  """Weighted sum of the losses named in `loss_config` as one `(logits, labels, mask)` function.

  Args:
    loss_config: the config's `loss` group (`*_weight` fields, `label_smoothing`, `focal_gamma`,
      `tversky_alpha`, `tversky_beta`, `smooth`).
    class_weights: (C,) weights for cross-entropy and focal, or None.
  """
  terms = []
  cw = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)
  if loss_config.ce_weight:
    terms.append((loss_config.ce_weight, lambda lg, lb, m: cross_entropy(
        lg, lb, m, class_weights=cw, label_smoothing=loss_config.label_smoothing)))
  if loss_config.focal_weight:
    terms.append((loss_config.focal_weight, lambda lg, lb, m: focal(
        lg, lb, m, gamma=loss_config.focal_gamma, class_weights=cw)))
  if loss_config.dice_weight:
    terms.append((loss_config.dice_weight,
                  lambda lg, lb, m: dice(lg, lb, m, smooth=loss_config.smooth)))
  if loss_config.jaccard_weight:
    terms.append((loss_config.jaccard_weight,
                  lambda lg, lb, m: jaccard(lg, lb, m, smooth=loss_config.smooth)))
  if loss_config.tversky_weight:
    terms.append((loss_config.tversky_weight, lambda lg, lb, m: tversky(
        lg, lb, m, alpha=loss_config.tversky_alpha, beta=loss_config.tversky_beta,
        smooth=loss_config.smooth)))
  if not terms:
    raise ValueError("loss config has every *_weight at 0: no loss to optimise")

  def loss_fn(logits, labels, mask):
    return sum(w * fn(logits, labels, mask) for w, fn in terms)

  return loss_fn
