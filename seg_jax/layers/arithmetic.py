"""Convolution arithmetic: padding vocabulary, output sizes and receptive fields.

Follows Dumoulin & Visin, "A guide to convolution arithmetic for deep learning" (2016). For one
spatial dimension with input size ``i``, kernel ``k``, stride ``s``, dilation ``d`` and padding
``(lo, hi)``, the effective (dilated) kernel is ``k_e = d * (k - 1) + 1`` and the output size is

    o = floor((i + lo + hi - k_e) / s) + 1.

Padding names:
  * ``"valid"``: no padding, ``o = floor((i - k_e) / s) + 1``.
  * ``"same"``: ``o = ceil(i / s)``. The total padding ``max((o - 1) * s + k_e - i, 0)`` is split
    with the smaller half on the low side (top/left) and the extra pixel, if any, on the high side
    (bottom/right), exactly as XLA and TensorFlow do. With an even kernel and stride 1 that means
    one more row/column of zeros at the bottom/right.
  * ``"full"``: every position where the kernel touches the input, ``lo = hi = k_e - 1``,
    ``o = i + k_e - 1`` at stride 1.
  * ``"circular"``: the ``"same"`` amounts, filled by wrapping around (periodic images). Only the
    ``Conv`` layer accepts it; sizes are those of ``"same"``.
  * an ``int`` ``p``: ``(p, p)``; a pair ``(lo, hi)``: explicit amounts.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence, Union

from jax import export

Padding = Union[str, int, tuple[int, int]]

PADDING_NAMES = ("valid", "same", "full", "circular")


def _check_positive(name: str, value: int) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_size(value) -> None:
  """A spatial size: a positive int, or a symbolic dimension of ``jax.export`` (always >= 1),
  so models trace with symbolic heights and widths for export."""
  if not export.is_symbolic_dim(value):
    _check_positive("size", value)


def _effective_kernel(kernel_size: int, dilation: int) -> int:
  return dilation * (kernel_size - 1) + 1


def resolve_padding(size: int, kernel_size: int, stride: int = 1, padding: Padding = "valid",
                    dilation: int = 1) -> tuple[int, int]:
  """Returns the explicit ``(low, high)`` padding of one dimension."""
  _check_size(size)
  _check_positive("kernel_size", kernel_size)
  _check_positive("stride", stride)
  _check_positive("dilation", dilation)
  k_e = _effective_kernel(kernel_size, dilation)
  if isinstance(padding, str):
    if padding == "valid":
      return (0, 0)
    if padding in ("same", "circular"):
      out = -(-size // stride)
      total = max((out - 1) * stride + k_e - size, 0)
      return (total // 2, total - total // 2)
    if padding == "full":
      return (k_e - 1, k_e - 1)
    raise ValueError(f"padding must be one of {PADDING_NAMES}, an int or a (low, high) pair, "
                     f"got {padding!r}")
  if isinstance(padding, int) and not isinstance(padding, bool):
    pair = (padding, padding)
  elif (isinstance(padding, (tuple, list)) and len(padding) == 2
        and all(isinstance(p, int) and not isinstance(p, bool) for p in padding)):
    pair = (int(padding[0]), int(padding[1]))
  else:
    raise ValueError(f"padding must be one of {PADDING_NAMES}, an int or a (low, high) pair, "
                     f"got {padding!r}")
  if pair[0] < 0 or pair[1] < 0:
    raise ValueError(f"padding must be non-negative, got {padding!r}")
  return pair


def conv_output_size(size: int, kernel_size: int, stride: int = 1, padding: Padding = "valid",
                     dilation: int = 1) -> int:
  """Output length of a convolution (or pooling) along one dimension.

  Raises:
    ValueError: for a non-positive size, kernel, stride or dilation, an unknown padding, or a
      dilated kernel larger than the padded input.
  """
  lo, hi = resolve_padding(size, kernel_size, stride, padding, dilation)
  k_e = _effective_kernel(kernel_size, dilation)
  if size + lo + hi < k_e:
    raise ValueError(
        f"kernel_size={kernel_size} (dilation={dilation}, effective {k_e}) is larger than the "
        f"padded input: size={size} + padding {(lo, hi)} = {size + lo + hi}")
  return (size + lo + hi - k_e) // stride + 1


def conv_transpose_output_size(size: int, kernel_size: int, stride: int = 1,
                               padding: Padding = "valid", dilation: int = 1,
                               output_padding: int = 0) -> int:
  """Output length of the transposed convolution that undoes ``conv_output_size``'s shape map.

  A strided convolution maps several input sizes to the same output size; ``output_padding``
  (``0 <= output_padding < stride``) picks which one the transposed convolution produces:
  ``(size - 1) * stride + k_e - low - high + output_padding``. With ``"same"`` padding the result
  is ``size * stride - output_padding`` (TensorFlow's ``size * stride`` when it is 0), so that the
  matching ``"same"`` convolution maps it back to ``size``.
  """
  _check_size(size)
  _check_positive("kernel_size", kernel_size)
  _check_positive("stride", stride)
  _check_positive("dilation", dilation)
  if (not isinstance(output_padding, int) or isinstance(output_padding, bool)
      or not 0 <= output_padding < stride):
    raise ValueError(f"output_padding must be an int in [0, stride={stride}), "
                     f"got {output_padding!r}")
  if padding == "circular":
    raise ValueError("padding='circular' has no transposed form; use 'same'")
  if padding == "same":
    return size * stride - output_padding
  lo, hi = resolve_padding(size, kernel_size, stride, padding, dilation)
  out = (size - 1) * stride + _effective_kernel(kernel_size, dilation) - lo - hi + output_padding
  if out < 1:
    raise ValueError(f"padding {padding!r} removes more than the transposed convolution of "
                     f"size={size}, kernel_size={kernel_size}, stride={stride} produces")
  return out


class ReceptiveField(NamedTuple):
  """Receptive field of a layer stack: ``size`` input pixels, output steps of ``stride`` pixels."""
  size: int
  stride: int


def receptive_field(layers: Sequence[Sequence[int]]) -> ReceptiveField:
  """Receptive field of a stack of ``(kernel_size, stride[, dilation])`` layers, first layer first.

  Each layer grows the field by ``(k_e - 1) * jump``, where ``jump`` is the product of the strides
  before it: ``receptive_field([(3, 1)] * 2) == (5, 1)``; ``[(7, 2), (3, 2)]`` gives ``(11, 4)``.
  """
  size, jump = 1, 1
  for i, layer in enumerate(layers):
    if len(layer) not in (2, 3):
      raise ValueError(f"layers[{i}] must be (kernel_size, stride[, dilation]), got {layer!r}")
    kernel_size, stride = layer[0], layer[1]
    dilation = layer[2] if len(layer) == 3 else 1
    _check_positive(f"layers[{i}] kernel_size", kernel_size)
    _check_positive(f"layers[{i}] stride", stride)
    _check_positive(f"layers[{i}] dilation", dilation)
    size += (_effective_kernel(kernel_size, dilation) - 1) * jump
    jump *= stride
  return ReceptiveField(size, jump)


def as_tuple(name: str, value: Union[int, Sequence[int]], ndim: int) -> tuple[int, ...]:
  """Broadcasts an int to ``ndim`` values, or checks a sequence has ``ndim`` of them."""
  if isinstance(value, int) and not isinstance(value, bool):
    value = (value,) * ndim
  value = tuple(value)
  if len(value) != ndim:
    raise ValueError(f"{name} must be an int or have {ndim} values (one per spatial dimension), "
                     f"got {value!r}")
  for v in value:
    _check_positive(name, v)
  return value


def per_dim_padding(padding, ndim: int) -> list:
  """Splits a padding argument into one padding spec per spatial dimension.

  A name, an int or a ``(low, high)`` pair of ints applies to every dimension; otherwise
  ``padding`` must hold one of those per spatial dimension, e.g. ``((1, 1), (0, 2))``.
  """
  if isinstance(padding, str) or (isinstance(padding, int) and not isinstance(padding, bool)):
    return [padding] * ndim
  if isinstance(padding, (list, tuple)):
    items = list(padding)
    if len(items) == 2 and all(isinstance(p, int) and not isinstance(p, bool) for p in items):
      return [tuple(items)] * ndim
    if len(items) == ndim:
      return [tuple(p) if isinstance(p, (list, tuple)) else p for p in items]
  raise ValueError(f"padding must be a name, an int, a (low, high) pair or one of those per "
                   f"spatial dimension ({ndim}), got {padding!r}")
