"""N-d pooling with the convolution padding vocabulary, plus resizing.

Inputs are channels-last ``(batch, *spatial, channels)``; ``window`` and ``strides`` give one
value per spatial dimension (an int applies to all). ``strides`` defaults to ``window``
(non-overlapping windows). Padded positions never win a max/min and, for ``avg_pool`` with
``count_include_pad=False``, do not count in the mean.
"""

from __future__ import annotations

from typing import Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from seg_jax.layers import arithmetic

Window = Union[int, Sequence[int]]


def _pool_geometry(x, window, strides, padding):
  ndim = x.ndim - 2
  if ndim < 1:
    raise ValueError(f"pooling expects (batch, *spatial, channels), got shape {x.shape}")
  if not isinstance(window, int):
    window = tuple(window)
    if len(window) != ndim:
      raise ValueError(f"window {window} has {len(window)} entries but input shape {x.shape} "
                       f"has {ndim} spatial dimensions")
  window = arithmetic.as_tuple("window", window, ndim)
  strides = window if strides is None else arithmetic.as_tuple("strides", strides, ndim)
  if padding == "circular":
    raise ValueError("padding='circular' is not supported by pooling")
  specs = arithmetic.per_dim_padding(padding, ndim)
  pairs = []
  for size, k, s, p in zip(x.shape[1:-1], window, strides, specs):
    arithmetic.conv_output_size(size, k, s, p)
    pairs.append(arithmetic.resolve_padding(size, k, s, p))
  return (1,) + window + (1,), (1,) + strides + (1,), [(0, 0)] + pairs + [(0, 0)]


def _reduce(x, init, op, window, strides, padding):
  dims, steps, pads = _pool_geometry(x, window, strides, padding)
  # A concrete NumPy init value keeps reduce_window on its differentiable max/min/add paths.
  return jax.lax.reduce_window(x, np.array(init, x.dtype), op, dims, steps, pads)


def max_pool(x: jax.Array, window: Window, strides=None, padding="valid") -> jax.Array:
  """Maximum over each window."""
  return _reduce(x, -jnp.inf, jax.lax.max, window, strides, padding)


def min_pool(x: jax.Array, window: Window, strides=None, padding="valid") -> jax.Array:
  """Minimum over each window."""
  return _reduce(x, jnp.inf, jax.lax.min, window, strides, padding)


def avg_pool(x: jax.Array, window: Window, strides=None, padding="valid",
             count_include_pad: bool = True) -> jax.Array:
  """Mean over each window; padded zeros count in the divisor iff ``count_include_pad``."""
  summed = _reduce(x, 0, jax.lax.add, window, strides, padding)
  if count_include_pad:
    dims, _, _ = _pool_geometry(x, window, strides, padding)
    size = 1
    for d in dims:
      size *= d
    return summed / size
  ones = jnp.ones((1,) + x.shape[1:-1] + (1,), x.dtype)
  counts = _reduce(ones, 0, jax.lax.add, window, strides, padding)
  return summed / counts


def lp_pool(x: jax.Array, window: Window, strides=None, padding="valid",
            p: float = 2.0) -> jax.Array:
  """Lp norm over each window, ``(sum |x|^p)^(1/p)``: p=1 is sum pooling, p->inf max pooling."""
  if p <= 0:
    raise ValueError(f"p must be positive, got {p!r}")
  summed = _reduce(jnp.abs(x) ** p, 0, jax.lax.add, window, strides, padding)
  return summed ** (1.0 / p)


def _adaptive_pool_matrix(size: int, bins: int) -> np.ndarray:
  """(bins, size) averaging weights of torch's adaptive pooling bins."""
  weights = np.zeros((bins, size), np.float32)
  for i in range(bins):
    start, stop = (i * size) // bins, -(-((i + 1) * size) // bins)
    weights[i, start:stop] = 1.0 / (stop - start)
  return weights


def adaptive_avg_pool(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
  """Averages NHWC ``x`` into ``output_size`` bins exactly like ``torch.nn.AdaptiveAvgPool2d``."""
  if x.ndim != 4:
    raise ValueError(f"adaptive_avg_pool expects an NHWC batch, got shape {tuple(x.shape)}")
  if tuple(x.shape[1:3]) == tuple(output_size):
    return x
  rows = jnp.asarray(_adaptive_pool_matrix(x.shape[1], output_size[0]), x.dtype)
  cols = jnp.asarray(_adaptive_pool_matrix(x.shape[2], output_size[1]), x.dtype)
  return jnp.einsum("ih,nhwc,jw->nijc", rows, x, cols, preferred_element_type=jnp.float32).astype(
      x.dtype)


def global_avg_pool(x: jax.Array, keepdims: bool = False) -> jax.Array:
  """Mean over all spatial dimensions: ``(N, *spatial, C) -> (N, C)``."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)), keepdims=keepdims)


def global_max_pool(x: jax.Array, keepdims: bool = False) -> jax.Array:
  """Maximum over all spatial dimensions: ``(N, *spatial, C) -> (N, C)``."""
  return jnp.max(x, axis=tuple(range(1, x.ndim - 1)), keepdims=keepdims)


def resize(x: jax.Array, size: Sequence[int], method: str = "bilinear") -> jax.Array:
  """Resizes ``(N, *spatial, C)`` to ``size`` spatially, without antialiasing.

  ``bilinear`` samples at pixel centres (PyTorch's ``align_corners=False``); ``nearest`` copies
  the nearest pixel and is the one to use for label maps.
  """
  if method not in ("bilinear", "nearest"):
    raise ValueError(f"method must be 'bilinear' or 'nearest', got {method!r}")
  size = tuple(size)
  if len(size) != x.ndim - 2:
    raise ValueError(f"size {size} must have one entry per spatial dimension of shape {x.shape}")
  if size == tuple(x.shape[1:-1]):
    return x
  method = "linear" if method == "bilinear" else "nearest"
  return jax.image.resize(x, x.shape[:1] + size + x.shape[-1:], method=method, antialias=False)
