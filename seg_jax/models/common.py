"""Input checks shared by all models, and stride padding for the segmentation models.

Every segmentation model accepts any ``H, W >= 32``: the input is padded at the bottom/right to a
multiple of the model's total stride, so each downsampling halves the size exactly and skip
connections line up; the logits are cropped back to ``(H, W)`` at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
from jax import export
import jax.numpy as jnp

MIN_SEGMENTATION_SIZE = 32


def check_image_batch(x: jax.Array, min_size: int = MIN_SEGMENTATION_SIZE) -> None:
  """Raises ValueError unless ``x`` is an NHWC batch with ``H, W >= min_size``."""
  if x.ndim != 4:
    raise ValueError(f"x must be an NHWC batch (4 dims), got shape {tuple(x.shape)}")
  if x.shape[1] < min_size or x.shape[2] < min_size:
    raise ValueError(
        f"x spatial size must be at least {min_size}x{min_size}, got shape {tuple(x.shape)}")


def pad_to_multiple(x: jax.Array, multiple: int, mode: str = "reflect") -> jax.Array:
  """Pads the bottom/right of NHWC ``x`` so H and W are multiples of ``multiple``.

  Reflection keeps image statistics near the border (zeros would be a false dark frame that
  BatchNorm also sees); ``mode`` is any ``jnp.pad`` mode.
  """
  if multiple < 1:
    raise ValueError(f"multiple must be >= 1, got {multiple}")
  if mode == "reflect" and any(export.is_symbolic_dim(n) for n in x.shape[1:3]):
    return _reflect_to_multiple(x, multiple)
  pad_h = -x.shape[1] % multiple
  pad_w = -x.shape[2] % multiple
  if pad_h == 0 and pad_w == 0:
    return x
  return jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode=mode)


def _reflect_to_multiple(x: jax.Array, multiple: int) -> jax.Array:
  """``pad_to_multiple``'s reflection for a symbolic H or W (a model exported by ``jax.export``).

  ``jnp.pad`` needs the pad amounts as integers; here they depend on the symbolic size, so each
  row (column) of the padded image is gathered from its reflected index. Pads shorter than the
  image (any size >= ``multiple``) reflect exactly as ``jnp.pad``'s "reflect".
  """
  for axis in (1, 2):
    size = x.shape[axis]
    index = jax.lax.iota(jnp.int32, -(-size // multiple) * multiple)
    x = jnp.take(x, jnp.where(index < size, index, 2 * (size - 1) - index), axis=axis)
  return x


def segment_padded(x: jax.Array, stride: int, body: Callable[[jax.Array], jax.Array],
                   pad_mode: str = "reflect") -> jax.Array:
  """Runs ``body`` on ``x`` padded to a multiple of ``stride``; returns float32 logits cropped.

  ``body`` maps the padded batch to logits at the padded resolution.
  """
  check_image_batch(x)
  height, width = x.shape[1], x.shape[2]
  logits = body(pad_to_multiple(x, stride, pad_mode))
  return logits[:, :height, :width, :].astype(jnp.float32)



def feature_pyramid(features: Mapping[str, jax.Array], height: int) -> dict[int, jax.Array]:
  """``{stride: features}`` of a backbone's stages for an input of ``height`` rows.

  A stride is ``height // rows`` of a stage; where several stages share a stride the last one
  (the deepest features at that resolution) is kept. Sorted by stride, shallowest first.
  """
  pyramid = {}
  for x in features.values():
    pyramid[height // x.shape[1]] = x
  return dict(sorted(pyramid.items()))
