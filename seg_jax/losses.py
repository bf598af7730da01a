"""Segmentation losses: pure functions `(logits, labels, mask) -> scalar`.

`logits` is (N, H, W, C) float, `labels` is (N, H, W) int and `mask` is (N, H, W) bool or float
marking the pixels that count (the caller folds `ignore_index` and padded examples into it; see
`valid_mask`). Pixels outside the mask may hold any label value, including `ignore_index`.
A mask of None counts every pixel whose label is a class in [0, C), so `ignore_index` (255)
and other out-of-range labels are left out.
Every loss is finite when the mask is empty (it returns 0) and when a class is absent.
"""

from __future__ import annotations

import dataclasses
import functools
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


def weighted_mean(total: jax.Array, weight: jax.Array) -> jax.Array:
  """total / weight, and 0 when nothing is weighted (an all-ignored batch)."""
  return total / jnp.maximum(weight, _EPS)


def _pixel_weights(mask, labels, class_weights, num_classes):
  """Per-pixel weights: the mask, times the class weight of each pixel's label if given."""
  if class_weights is None:
    return mask
  class_weights = jnp.asarray(class_weights, jnp.float32)
  if class_weights.shape != (num_classes,):
    raise ValueError(f"class_weights has shape {class_weights.shape}, expected ({num_classes},)")
  return mask * class_weights[labels]


def cross_entropy_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None, *,
                       class_weights: Sequence[float] | jax.Array | None = None,
                       label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Cross-entropy's additive parts: (sum of w * nll, sum of w) over the mask, w = w[label]."""
  logits, labels, mask = _prepare(logits, labels, mask)
  num_classes = logits.shape[-1]
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing:
    targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
  nll = -jnp.sum(targets * log_probs, axis=-1)
  weights = _pixel_weights(mask, labels, class_weights, num_classes)
  return jnp.sum(weights * nll), jnp.sum(weights)


def cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None, *,
                  class_weights: Sequence[float] | jax.Array | None = None,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Pixel cross-entropy averaged over the mask, optionally class-weighted and label-smoothed.

  With class weights the mean is weighted: sum(w[y] * nll) / sum(w[y]) (as in PyTorch).
  Label smoothing mixes the one-hot target with the uniform distribution over classes.
  """
  return weighted_mean(*cross_entropy_sums(logits, labels, mask, class_weights=class_weights,
                                           label_smoothing=label_smoothing))


def focal_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None, *,
               gamma: float = 2.0, class_weights: Sequence[float] | jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array]:
  """Focal loss's additive parts: (sum of w * focal term, sum of w) over the mask."""
  logits, labels, mask = _prepare(logits, labels, mask)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  log_pt = jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
  loss = -((1.0 - jnp.exp(log_pt)) ** gamma) * log_pt
  weights = _pixel_weights(mask, labels, class_weights, logits.shape[-1])
  return jnp.sum(weights * loss), jnp.sum(weights)


def focal(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None, *,
          gamma: float = 2.0, class_weights: Sequence[float] | jax.Array | None = None
          ) -> jax.Array:
  """Focal loss -(1 - p_t)^gamma log p_t averaged over the mask.

  Class weights (alpha) weight the mean as in `cross_entropy`, sum(w[y] * l) / sum(w[y]), so
  gamma = 0 gives cross-entropy with or without weights.
  """
  return weighted_mean(*focal_sums(logits, labels, mask, gamma=gamma,
                                   class_weights=class_weights))


def soft_counts(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-class soft true positives, false positives and false negatives summed over the mask."""
  logits, labels, mask = _prepare(logits, labels, mask)
  probs = jax.nn.softmax(logits, axis=-1) * mask[..., None]
  targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32) * mask[..., None]
  axes = tuple(range(probs.ndim - 1))
  tp = jnp.sum(probs * targets, axis=axes)
  fp = jnp.sum(probs, axis=axes) - tp
  fn = jnp.sum(targets, axis=axes) - tp
  return tp, fp, fn


def tversky_from_counts(tp: jax.Array, fp: jax.Array, fn: jax.Array, *, alpha: float = 0.5,
                        beta: float = 0.5, smooth: float = 0.0) -> jax.Array:
  """1 - mean Tversky index over the classes present (tp + fn > 0); 0 when none is."""
  index = (tp + smooth) / jnp.maximum(tp + alpha * fp + beta * fn + smooth, _EPS)
  present = (tp + fn) > 0
  count = jnp.sum(present)
  mean = jnp.sum(jnp.where(present, index, 0.0)) / jnp.maximum(count, 1)
  return jnp.where(count > 0, 1.0 - mean, 0.0)


def tversky(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None, *,
            alpha: float = 0.5, beta: float = 0.5, smooth: float = 0.0) -> jax.Array:
  """1 - mean Tversky index TP / (TP + alpha FP + beta FN) over classes present in the labels.

  Per-class counts are summed over the whole batch; classes absent from the labels (in the mask)
  are left out of the mean, so an absent class neither helps nor hurts.
  """
  return tversky_from_counts(*soft_counts(logits, labels, mask), alpha=alpha, beta=beta,
                             smooth=smooth)


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


@dataclasses.dataclass(frozen=True)
class Loss:
  """A weighted sum of loss terms, each split into additive sums and a reduction of them.

  `loss(logits, labels, mask)` is the loss of one batch. Over many batches (an evaluation
  split), add up `loss.sums(...)` of every batch and call `loss.reduce` once: that equals the
  loss of one batch holding every pixel, which a mean of batch losses is not (class-weighted
  cross-entropy divides by a sum of weights, Dice by per-class sums).
  """

  terms: tuple[tuple[float, Callable[..., tuple], Callable[..., jax.Array]], ...]

  def sums(self, logits: jax.Array, labels: jax.Array, mask: jax.Array | None) -> tuple:
    """Each term's additive parts for one batch (a pytree of arrays)."""
    return tuple(sums(logits, labels, mask) for _, sums, _ in self.terms)

  def reduce(self, sums: tuple) -> jax.Array:
    """The loss from the `sums` of one or many batches added up."""
    return sum(weight * reduce(*s) for (weight, _, reduce), s in zip(self.terms, sums))

  def __call__(self, logits: jax.Array, labels: jax.Array, mask: jax.Array | None) -> jax.Array:
    return self.reduce(self.sums(logits, labels, mask))


def make_loss(loss_config, class_weights: np.ndarray | None = None) -> Loss:
  """Weighted sum of the losses named in `loss_config`, callable as `(logits, labels, mask)`.

  Args:
    loss_config: the config's `loss` group (`*_weight` fields, `label_smoothing`, `focal_gamma`,
      `tversky_alpha`, `tversky_beta`, `smooth`).
    class_weights: (C,) weights for cross-entropy and focal, or None.
  """
  c = loss_config
  cw = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)
  tversky_terms = {"dice_weight": (0.5, 0.5), "jaccard_weight": (1.0, 1.0),
                   "tversky_weight": (c.tversky_alpha, c.tversky_beta)}
  terms = []
  if c.ce_weight:
    terms.append((c.ce_weight, functools.partial(
        cross_entropy_sums, class_weights=cw, label_smoothing=c.label_smoothing),
                  weighted_mean))
  if c.focal_weight:
    terms.append((c.focal_weight, functools.partial(
        focal_sums, gamma=c.focal_gamma, class_weights=cw), weighted_mean))
  for field, (alpha, beta) in tversky_terms.items():
    if c[field]:
      terms.append((c[field], soft_counts, functools.partial(
          tversky_from_counts, alpha=alpha, beta=beta, smooth=c.smooth)))
  if not terms:
    raise ValueError("loss config has every *_weight at 0: no loss to optimise")
  return Loss(tuple(terms))
