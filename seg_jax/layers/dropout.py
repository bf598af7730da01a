"""Dropout that is active only in training, element-wise or per feature map."""

from __future__ import annotations

import flax.linen as nn
import jax


class Dropout(nn.Module):
  """Element-wise dropout, active only when ``train`` is true (rng collection ``dropout``)."""
  rate: float

  def _broadcast_dims(self, x: jax.Array) -> tuple[int, ...]:
    del x
    return ()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if not 0.0 <= self.rate < 1.0:
      raise ValueError(f"dropout rate must be in [0, 1), got {self.rate!r}")
    return nn.Dropout(self.rate, broadcast_dims=self._broadcast_dims(x),
                      deterministic=not train)(x)


class SpatialDropout(Dropout):
  """Channel-wise dropout: zeroes whole feature maps (Tompson et al. 2015), for correlated pixels."""

  def _broadcast_dims(self, x: jax.Array) -> tuple[int, ...]:
    return tuple(range(1, x.ndim - 1))
