"""Pictures of results: label maps, overlays with a class legend, prediction grids, confusion
matrix, training curves. The only module that imports matplotlib."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from seg_jax.data.palettes import encode_mask
from seg_jax.data.palettes import palette_colors


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


ERROR_COLOR = (255, 0, 0)


def _pyplot():
  """matplotlib.pyplot on the file-only Agg backend."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _font(size: int) -> ImageFont.ImageFont:
  return ImageFont.load_default(size=size)


def _text_size(width: int) -> int:
  """Font size in pixels for a picture `width` pixels wide: readable when shown whole."""
  return int(np.clip(width // 60, 11, 40))


def overlay(image: np.ndarray, labels: np.ndarray, palette: Any, alpha: float = 0.5
            ) -> np.ndarray:
  """uint8 (H, W, 3): the image blended with each pixel's class colour.

  Pixels of no class (labels outside [0, num_classes), e.g. ignore_index) keep the image.
  """
  image = np.clip(np.asarray(image, np.float32), 0, 255)
  labels = np.asarray(labels)
  colours = encode_mask(labels, palette).astype(np.float32)
  has_class = ((labels >= 0) & (labels < len(palette_colors(palette))))[..., None]
  blended = np.where(has_class, (1 - alpha) * image + alpha * colours, image)
  return np.round(blended).astype(np.uint8)


def legend(palette: Any, width: int, extra: Sequence[tuple[str, Sequence[int]]] = ()
           ) -> np.ndarray:
  """uint8 (h, width, 3) white strip: a swatch of each class colour and its name, wrapped.

  `palette` is a `Palette` (its names are used); `extra` adds (name, colour) entries such as the
  error colour of `prediction_grid`.
  """
  entries = list(zip(palette.names, palette.colors)) + list(extra)
  size = _text_size(width)
  font, pad = _font(size), max(size // 2, 3)
  measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  x, y, placed = pad, pad, []
  for name, color in entries:
    item = size + pad // 2 + int(measure.textlength(name, font=font)) + 2 * pad
    if x > pad and x + item > width:
      x, y = pad, y + size + pad
    placed.append((x, y, name, tuple(int(c) for c in color)))
    x += item
  strip = Image.new("RGB", (width, y + size + pad), (255, 255, 255))
  draw = ImageDraw.Draw(strip)
  for x, y, name, color in placed:
    draw.rectangle([x, y, x + size - 1, y + size - 1], fill=color, outline=(0, 0, 0))
    draw.text((x + size + pad // 2, y + size // 2), name, fill=(0, 0, 0), font=font, anchor="lm")
  return np.asarray(strip)


def with_legend(picture: np.ndarray, palette: Any,
                extra: Sequence[tuple[str, Sequence[int]]] = ()) -> np.ndarray:
  """The picture with `legend(palette, its width, extra)` below it."""
  return np.concatenate([picture, legend(palette, picture.shape[1], extra)], axis=0)


def error_map(image: np.ndarray, labels: np.ndarray, preds: np.ndarray, num_classes: int,
              color: Sequence[int] = ERROR_COLOR) -> np.ndarray:
  """uint8 (H, W, 3): the image in light grey with wrongly predicted pixels in `color`.

  Pixels whose label is no class (e.g. ignore_index) are not scored and stay grey.
  """
  image = np.asarray(image, np.float32)
  grey = 0.5 * (image @ np.array([0.299, 0.587, 0.114], np.float32)) + 100
  out = np.repeat(np.clip(grey, 0, 255)[..., None], 3, axis=-1).astype(np.uint8)
  labels = np.asarray(labels)
  out[(labels < num_classes) & (labels != np.asarray(preds))] = color
  return out


def prediction_grid(images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                    preds: Sequence[np.ndarray], palette: Any, gap: int = 4) -> np.ndarray:
  """uint8 picture, one row per example: image | truth | prediction | errors, legend below.

  All examples must share one size; errors (wrong pixels in red) are counted where the label is
  a class.
  """
  num_classes = len(palette_colors(palette))
  shapes = {np.shape(x)[:2] for x in list(images) + list(labels) + list(preds)}
  if len(shapes) != 1:
    raise ValueError(f"images, labels and predictions must share one (H, W), got {shapes}")
  (h, w), columns = shapes.pop(), ("image", "truth", "prediction", "errors")
  white = np.full((h, gap, 3), 255, np.uint8)
  rows = []
  for image, label, pred in zip(images, labels, preds):
    image = np.clip(np.asarray(image, np.float32), 0, 255).astype(np.uint8)
    panels = [image, encode_mask(label, palette), encode_mask(pred, palette),
              error_map(image, label, pred, num_classes)]
    rows.append(np.concatenate([p for panel in panels for p in (panel, white)][:-1], axis=1))
  width = rows[0].shape[1]
  size = _text_size(width)
  header = Image.new("RGB", (width, size + gap * 2), (255, 255, 255))
  draw = ImageDraw.Draw(header)
  for k, title in enumerate(columns):
    draw.text((k * (w + gap) + w // 2, gap + size // 2), title, fill=(0, 0, 0), font=_font(size),
              anchor="mm")
  spaced = [np.asarray(header)]
  for row in rows:
    spaced += [row, np.full((gap, width, 3), 255, np.uint8)]
  return with_legend(np.concatenate(spaced, axis=0), palette,
                     extra=(("error", ERROR_COLOR), ("not scored", palette.ignore_color)))


def save_run_curves(records: Sequence[dict], path: str, title: str = "") -> None:
  """Writes a PNG of loss and mIoU against step from a run's metrics.jsonl records.

  Each record has "step" and "split": "train" records give the training "loss", evaluation
  records ("val", "test") their "loss" and "miou". Left panel: the loss of every split;
  right panel: the mIoU of every evaluated split.
  """
  plt = _pyplot()
  fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(10, 3.8))
  splits = sorted({r["split"] for r in records}, key=lambda s: (s != "train", s))
  for split in splits:
    rows = sorted((r for r in records if r["split"] == split), key=lambda r: r["step"])
    marker = None if split == "train" else "o"
    for ax, key, name in ((ax_loss, "loss", "loss"), (ax_miou, "miou", "mIoU")):
      points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
      if points:
        ax.plot(*zip(*points), marker=marker, markersize=4, label=f"{split} {name}")
  for ax, name in ((ax_loss, "loss"), (ax_miou, "mIoU")):
    ax.set_xlabel("step")
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend()
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
