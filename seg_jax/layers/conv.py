"""Convolutions: single-channel correlate/convolve, N-d ``Conv``, ``ConvTranspose``, separable.

Correlation vs convolution. Deep-learning "convolution" layers compute a cross-correlation:

    correlate(x, w)[i] = sum_j x[i + j] * w[j]

The convolution of signal processing flips the kernel first:

    convolve(x, w)[i] = sum_j x[i - j] * w[j] = correlate(x, flip(w))[i]   (up to the origin)

so the two differ only by a kernel flip along every spatial axis. A learned kernel absorbs the
flip, which is why networks use the cheaper correlation and still call it convolution; the
difference matters when a kernel has a meaning of its own (a Sobel filter, an imported weight).
Convolution is commutative and associative (two blurs compose into one kernel); correlation is
not.

Spatial layout is channels-last: ``(batch, *spatial, channels)``; kernels are
``(*kernel_size, in_channels // groups, features)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from seg_jax.layers import arithmetic
from seg_jax.layers.activations import activation
from seg_jax.layers.norm import Norm

Dtype = Any
Initializer = Callable[..., jax.Array]

_SPATIAL = "DHW"  # 1D uses "W", 2D "HW", 3D "DHW".


def _dimension_numbers(ndim: int) -> tuple[str, str, str]:
  spatial = _SPATIAL[-ndim:]
  return ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")


def _geometry(module, x: jax.Array):
  """Validated ``(kernel_size, strides, dilation)`` tuples of a conv module for input ``x``."""
  kernel_size = tuple(module.kernel_size)
  ndim = len(kernel_size)
  if ndim not in (1, 2, 3):
    raise ValueError(f"kernel_size must have 1, 2 or 3 entries (1D/2D/3D), got {kernel_size}")
  kernel_size = arithmetic.as_tuple("kernel_size", kernel_size, ndim)
  if x.ndim != ndim + 2:
    raise ValueError(f"{type(module).__name__} with kernel_size={kernel_size} expects input of "
                     f"rank {ndim + 2} (batch, {ndim} spatial, channels), got shape {x.shape}")
  return (kernel_size, arithmetic.as_tuple("strides", module.strides, ndim),
          arithmetic.as_tuple("dilation", module.dilation, ndim))


def _explicit_padding(spatial_shape, kernel_size, strides, padding, dilation):
  """Per-dimension ``(low, high)`` pairs, plus which dimensions wrap around."""
  specs = arithmetic.per_dim_padding(padding, len(kernel_size))
  pairs, circular = [], []
  for size, k, s, p, d in zip(spatial_shape, kernel_size, strides, specs, dilation):
    pairs.append(arithmetic.resolve_padding(size, k, s, p, d))
    arithmetic.conv_output_size(size, k, s, p, d)  # Raises for a kernel larger than the input.
    circular.append(p == "circular")
  return pairs, circular


def _single_channel(x: jax.Array, kernel: jax.Array, padding, stride, dilation) -> jax.Array:
  x = jnp.asarray(x)
  kernel = jnp.asarray(kernel)
  if x.ndim not in (1, 2, 3):
    raise ValueError(f"x must be a 1D, 2D or 3D single-channel array, got shape {x.shape}")
  if kernel.ndim != x.ndim:
    raise ValueError(f"kernel rank {kernel.ndim} (shape {kernel.shape}) does not match x rank "
                     f"{x.ndim} (shape {x.shape})")
  ndim = x.ndim
  strides = arithmetic.as_tuple("stride", stride, ndim)
  dilation = arithmetic.as_tuple("dilation", dilation, ndim)
  specs = arithmetic.per_dim_padding(padding, ndim)
  pairs = []
  for size, k, s, p, d in zip(x.shape, kernel.shape, strides, specs, dilation):
    if p == "same":
      # SciPy centres "same" on the "full" output: the extra pixel of an even kernel goes low.
      # A stride then keeps every s-th of those n outputs, ceil(n / s) of them.
      total = d * (k - 1)
      pairs.append((total - total // 2, total // 2))
    elif p == "circular":
      raise ValueError("padding='circular' is only supported by the Conv layer")
    else:
      pairs.append(arithmetic.resolve_padding(size, k, s, p, d))
    arithmetic.conv_output_size(size, k, s, pairs[-1], d)
  dtype = jnp.result_type(x.dtype, kernel.dtype, jnp.float32)
  out = jax.lax.conv_general_dilated(
      x.astype(dtype)[None, ..., None], kernel.astype(dtype)[..., None, None],
      window_strides=strides, padding=pairs, rhs_dilation=dilation,
      dimension_numbers=_dimension_numbers(ndim), precision=jax.lax.Precision.HIGHEST)
  return out[0, ..., 0]


def correlate(x: jax.Array, kernel: jax.Array, padding: arithmetic.Padding = "valid",
              stride: Union[int, Sequence[int]] = 1,
              dilation: Union[int, Sequence[int]] = 1) -> jax.Array:
  """Cross-correlation of a single-channel 1D/2D/3D array with a kernel of the same rank.

  With stride 1 and dilation 1 it equals ``scipy.signal.correlate(x, kernel, mode)`` for
  ``padding`` in ``"valid" | "same" | "full"``. Like SciPy, ``"same"`` centres the output on the
  ``"full"`` result, so an even kernel gets its extra padding pixel on the low side here (the
  ``Conv`` layer follows XLA and puts it on the high side). A stride keeps every ``stride``-th
  output of the stride-1 result.
  """
  return _single_channel(x, kernel, padding, stride, dilation)


def convolve(x: jax.Array, kernel: jax.Array, padding: arithmetic.Padding = "valid",
             stride: Union[int, Sequence[int]] = 1,
             dilation: Union[int, Sequence[int]] = 1) -> jax.Array:
  """True convolution: ``correlate`` with the kernel flipped along every axis.

  With stride 1 and dilation 1 it equals ``scipy.signal.convolve(x, kernel, mode)``.
  """
  kernel = jnp.asarray(kernel)
  return _single_channel(x, jnp.flip(kernel, axis=tuple(range(kernel.ndim))), padding, stride,
                         dilation)


class Conv(nn.Module):
  """N-d convolution (cross-correlation); the rank is ``len(kernel_size)``.

  ``groups > 1`` splits channels into independent groups; ``groups == in_channels`` is a
  depthwise convolution. The output spatial shape always equals ``conv_output_size`` per
  dimension.
  """
  features: int
  kernel_size: Sequence[int]
  strides: Union[int, Sequence[int]] = 1
  padding: Any = "same"
  dilation: Union[int, Sequence[int]] = 1
  groups: int = 1
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel_size, strides, dilation = _geometry(self, x)
    ndim = len(kernel_size)
    in_features = x.shape[-1]
    if self.groups < 1 or in_features % self.groups or self.features % self.groups:
      raise ValueError(f"groups={self.groups} must divide the input channels ({in_features}) "
                       f"and features ({self.features})")
    pairs, circular = _explicit_padding(x.shape[1:-1], kernel_size, strides, self.padding,
                                        dilation)
    if any(circular):
      wrap = [(0, 0)] + [p if c else (0, 0) for p, c in zip(pairs, circular)] + [(0, 0)]
      x = jnp.pad(x, wrap, mode="wrap")
      pairs = [(0, 0) if c else p for p, c in zip(pairs, circular)]
    kernel = self.param("kernel", self.kernel_init,
                        kernel_size + (in_features // self.groups, self.features),
                        self.param_dtype)
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), window_strides=strides, padding=pairs,
        rhs_dilation=dilation, dimension_numbers=_dimension_numbers(ndim),
        feature_group_count=self.groups)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class ConvTranspose(nn.Module):
  """N-d transposed convolution: the adjoint of ``Conv`` with the same arguments.

  For a kernel ``w`` of shape ``(*kernel_size, in_channels, features)`` it computes exactly the
  transpose (gradient with respect to its input) of ``Conv(in_channels)`` whose kernel is ``w``
  with its last two axes swapped, so ``<conv(x), y> == <x, conv_transpose(y)>``. The output
  spatial shape equals ``conv_transpose_output_size`` per dimension; with ``kernel_size ==
  strides`` and ``"valid"`` padding it multiplies each size by the stride. That case (tiles that
  do not overlap; no dilation or output padding) is computed as a matmul followed by
  depth-to-space instead of a dilated convolution: the same values, and gradients that XLA:CPU
  computes many times faster.
  """
  features: int
  kernel_size: Sequence[int]
  strides: Union[int, Sequence[int]] = 1
  padding: Any = "valid"
  dilation: Union[int, Sequence[int]] = 1
  output_padding: Union[int, Sequence[int]] = 0
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel_size, strides, dilation = _geometry(self, x)
    ndim = len(kernel_size)
    output_padding = self.output_padding
    if isinstance(output_padding, int):
      output_padding = (output_padding,) * ndim
    specs = arithmetic.per_dim_padding(self.padding, ndim)
    pairs, tiles = [], True
    for size, k, s, p, d, op in zip(x.shape[1:-1], kernel_size, strides, specs, dilation,
                                    output_padding):
      out = arithmetic.conv_transpose_output_size(size, k, s, p, d, op)
      # Padding of the forward convolution that maps `out` back to `size`.
      lo, hi = arithmetic.resolve_padding(out, k, s, p, d)
      tiles = tiles and k == s and d == 1 and lo == hi == 0 and out == size * s
      k_e = d * (k - 1) + 1
      # The forward conv's last window may stop short of the high edge by `slack` pixels.
      slack = out + lo + hi - k_e - (size - 1) * s
      pairs.append((k_e - 1 - lo, k_e - 1 - hi + slack))
    kernel = self.param("kernel", self.kernel_init, kernel_size + (x.shape[-1], self.features),
                        self.param_dtype)
    if tiles:
      y = _tile_transpose(x.astype(self.dtype), kernel.astype(self.dtype))
    else:
      flipped = jnp.flip(kernel, axis=tuple(range(ndim)))
      y = jax.lax.conv_general_dilated(
          x.astype(self.dtype), flipped.astype(self.dtype), window_strides=(1,) * ndim,
          padding=pairs, lhs_dilation=strides, rhs_dilation=dilation,
          dimension_numbers=_dimension_numbers(ndim))
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


def _tile_transpose(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """``ConvTranspose`` whose kernel equals its stride (no padding, no dilation) as one matmul.

  Every input pixel then writes its own, non-overlapping tile of the output: the tile at
  input position ``i`` is ``x[i] @ kernel`` (kernel-sized, unflipped), so the layer is a 1x1
  convolution to ``prod(kernel_size) * features`` channels followed by depth-to-space. Same
  result as the lhs-dilated convolution; its gradients are matmuls too, where XLA:CPU computes
  the kernel gradient of the dilated form as a convolution over the whole image with an
  rhs-dilated window, outside its fast convolution paths (benchmarks/README.md, "Where the time
  goes").
  """
  n, *spatial, channels = x.shape
  tile, features = kernel.shape[:-2], kernel.shape[-1]
  ndim = len(tile)
  y = jnp.dot(x.reshape(-1, channels), jnp.moveaxis(kernel, -2, 0).reshape(channels, -1))
  y = y.reshape(n, *spatial, *tile, features)
  # (n, s0, s1, .., t0, t1, .., f) -> (n, s0, t0, s1, t1, .., f): tiles next to their pixel.
  order = [0] + [a for i in range(ndim) for a in (1 + i, 1 + ndim + i)] + [1 + 2 * ndim]
  return y.transpose(order).reshape(n, *(s * t for s, t in zip(spatial, tile)), features)


class LocallyConnected(nn.Module):
  """2-D convolution without weight sharing: each output position owns its kernel.

  Same call signature and output size as ``Conv`` (``groups`` must be 1, and
  ``padding="circular"`` is rejected); geometry and padding come from
  ``arithmetic``. The kernel has shape ``(H_out, W_out, kh * kw * C_in,
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
    # conv_output_size raises if the kernel exceeds the padded input.
    sizes = [arithmetic.conv_output_size(*args) for args in geometry]
    pads = [arithmetic.resolve_padding(*args) for args in geometry]
    patches = _patches(x.astype(self.dtype), kernel_size, strides, pads, dilation, sizes)
    # fan_in is one position's patch, not the whole (positions x patch) kernel.
    init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=-2,
                                            out_axis=-1, batch_axis=(0, 1))
    kernel = self.param("kernel", init, patches.shape[1:] + (self.features,), self.param_dtype)
    y = jnp.einsum("nhwk,hwkf->nhwf", patches, kernel.astype(self.dtype))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,),
                         self.param_dtype).astype(self.dtype)
    return y


def _patches(x: jax.Array, kernel_size, strides, pads, dilation, sizes) -> jax.Array:
  """(N, H_out, W_out, C * kh * kw): the input window of every output position, channel-major
  (the layout of ``jax.lax.conv_general_dilated_patches``).

  Cut as kh * kw strided slices of the zero-padded input: moving data only, where
  ``conv_general_dilated_patches`` computes a convolution with an identity kernel (several
  times slower on a CPU, in the forward and the backward pass).
  """
  x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  views = [
      x[:, i * dilation[0]:i * dilation[0] + (sizes[0] - 1) * strides[0] + 1:strides[0],
        j * dilation[1]:j * dilation[1] + (sizes[1] - 1) * strides[1] + 1:strides[1], :]
      for i in range(kernel_size[0]) for j in range(kernel_size[1])]
  n, h, w, c = views[0].shape
  return jnp.stack(views, axis=-1).reshape(n, h, w, c * len(views))


def _make_norm(norm: Union[str, Mapping[str, Any], Callable[..., nn.Module], None], dtype,
               param_dtype, name: str):
  """The norm module of a name, a mapping of ``Norm`` fields or a factory taking ``name=``."""
  if norm is None or isinstance(norm, str):
    return Norm(kind=norm or "none", dtype=dtype, param_dtype=param_dtype, name=name)
  if isinstance(norm, Mapping):
    return Norm(**norm, dtype=dtype, param_dtype=param_dtype, name=name)
  return norm(name=name)


def _norm_kind(norm: Any) -> Any:
  """The ``Norm`` kind of a norm given by name or by a mapping of ``Norm`` fields."""
  return norm.get("kind", Norm.kind) if isinstance(norm, Mapping) else norm


def _make_act(act: Union[str, Callable[[jax.Array], jax.Array], None]):
  if act is None or isinstance(act, str):
    return activation(act or "identity")
  return act


class ConvNormAct(nn.Module):
  """Convolution, then normalisation, then activation; each part injectable.

  ``conv`` is a module class or partial (default ``Conv``); ``norm`` a name understood by
  ``Norm``, a mapping of ``Norm``'s fields (``{"kind": "group", "num_groups": 4}``, so a config
  can set the group count) or a module factory taking ``name=``; ``act`` a name understood by
  ``activation`` or a callable. With a normalisation the convolution bias is redundant, so ``use_bias=None`` (the
  default) means "a bias only when ``norm`` is ``"none"``/``None``".
  """
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Union[int, Sequence[int]] = 1
  padding: Any = "same"
  dilation: Union[int, Sequence[int]] = 1
  groups: int = 1
  use_bias: Optional[bool] = None
  norm: Any = "batch"
  act: Any = "relu"
  conv: Callable[..., nn.Module] = Conv
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    use_bias = (_norm_kind(self.norm) in (None, "none") if self.use_bias is None
                else self.use_bias)
    x = self.conv(features=self.features, kernel_size=self.kernel_size, strides=self.strides,
                  padding=self.padding, dilation=self.dilation, groups=self.groups,
                  use_bias=use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                  name="conv")(x)
    x = _make_norm(self.norm, self.dtype, self.param_dtype, "norm")(x, train=train)
    return _make_act(self.act)(x)


class SeparableConv(nn.Module):
  """Depthwise-separable convolution (Xception): per-channel spatial conv, then a 1x1 conv.

  Costs ``k*k*C + C*F`` weights instead of ``k*k*C*F``. ``mid_norm``/``mid_act`` optionally
  normalise and activate between the two (DeepLabV3+ puts BatchNorm+ReLU there).
  """
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Union[int, Sequence[int]] = 1
  dilation: Union[int, Sequence[int]] = 1
  padding: Any = "same"
  use_bias: bool = False
  depth_multiplier: int = 1
  mid_norm: Optional[Any] = None
  mid_act: Optional[Any] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    channels = x.shape[-1]
    x = Conv(channels * self.depth_multiplier, self.kernel_size, strides=self.strides,
             padding=self.padding, dilation=self.dilation, groups=channels, use_bias=False,
             dtype=self.dtype, param_dtype=self.param_dtype, name="depthwise")(x)
    if self.mid_norm is not None:
      x = _make_norm(self.mid_norm, self.dtype, self.param_dtype, "mid_norm")(x, train=train)
    if self.mid_act is not None:
      x = _make_act(self.mid_act)(x)
    ones = (1,) * len(tuple(self.kernel_size))
    return Conv(self.features, ones, use_bias=self.use_bias, dtype=self.dtype,
                param_dtype=self.param_dtype, name="pointwise")(x)


class SeparableConvNormAct(nn.Module):
  """``SeparableConv`` with norm + activation after both the depthwise and the pointwise conv.

  The "sep conv" block of DeepLabV3+ (Chen et al. 2018); children ``conv`` and ``norm``.
  """
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Union[int, Sequence[int]] = 1
  dilation: Union[int, Sequence[int]] = 1
  norm: Any = "batch"  # a name or a mapping of Norm fields, as in ConvNormAct
  act: str = "relu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = SeparableConv(self.features, self.kernel_size, strides=self.strides,
                      dilation=self.dilation, mid_norm=self.norm, mid_act=self.act, **kw,
                      name="conv")(x, train=train)
    x = _make_norm(self.norm, self.dtype, self.param_dtype, "norm")(x, train=train)
    return activation(self.act)(x)

