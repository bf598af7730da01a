"""Small image classifiers for the MLP-versus-CNN and parameter-sharing experiments.

``MLP`` flattens the image, so it has no notion of locality or translation: its first layer alone
holds ``H * W * C * hidden[0]`` weights. ``SimpleCNN`` stacks 3x3 ConvNormAct layers and 2x2 max
pools; with ``share_weights=False`` each of its convolutions becomes ``seg_jax.layers.LocallyConnected`` (same
receptive fields, a separate kernel per output position), which isolates the effect of weight
sharing from that of locality. Both return float32 logits ``(N, num_classes)``.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from seg_jax.layers import (
    Conv, ConvNormAct, Dropout, LocallyConnected, activation, global_avg_pool, max_pool)

Dtype = Any


class MLP(nn.Module):
  """Flatten, ``Dense -> act -> dropout`` per entry of ``hidden``, then a dense classifier."""

  num_classes: int = 10
  hidden: Sequence[int] = (512, 256)
  dropout: float = 0.0
  act: str = "relu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  min_input_size: ClassVar[int] = 1
  task: ClassVar[str] = "classification"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if x.ndim < 2:
      raise ValueError(f"MLP expects a batch (N, ...), got x of shape {tuple(x.shape)}")
    act = activation(self.act)
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.hidden):
      x = act(dense(width, name=f"dense{i}")(x))
      x = Dropout(self.dropout)(x, train=train)
    return dense(self.num_classes, name="head")(x).astype(jnp.float32)


class SimpleCNN(nn.Module):
  """Stages of 3x3 ConvNormAct layers and a 2x2 max pool, global average pool, dense head.

  Attributes:
    num_classes: classifier outputs.
    widths: channels of each stage; each stage halves the spatial size.
    convs_per_stage: ConvNormAct layers per stage.
    share_weights: ``False`` swaps every convolution for ``LocallyConnected``.
    dropout: rate before the head.
    norm: ``seg_jax.layers.Norm`` kind.
    act: activation name.
  """

  num_classes: int = 10
  widths: Sequence[int] = (32, 64, 128)
  convs_per_stage: int = 1
  share_weights: bool = True
  dropout: float = 0.0
  norm: str = "batch"
  act: str = "relu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  # Smallest side for the default ``widths`` (three stages, each halving it); in general it is
  # ``2 ** len(widths)``, and a smaller input raises a ValueError saying so.
  min_input_size: ClassVar[int] = 8
  task: ClassVar[str] = "classification"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if x.ndim != 4:
      raise ValueError(f"SimpleCNN expects an NHWC batch (4 dims), got x of shape "
                       f"{tuple(x.shape)}")
    smallest = 2 ** len(self.widths)
    if min(x.shape[1:3]) < smallest:
      raise ValueError(f"SimpleCNN with {len(self.widths)} stages needs H, W >= {smallest}, got "
                       f"x of shape {tuple(x.shape)}")
    conv = functools.partial(ConvNormAct, norm=self.norm, act=self.act,
                             conv=Conv if self.share_weights else LocallyConnected,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    for stage, width in enumerate(self.widths, start=1):
      for i in range(1, self.convs_per_stage + 1):
        x = conv(width, name=f"conv{stage}_{i}")(x, train=train)
      x = max_pool(x, (2, 2))
    x = Dropout(self.dropout)(global_avg_pool(x), train=train)
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="head")(x).astype(jnp.float32)
