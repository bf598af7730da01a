"""Small image classifiers for the MLP-versus-CNN and parameter-sharing experiments.

``MLP`` flattens the image, so it has no notion of locality or translation: its first layer alone
holds ``H * W * C * hidden[0]`` weights. ``SimpleCNN`` stacks 3x3 ConvNormAct layers and 2x2 max
pools; with ``share_weights=False`` each of its convolutions becomes ``LocallyConnected`` (same
receptive fields, a separate kernel per output position), which isolates the effect of weight
sharing from that of locality. Both return float32 logits ``(N, num_classes)``.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from seg_jax.layers import Conv, ConvNormAct, Dropout, activation, global_avg_pool, max_pool
from seg_jax.layers import arithmetic

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


class LocallyConnected(nn.Module):
  """2-D convolution without weight sharing: each output position owns its kernel.

  Same call signature and output size as ``seg_jax.layers.Conv`` (``groups`` must be 1, and
  ``padding="circular"`` is rejected); geometry and padding come from
  ``seg_jax.layers.arithmetic``. The kernel has shape ``(H_out, W_out, kh * kw * C_in,
  features)``, so it is fixed by the input size seen at init.
  """

  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: int | Sequence[int] = 1
  padding: Any = "same"
  dilation: int | Sequence[int] = 1
  groups: int = 1
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4 or len(self.kernel_size) != 2:
      raise ValueError(f"LocallyConnected is 2-D: needs NHWC input and a 2-entry kernel_size, "
                       f"got x of shape {tuple(x.shape)} and kernel_size {self.kernel_size!r}")
    if self.groups != 1:
      raise ValueError(f"LocallyConnected supports groups=1 only, got {self.groups}")
    kernel_size = arithmetic.as_tuple("kernel_size", self.kernel_size, 2)
    strides = arithmetic.as_tuple("strides", self.strides, 2)
    dilation = arithmetic.as_tuple("dilation", self.dilation, 2)
    specs = arithmetic.per_dim_padding(self.padding, 2)
    if any(isinstance(p, str) and p == "circular" for p in specs):
      raise ValueError("LocallyConnected does not support padding='circular'")
    geometry = list(zip(x.shape[1:3], kernel_size, strides, specs, dilation))
    for args in geometry:
      arithmetic.conv_output_size(*args)  # Raises if the kernel exceeds the padded input.
    pads = [arithmetic.resolve_padding(*args) for args in geometry]
    patches = jax.lax.conv_general_dilated_patches(
        x.astype(self.dtype), kernel_size, strides, pads, rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    # fan_in is one position's patch, not the whole (positions x patch) kernel.
    init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=-2,
                                            out_axis=-1, batch_axis=(0, 1))
    kernel = self.param("kernel", init, patches.shape[1:] + (self.features,), self.param_dtype)
    y = jnp.einsum("nhwk,hwkf->nhwf", patches, kernel.astype(self.dtype))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,),
                         self.param_dtype).astype(self.dtype)
    return y


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
