"""Pictures of results: coloured label maps, image | truth | prediction panels, confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from seg_jax.data.palettes import encode_mask


def prediction_panel(image: np.ndarray, label: np.ndarray, pred: np.ndarray, palette: Any
                     ) -> np.ndarray:
  """uint8 (H, 3W, 3) side by side: image | true labels | predicted labels."""
  image = np.clip(np.asarray(image, np.float32), 0, 255).astype(np.uint8)
  return np.concatenate([image, encode_mask(label, palette), encode_mask(pred, palette)], axis=1)


def save_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path: str,
                          title: str = "") -> None:
  """Writes a PNG of the row-normalised confusion matrix (rows: true class) with counts."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  cm = np.asarray(cm, np.float64)
  rows = cm.sum(axis=1, keepdims=True)
  norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
  n = len(class_names)
  fig, ax = plt.subplots(figsize=(1.1 * n + 3, 1.0 * n + 2.5))
  im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
  ax.set_xticks(range(n), class_names, rotation=45, ha="right")
  ax.set_yticks(range(n), class_names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  if title:
    ax.set_title(title)
  for i in range(n):
    for j in range(n):
      ax.text(j, i, f"{norm[i, j]:.2f}\n{int(cm[i, j])}", ha="center", va="center", fontsize=7,
              color="white" if norm[i, j] > 0.5 else "black")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def save_curves(runs: dict[str, list[dict]], path: str, keys: Sequence[str] = ("miou", "loss")
                ) -> None:
  """Writes a PNG with one panel per score in `keys` against step, one line per run.

  Args:
    runs: run label -> its metrics.jsonl records (dicts with "step" and the keys).
    path: output PNG path.
    keys: scalar record fields to plot.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False)
  for ax, key in zip(axes[0], keys):
    for label, records in runs.items():
      points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
      ax.plot(*zip(*points), marker="o", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(f"val {key}")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
