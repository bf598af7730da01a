"""Kernel initialisers with a meaning of their own (not random)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def bilinear_kernel_init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32
                         ) -> jax.Array:
  """Transposed-conv kernel ``(k, k, C, C)`` that upsamples each channel bilinearly."""
  del key
  k, k2, cin, cout = shape
  if k != k2 or cin != cout:
    raise ValueError(f"bilinear kernel needs a square kernel with in == out channels, got {shape}")
  factor = (k + 1) // 2
  center = factor - 1 if k % 2 == 1 else factor - 0.5
  taps = 1 - np.abs(np.arange(k) - center) / factor
  kernel = np.zeros(shape, np.float32)
  kernel[:, :, np.arange(cin), np.arange(cin)] = np.outer(taps, taps)[:, :, None]
  return jnp.asarray(kernel, dtype)
