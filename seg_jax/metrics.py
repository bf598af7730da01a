"""Segmentation metrics from a confusion matrix accumulated over a whole evaluation set.

Conventions: rows of the confusion matrix are the true class, columns the predicted class.
A class absent from both labels and predictions has IoU and Dice NaN (0/0) and is left out of
`miou`, `mean_dice` and `fw_iou`; a class absent from the labels has accuracy NaN and is left out
of `mean_accuracy`. Scores of an empty matrix are NaN.
"""

from __future__ import annotations

from typing import Any

import clu.metrics
import flax
import jax
import jax.numpy as jnp
import numpy as np

from seg_jax import losses


def confusion_matrix(labels: jax.Array, preds: jax.Array, num_classes: int,
                     ignore_index: int = 255, mask: jax.Array | None = None) -> jax.Array:
  """int32 (num_classes, num_classes) counts of (true, predicted) pixel pairs; jittable.

  Pixels whose label is `ignore_index` or outside [0, num_classes), or where `mask` is False,
  are not counted.
  """
  labels = jnp.asarray(labels).astype(jnp.int32).reshape(-1)
  preds = jnp.asarray(preds).astype(jnp.int32).reshape(-1)
  if labels.shape != preds.shape:
    raise ValueError(f"labels has {labels.size} pixels but preds has {preds.size}")
  if mask is not None:
    mask = jnp.asarray(mask).astype(bool).reshape(-1)
    if mask.shape != labels.shape:
      raise ValueError(f"mask has {mask.size} entries but labels has {labels.size} pixels")
  valid = losses.valid_mask(labels, num_classes, ignore_index, mask)
  valid &= (preds >= 0) & (preds < num_classes)
  index = jnp.where(valid, labels * num_classes + preds, 0)
  counts = jnp.zeros(num_classes * num_classes, jnp.int32).at[index].add(valid.astype(jnp.int32))
  return counts.reshape(num_classes, num_classes)


def _nan_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  """num / den with NaN where den is 0."""
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _nanmean(x: np.ndarray) -> float:
  """Mean over non-NaN entries; NaN if there are none."""
  x = x[~np.isnan(x)]
  return float(x.mean()) if x.size else float("nan")


def scores(cm: Any) -> dict[str, Any]:
  """Scores of a confusion matrix (rows true, columns predicted).

  Returns:
    dict with floats `miou`, `pixel_accuracy`, `mean_accuracy`, `mean_dice`, `fw_iou` and
    float64 (C,) arrays `iou`, `accuracy`, `dice` (NaN for absent classes, see module doc).
  """
  cm = np.asarray(cm, np.float64)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f"cm must be a square matrix, got shape {cm.shape}")
  tp = np.diag(cm)
  true_count = cm.sum(axis=1)
  pred_count = cm.sum(axis=0)
  total = cm.sum()
  union = true_count + pred_count - tp
  iou = _nan_divide(tp, union)
  dice = _nan_divide(2 * tp, true_count + pred_count)
  accuracy = _nan_divide(tp, true_count)
  freq = true_count / total if total > 0 else np.zeros_like(true_count)
  seen = ~np.isnan(iou)
  fw_iou = float(np.sum(freq[seen] * iou[seen])) if total > 0 else float("nan")
  return {
      "miou": _nanmean(iou),
      "iou": iou,
      "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
      "accuracy": accuracy,
      "mean_accuracy": _nanmean(accuracy),
      "dice": dice,
      "mean_dice": _nanmean(dice),
      "fw_iou": fw_iou,
  }


# Class means that have an `_excluding` twin, with the per-class score each is the mean of.
CLASS_MEANS = (("miou", "iou"), ("mean_dice", "dice"), ("mean_accuracy", "accuracy"))


def excluding(result: dict[str, Any], class_names, exclude) -> dict[str, float]:
  """`<mean>_excluding` of each class mean of `scores` (miou, mean_dice, mean_accuracy), over
  the classes whose name is not in `exclude` (NaN classes left out as in the mean itself); {}
  when `exclude` is empty."""
  if not exclude:
    return {}
  keep = np.array([name not in exclude for name in class_names])
  return {f"{mean}_excluding": _nanmean(np.asarray(result[per_class], np.float64)[keep])
          for mean, per_class in CLASS_MEANS}


@flax.struct.dataclass
class ConfusionMatrix(clu.metrics.Metric):
  """clu metric that sums confusion matrices over every batch of an evaluation.

  Inside a jitted step use `from_model_output`; on the host start from `empty(num_classes)`
  and `merge` the per-batch metrics (converted to NumPy, merging promotes to int64 so large
  evaluation sets do not overflow). `compute()` returns `scores(matrix)`.
  """

  matrix: Any

  @classmethod
  def from_model_output(cls, *, labels: jax.Array, preds: jax.Array, num_classes: int,
                        ignore_index: int = 255, mask: jax.Array | None = None,
                        **_) -> ConfusionMatrix:
    """Confusion matrix of one batch."""
    return cls(matrix=confusion_matrix(labels, preds, num_classes, ignore_index, mask))

  @classmethod
  def empty(cls, num_classes: int) -> ConfusionMatrix:  # pytype: disable=signature-mismatch
    """All-zero int64 host matrix to merge batches into."""
    return cls(matrix=np.zeros((num_classes, num_classes), np.int64))

  def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
    """Sum of two matrices (int64 when either side is a NumPy int64 array)."""
    if isinstance(self.matrix, np.ndarray) or isinstance(other.matrix, np.ndarray):
      return type(self)(matrix=np.asarray(self.matrix, np.int64) + np.asarray(other.matrix,
                                                                               np.int64))
    return type(self)(matrix=self.matrix + other.matrix)

  def reduce(self) -> ConfusionMatrix:
    """Sums a stack of matrices (leading axis) into one."""
    return type(self)(matrix=self.matrix.sum(axis=0))

  def compute(self) -> dict[str, Any]:
    """`scores` of the accumulated matrix."""
    return scores(self.matrix)


def format_table(result: dict[str, Any], class_names: tuple[str, ...] | list[str],
                 exclude: tuple[str, ...] | list[str] = ()) -> str:
  """Plain-text per-class table (IoU, Dice, accuracy) with the summary scores under it.

  With `exclude` (the classes left out of `excluding`), the class means without them follow,
  labelled with the names left out.
  """
  summary = {key: key for key in ("miou", "mean_dice", "mean_accuracy", "pixel_accuracy",
                                  "fw_iou")}
  if exclude:
    summary.update({f"{mean}_excluding": f"{mean} w/o {', '.join(exclude)}"
                    for mean, _ in CLASS_MEANS})
  width = max(len(n) for n in (*class_names, *summary.values())) + 2
  lines = [f"{'class':<{width}}{'IoU':>8}{'Dice':>8}{'Acc':>8}"]
  for i, name in enumerate(class_names):
    row = [result["iou"][i], result["dice"][i], result["accuracy"][i]]
    lines.append(f"{name:<{width}}" + "".join(f"{v:>8.4f}" for v in row))
  for key, label in summary.items():
    lines.append(f"{label:<{width}}{result[key]:>8.4f}")
  return "\n".join(lines)
