"""Scenes larger than memory, predicted window by window and scored strip by strip.

A scene (`seg_jax.data.windows.Scene`: a raster pair read window by window) is predicted with
the slide mode of `seg_jax.inference`: the same windows, blending weights, TTA and batches
(`inference._grid`, `_axis_weights`, `window_predictor`), so its probabilities are those
`inference`'s slide mode gives the whole scene in one piece. Only a strip one window high and
the scene's width is held: windows are predicted one row of windows at a time, and the rows no
later window reaches are handed on (`strips`) and dropped. Windows that overlap no labelled
chunk of the scene's scan (nodata or ignored everywhere) are not predicted but counted; their
pixels count in no score. A scene smaller than a window is padded by reflection, as inference
pads an image.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Iterator
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from seg_jax import inference
from seg_jax import losses
from seg_jax import metrics as metrics_lib


@dataclasses.dataclass
class Strip:
  """Window predictions accumulated over rows [top, top + window height) of a scene."""

  top: int
  probs: np.ndarray  # (rows, W, C) float32 weighted sums of window probabilities
  weights: np.ndarray  # (rows, W) float32 sums of their weights
  labels: np.ndarray  # (rows, W) uint8, the ignore index where no window was read
  ignore_index: int
  bottom: int = 0  # the row below the lowest window added

  def add(self, y: int, x: int, probs: np.ndarray, weight: np.ndarray, label: np.ndarray):
    """Adds a window's probabilities (h, w, C) at (y, x) with its blending weights (h, w)."""
    h, w = weight.shape
    rows, columns = slice(y - self.top, y - self.top + h), slice(x, x + w)
    self.probs[rows, columns] += probs * weight[..., None]
    self.weights[rows, columns] += weight
    self.labels[rows, columns] = label
    self.bottom = max(self.bottom, y + h)

  def finish(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(blended probabilities, labels) of the first `rows` rows; the strip moves past them."""
    weights = np.maximum(self.weights[:rows], np.finfo(np.float32).tiny)[..., None]
    out = self.probs[:rows] / weights, self.labels[:rows].copy()
    self.probs, self.weights = _shift(self.probs, rows, 0), _shift(self.weights, rows, 0)
    self.labels = _shift(self.labels, rows, self.ignore_index)
    self.top += rows
    return out


def _shift(array: np.ndarray, rows: int, fill) -> np.ndarray:
  """`array` moved up by `rows` rows, `fill` below."""
  out = np.roll(array, -rows, axis=0)
  out[len(out) - rows:] = fill
  return out


class _Padded:
  """A scene smaller than a window, in memory, padded by reflection up to the window (its
  padding labelled `ignore_index`)."""

  def __init__(self, whole: dict[str, np.ndarray], window: tuple[int, int], ignore_index: int):
    height, width = whole["label"].shape
    pad = ((0, max(window[0] - height, 0)), (0, max(window[1] - width, 0)))
    self.image = np.pad(whole["image"], pad + ((0, 0),), mode="reflect")
    self.label = np.pad(whole["label"], pad, constant_values=ignore_index)
    self.shape = self.label.shape

  def read(self, y: int, x: int, h: int, w: int) -> dict[str, np.ndarray]:
    return {"image": self.image[y:y + h, x:x + w], "label": self.label[y:y + h, x:x + w]}

  def labelled(self, y: int, x: int, h: int, w: int) -> bool:
    del y, x, h, w
    return True


def _batches(predict, scene, y: int, xs: list[int], size: tuple[int, int], n: int):
  """(x, probabilities, labels) of the windows at row y, columns xs, predicted n at a time."""
  h, w = size
  for start in range(0, len(xs), n):
    reads = [scene.read(y, x, h, w) for x in xs[start:start + n]]
    windows = np.zeros((n, h, w, reads[0]["image"].shape[-1]), reads[0]["image"].dtype)
    for k, read in enumerate(reads):  # rows past the reads are padding, discarded
      windows[k] = read["image"]
    probs = np.asarray(predict(windows))
    for k, (x, read) in enumerate(zip(xs[start:start + n], reads)):
      yield x, probs[k], read["label"]


def strips(model, variables, scene, *, mean, std, scale: float, dtype, ignore_index: int,
           window: tuple[int, int], overlap: float, blend: str, tta: str, batch_size: int,
           counts: dict[str, int], **unused: Any) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
  """(first row, probabilities (rows, W, C), labels (rows, W)) of a scene, top to bottom.

  Rows no predicted window covers are not handed on. `mean`, `std` are the training data's (of
  scaled values); `window`, `overlap`, `blend`, `tta` and `batch_size` as for
  `inference.predict` in slide mode. `counts` gets the numbers of windows "predicted" and
  "skipped".
  """
  del unused  # mode and scales: slide at scale 1, checked by seg_jax.checks
  (height, width), (h, w) = scene.shape, tuple(window)
  overlap_px = (int(overlap * h), int(overlap * w))
  predict = inference.window_predictor(model, variables, tta=tta, mean=mean, std=std,
                                       value_scale=scale, dtype=dtype)
  if height < h or width < w:  # smaller than a window: padded by reflection, as inference does
    scene = _Padded(scene.read(0, 0, height, width), (h, w), ignore_index)
  ys, xs = inference._grid(scene.shape, (h, w), overlap_px)  # pylint: disable=protected-access
  wy = inference._axis_weights(ys, h, blend)  # pylint: disable=protected-access
  wx = dict(zip(xs, inference._axis_weights(xs, w, blend)))  # pylint: disable=protected-access
  n = min(batch_size, len(ys) * len(xs))  # inference's batch: one compiled shape per scene
  strip = None

  def finish(rows: int):  # a padded scene's padding is cut off
    top = strip.top
    probs, labels = strip.finish(rows)
    return top, probs[:height - top, :width], labels[:height - top, :width]

  for i, y in enumerate(ys):
    if strip is not None and y > strip.top:
      yield finish(y - strip.top)
      strip = strip if strip.bottom > strip.top else None  # None: nothing pending
    row = [x for x in xs if scene.labelled(y, x, h, w)]
    counts["skipped"] = counts.get("skipped", 0) + len(xs) - len(row)
    counts["predicted"] = counts.get("predicted", 0) + len(row)
    for x, probs, label in _batches(predict, scene, y, row, (h, w), n):
      if strip is None:
        strip = Strip(y, np.zeros((h, scene.shape[1], probs.shape[-1]), np.float32),
                      np.zeros((h, scene.shape[1]), np.float32),
                      np.full((h, scene.shape[1]), ignore_index, np.uint8), ignore_index)
      strip.add(y, x, probs, np.outer(wy[i], wx[x]), label)
  if strip is not None and strip.top < height:
    yield finish(min(h, height - strip.top))


@functools.partial(jax.jit, static_argnames=("num_classes", "ignore_index", "loss_fn"))
def _score(probs, labels, *, num_classes: int, ignore_index: int, loss_fn: losses.Loss):
  labels = labels.astype(jnp.int32)[None]
  mask = losses.valid_mask(labels, num_classes, ignore_index)
  matrix = metrics_lib.confusion_matrix(labels, jnp.argmax(probs, axis=-1)[None], num_classes,
                                        ignore_index, mask)
  log_probs = jnp.log(jnp.maximum(probs, jnp.finfo(jnp.float32).tiny))[None]
  return matrix, loss_fn.sums(log_probs, labels, mask)


def score_probabilities(probs: np.ndarray, labels: np.ndarray, *, num_classes: int,
                        ignore_index: int, loss_fn: losses.Loss) -> tuple[Any, Any]:
  """(confusion matrix, loss sums) of probabilities (H, W, C) against labels (H, W).

  The loss is the configured loss of the probabilities' logarithms in place of logits. One
  jitted computation, compiled once per shape.
  """
  matrix, sums = _score(probs, np.asarray(labels), num_classes=num_classes,
                        ignore_index=ignore_index, loss_fn=loss_fn)
  return metrics_lib.ConfusionMatrix(matrix=matrix), sums


def score_scene(model, variables, scene, *, num_classes: int, ignore_index: int,
                loss_fn: losses.Loss, **options: Any) -> tuple[list[Any], list[Any]]:
  """(confusion matrices, loss sums) of the strips of `scene` that hold a labelled pixel.

  `options` are those of `strips`; each strip is cut to the windows' columns that hold its
  labelled pixels.
  """
  start, counts, cms, sums = time.time(), {}, [], []
  w = options["window"][1]
  for _, probs, labels in strips(model, variables, scene, ignore_index=ignore_index,
                                 counts=counts, **options):
    columns = np.flatnonzero((labels < num_classes).any(axis=0))
    if not len(columns):
      continue
    # Whole windows' columns, so that strips come in few shapes (one compile each).
    cut = slice(columns[0] // w * w, -(-(columns[-1] + 1) // w) * w)
    cm, loss_sums = score_probabilities(probs[:, cut], labels[:, cut], num_classes=num_classes,
                                        ignore_index=ignore_index, loss_fn=loss_fn)
    cms.append(cm)
    sums.append(loss_sums)
  logging.info("%s: %dx%d scored window by window in %.1fs (%d windows predicted, %d without "
               "a labelled pixel skipped)", scene.name, scene.shape[1], scene.shape[0],
               time.time() - start, counts.get("predicted", 0), counts.get("skipped", 0))
  return cms, sums
