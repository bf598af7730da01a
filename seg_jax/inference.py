"""Applies a trained segmentation model to an image of any size: resize or sliding windows, TTA.

`predict(model, variables, image, ...)` returns per-class probabilities (H, W, C) at the image's
own size. The model is a Flax model with its variables, or any other callable (variables None) from
raw windows to logits, such as an exported artifact (`seg_jax.artifact`): one code path for both.

- mode="resize" is what training saw: the image is resized to the training size (the data
  pipeline's own resize), predicted in one pass, and the probabilities are resized back.
- mode="slide" predicts windows of the given size at the image's resolution. Windows start every
  `window - overlap` pixels; the last one along each axis is moved back to end at the image
  border (as MMSegmentation's slide inference does), so no window sees padding unless the image
  is smaller than a window, and then the image is padded by reflection and the result cropped.
  Overlapping predictions are blended: "uniform" (the mean of the windows covering a pixel),
  "smooth" (a Hann window that down-weights window borders) or "crop" (each window keeps only
  its central part, the overlap split half and half between neighbours: the U-Net paper's
  overlap-tile strategy). With "crop", a translation-equivariant model whose receptive field is
  smaller than the overlap gives exactly its whole-image prediction.
- tta averages the probabilities over flips ("flips": identity, horizontal, vertical, both) or
  the 8 flips and quarter turns ("flips_rot90"), each prediction turned back before averaging.
  On a non-square window a quarter turn swaps its height and width; the model, being fully
  convolutional, predicts the turned window at that shape.
- scales predict the image rescaled by each factor (s > 1 zooms in) and average the
  probabilities. In slide mode the image is rescaled and the window stays; in resize mode the
  resize target is the window times s.

Windows run in batches of a fixed size inside one jitted function, so an image of any size
compiles once per window shape (an image with fewer windows than a batch uses a smaller batch;
the last partial batch is padded and its padding discarded). Blending happens on the host.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from seg_jax.data import augment
from seg_jax.data import preprocess
from seg_jax.data import raster

MODES = ("resize", "slide")
BLENDS = ("uniform", "smooth", "crop")
# (quarter turns k, horizontal flip first) per transform. k=2 with a flip is a vertical flip, so
# "flips" is {identity, horizontal, vertical, both} and "flips_rot90" all 8 symmetries of a square.
TTA_TRANSFORMS = {
    "none": ((0, False),),
    "flips": ((0, False), (0, True), (2, True), (2, False)),
    "flips_rot90": tuple((k, flip) for k in range(4) for flip in (False, True)),
}


class _ByIdentity:
  """Hashes a model by identity, so jit keys its compilations on the model object.

  Flax modules holding dict fields (e.g. `backbone_kwargs`) are not hashable themselves.
  """

  def __init__(self, model):
    self.model = model

  def __hash__(self):
    return id(self.model)

  def __eq__(self, other):
    return isinstance(other, _ByIdentity) and other.model is self.model


def _transform(x: jax.Array, k: int, flip: bool) -> jax.Array:
  """Flips an NHWC batch horizontally (if `flip`), then turns it `k` quarter turns."""
  x = x[:, :, ::-1] if flip else x
  return jnp.rot90(x, k, axes=(1, 2))


def _untransform(y: jax.Array, k: int, flip: bool) -> jax.Array:
  """Inverse of `_transform`."""
  y = jnp.rot90(y, -k, axes=(1, 2))
  return y[:, :, ::-1] if flip else y


def _tta_probs(logits_fn: Callable[[jax.Array], Any], windows, tta: str) -> jax.Array:
  """Probabilities (B, h, w, C) of windows (B, h, w, bands), averaged over the TTA transforms.

  `logits_fn` maps a batch of windows to logits; it runs under `jax.jit` (a Flax model) or
  eagerly (an exported artifact, e.g. onnxruntime). The transforms are flips and quarter turns,
  which commute with the per-band normalisation `logits_fn` applies.
  """
  transforms = TTA_TRANSFORMS[tta]
  total = 0.0
  # Transforms that keep the window's shape run as one batch, those that swap H and W as another.
  for parity in (0, 1):
    group = [t for t in transforms if t[0] % 2 == parity]
    if not group:
      continue
    logits = logits_fn(jnp.concatenate([_transform(windows, *t) for t in group]))
    probs = jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    for t, p in zip(group, jnp.split(probs, len(group))):
      total = total + _untransform(p, *t)
  return total / len(transforms)


@functools.partial(jax.jit, static_argnames=("model", "tta", "dtype"))
def _window_probs(model: _ByIdentity, variables, windows, mean, std, *, tta: str, dtype):
  """Probabilities (B, h, w, C) of windows (B, h, w, bands), averaged over the TTA transforms."""

  def logits(x):
    x = augment.normalize(x, mean, std).astype(dtype)  # what the train/eval steps feed
    return model.model.apply(variables, x, train=False)

  return _tta_probs(logits, windows, tta)


def window_predictor(model, variables, *, tta: str, mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None, value_scale: float = 1.0,
                     dtype: Any = jnp.float32) -> Callable[[np.ndarray], jax.Array]:
  """A function from windows (B, h, w, bands) as stored to probabilities (B, h, w, C), averaged
  over the TTA transforms.

  A Flax `model` normalises by `mean` and `std`, which describe stored values times
  `value_scale` (`seg_jax.data.Bands.scale`); any other callable (`variables` None, e.g. an
  exported artifact) takes the raw windows and normalises itself.
  """
  if not isinstance(model, nn.Module):
    return functools.partial(_tta_probs, model, tta=tta)
  mean = np.asarray(mean, np.float32) / value_scale
  std = np.asarray(std, np.float32) / value_scale
  if mean.ndim != 1 or mean.shape != std.shape or np.min(std) <= 0:
    raise ValueError(f"mean and std must hold one value per band (std > 0), got {mean} and "
                     f"{std}")
  return functools.partial(_window_probs, _ByIdentity(model), jax.device_put(variables),
                           mean=jnp.asarray(mean), std=jnp.asarray(std), tta=tta, dtype=dtype)


def _axis_weights(starts: Sequence[int], size: int, blend: str) -> list[np.ndarray]:
  """Blending weight (size,) along one axis of each window starting at `starts`."""
  if blend == "uniform":
    return [np.ones(size, np.float32)] * len(starts)
  if blend == "smooth":
    # Hann window shifted half a pixel: largest at the centre, small but positive at the border.
    return [np.sin(np.pi * (np.arange(size) + 0.5) / size).astype(np.float32) ** 2] * len(starts)
  # crop: window i keeps [cuts[i], cuts[i+1]), the cuts lying in the middle of each overlap.
  cuts = ([starts[0]] + [(s + prev + size) // 2 for prev, s in zip(starts, starts[1:])]
          + [starts[-1] + size])
  pos = np.arange(size)
  return [((s + pos >= lo) & (s + pos < hi)).astype(np.float32)
          for s, lo, hi in zip(starts, cuts, cuts[1:])]


def _grid(size: Sequence[int], window: Sequence[int], overlap: Sequence[int]):
  """Window starts along H and along W on an image of `size` (padded up to the window)."""
  return tuple(preprocess.patch_starts(max(n, w), w, o) for n, w, o in zip(size, window, overlap))


def _slide(window_probs: Callable[[np.ndarray], jax.Array], image: np.ndarray,
           window: tuple[int, int], overlap: tuple[int, int], blend: str, batch_size: int,
           progress: Callable[[int], None]) -> np.ndarray:
  """Blended window probabilities (H, W, C) of an image (H, W, bands)."""
  (height, width), (h, w) = image.shape[:2], window
  if height < h or width < w:
    image = np.pad(image, ((0, max(h - height, 0)), (0, max(w - width, 0)), (0, 0)),
                   mode="reflect")
  ys, xs = _grid(image.shape[:2], window, overlap)
  wy, wx = _axis_weights(ys, h, blend), _axis_weights(xs, w, blend)
  boxes = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
  n = min(batch_size, len(boxes))
  acc, weight_sum = None, np.zeros(image.shape[:2], np.float32)

  def accumulate(probs: jax.Array, chunk) -> None:
    nonlocal acc
    probs = np.asarray(probs)
    if acc is None:
      acc = np.zeros((*image.shape[:2], probs.shape[-1]), np.float32)
    for k, (i, j) in enumerate(chunk):
      weight = np.outer(wy[i], wx[j])
      acc[ys[i]:ys[i] + h, xs[j]:xs[j] + w] += probs[k] * weight[..., None]
      weight_sum[ys[i]:ys[i] + h, xs[j]:xs[j] + w] += weight
    progress(len(chunk))

  pending = None
  for start in range(0, len(boxes), n):
    chunk = boxes[start:start + n]
    # Rows past the chunk are padding, discarded.
    windows = np.zeros((n, h, w, image.shape[-1]), image.dtype)
    for k, (i, j) in enumerate(chunk):
      windows[k] = image[ys[i]:ys[i] + h, xs[j]:xs[j] + w]
    probs = window_probs(windows)  # dispatched asynchronously: blend the previous batch meanwhile
    if pending is not None:
      accumulate(*pending)
    pending = (probs, chunk)
  accumulate(*pending)
  acc /= weight_sum[..., None]
  return acc[:height, :width]


def _resize_probs(probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Bilinear resize of (H, W, C) probabilities to `size` (H, W), channel by channel."""
  if probs.shape[:2] == tuple(size):
    return probs
  return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(probs[..., c]))
                              .resize((size[1], size[0]), Image.BILINEAR))
                   for c in range(probs.shape[-1])], axis=-1)


def check_options(*, mode: str, window: Sequence[int], overlap: float, blend: str, tta: str,
                  scales: Sequence[float], batch_size: int, min_size: int = 1) -> None:
  """ValueError naming the first option of `predict` that is out of range.

  `min_size` is the smallest input side the model accepts: the window (in resize mode times
  the smallest scale, the size the model then sees) must not be smaller.
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if len(window) != 2 or min(window) < 1:
    raise ValueError(f"window must be (H, W) with H, W >= 1, got {tuple(window)}")
  if not 0 <= overlap < 1:
    raise ValueError(f"overlap must be in [0, 1) (a share of the window), got {overlap}")
  if blend not in BLENDS:
    raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
  if tta not in TTA_TRANSFORMS:
    raise ValueError(f"tta must be one of {tuple(TTA_TRANSFORMS)}, got {tta!r}")
  if not scales or min(scales) <= 0:
    raise ValueError(f"scales must be positive factors, got {tuple(scales)}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  smallest = min(window) * (min(scales) if mode == "resize" else 1.0)
  if round(smallest) < min_size:
    raise ValueError(f"window {tuple(window)} (in resize mode times the smallest scale) is "
                     f"smaller than the model accepts ({min_size} pixels)")


def _passes(size: Sequence[int], mode: str, window: Sequence[int], overlap: float,
            scales: Sequence[float]) -> list[tuple[tuple[int, int], ...]]:
  """(image size, window, overlap in pixels) of the pass at each scale."""
  passes = []
  for scale in scales:
    scaled = _scale(window if mode == "resize" else size, scale)
    win = scaled if mode == "resize" else tuple(window)
    passes.append((scaled, win, (int(overlap * win[0]), int(overlap * win[1]))))
  return passes


def window_count(size: Sequence[int], window: Sequence[int], overlap: float) -> int:
  """How many windows slide mode predicts on an image of `size` (H, W), before TTA."""
  return math.prod(map(len, _grid(size, window, (int(overlap * window[0]),
                                                 int(overlap * window[1])))))


def _scale(size: Sequence[int], scale: float) -> tuple[int, int]:
  return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _check_image(image: np.ndarray, mean: Sequence[float] | None, resized: bool) -> None:
  """ValueError unless `image` is (H, W, bands) of a raster type with one `mean` per band (None:
  not checked), and 8-bit RGB if it is `resized`."""
  if image.ndim != 3 or image.dtype.name not in raster.DTYPES:
    raise ValueError(f"image must be an (H, W, bands) array of one of {raster.DTYPES}, got "
                     f"{image.dtype} {image.shape}")
  if mean is not None and np.shape(mean) != (image.shape[-1],):
    raise ValueError(f"mean and std must hold one value per band of the {image.shape} image, "
                     f"got {mean}")
  if resized and (image.dtype != np.uint8 or image.shape[-1] != 3):
    raise ValueError(f"only 8-bit RGB images are resized; predict this {image.dtype} image of "
                     f"{image.shape[-1]} bands in slide mode at scale 1")


def predict(model, variables, image: np.ndarray, *, window: tuple[int, int],
            mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
            value_scale: float = 1.0, mode: str = "resize",
            overlap: float = 0.25, blend: str = "uniform", tta: str = "none",
            scales: Sequence[float] = (1.0,), batch_size: int = 8, dtype: Any = jnp.float32,
            progress: Callable[[int, int], None] | None = None) -> np.ndarray:
  """Per-class probabilities (H, W, C) float32 of an image (H, W, bands).

  Args:
    model: a Flax segmentation model, `model.apply(variables, x, train=False)` giving logits;
      or any other callable mapping windows (B, h, w, bands) to logits (B, h, w, C) that
      normalises them itself (an exported artifact, `seg_jax.artifact.Artifact`), with
      `variables` None. Both run through the same windows, blending, TTA and scales.
    variables: the Flax model's variables ({"params": ..., "batch_stats": ...}).
    image: (H, W, bands) of any size, of a raster type (`seg_jax.data.raster.DTYPES`): uint8
      RGB for a photograph. Only uint8 RGB is resized: other images are predicted in slide
      mode at scale 1.
    mean, std: per-band normalisation of the training data, in the units of stored values times
      `value_scale` ([0, 255] for a photograph); for a model with variables only.
    value_scale: the factor from stored values to the units of `mean` and `std`.
    window: (H, W) the model sees: the resize target ("resize") or the window size ("slide");
      usually the training image size.
    mode: "resize" or "slide" (see the module docstring).
    overlap: share of a window's height and width overlapped by its neighbours ("slide").
    blend: "uniform", "smooth" or "crop" weighting of overlapping windows ("slide").
    tta: "none", "flips" or "flips_rot90".
    scales: image scale factors whose probabilities are averaged.
    batch_size: windows per jitted call (each run through every TTA transform).
    dtype: compute dtype of the model input (the config's `model.dtype`); for a model with
      variables only.
    progress: called after each batch with (windows done, windows in all), counted before TTA.
  """
  image = np.asarray(image)
  check_options(mode=mode, window=window, overlap=overlap, blend=blend, tta=tta, scales=scales,
                batch_size=batch_size)
  passes = _passes(image.shape[:2], mode, window, overlap, scales)
  _check_image(image, mean if isinstance(model, nn.Module) else None,
               resized=any(p[0] != image.shape[:2] for p in passes))
  window_probs = window_predictor(model, variables, tta=tta, mean=mean, std=std,
                                  value_scale=value_scale, dtype=dtype)
  total_windows = sum(window_count(size, win, overlap) for size, win, _ in passes)
  done = 0

  def count(n: int) -> None:
    nonlocal done
    done += n
    if progress is not None:
      progress(done, total_windows)

  total = 0.0
  for scaled_size, win, overlap_px in passes:
    scaled = preprocess.resize_image(image, scaled_size)
    probs = _slide(window_probs, scaled, win, overlap_px, blend, batch_size, count)
    total = total + _resize_probs(probs, image.shape[:2])
  return np.asarray(total / len(scales), np.float32)
