"""Convolution by hand on a real aerial image: classic filters, correlation against convolution,
padding and stride, dilation, and a bank of filters as one multi-channel ``Conv``.

    python -m experiments.convolution.run [--out=DIR] [--data_root=DIR] [--toy]

Every output comes from ``seg_jax.layers`` (``correlate``, ``convolve``, ``Conv``) and every size
from ``conv_output_size`` / ``receptive_field``, checked against the arrays.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Optional

import jax.numpy as jnp
import numpy as np

from experiments import common
from seg_jax import layers
from seg_jax import viz
from seg_jax import writers

FOLDER = os.path.dirname(os.path.abspath(__file__))
# Interchange, highway and warehouse roofs of the default image.
CENTRE = (0.62, 0.55)
# A group of warehouse roofs, for the small crop of the padding figure.
SMALL_CENTRE = (0.85, 0.22)

_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
_BINOMIAL = np.array([1, 4, 6, 4, 1], np.float32)
KERNELS = {
    "box blur": np.full((5, 5), 1 / 25, np.float32),
    "Gaussian blur": np.outer(_BINOMIAL, _BINOMIAL) / _BINOMIAL.sum() ** 2,
    "sharpen": np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32),
    "Sobel x": _SOBEL_X,
    "Sobel y": _SOBEL_X.T.copy(),
    "Laplacian": np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32),
}
# Kernels whose output is a signed change rather than a brightness.
SIGNED = ("Sobel x", "Sobel y", "Laplacian")


def streak_kernel(length: int) -> np.ndarray:
  """A one-sided diagonal line: the centre and ``length - 1`` taps towards the top-left corner."""
  kernel = np.zeros((2 * length - 1,) * 2, np.float32)
  for i in range(length):
    kernel[i, i] = 1 / length
  return kernel


def _fmt(value: float) -> str:
  return f"{value:.3g}"


def _output_panel(image, title: str, signed: bool) -> viz.Panel:
  if signed:
    return viz.Panel(image, title, cmap="RdBu_r", symmetric=True)
  return viz.Panel(image, title, vmin=0.0, vmax=1.0)


def classic_filters(x: np.ndarray, out: str) -> str:
  """Each kernel of ``KERNELS`` correlated with ``x`` ('same' padding), kernels above outputs."""
  kernel_row: list[Optional[viz.Panel]] = [None]
  output_row = [viz.Panel(x, "input (grey)", vmin=0.0, vmax=1.0)]
  rows = []
  for name, kernel in KERNELS.items():
    y = np.asarray(layers.correlate(x, kernel, padding="same"))
    common.check_shape(f"correlate(x, {name}, 'same')", y,
                       [layers.conv_output_size(n, k, 1, "same")
                        for n, k in zip(x.shape, kernel.shape)])
    kernel_row.append(viz.Panel(kernel, f"{name} kernel", cmap="RdBu_r", symmetric=True,
                                annotate=kernel.shape[0] <= 5))
    output_row.append(_output_panel(y, f"correlate(x, {name})", name in SIGNED))
    rows.append([name, common.dims(kernel), _fmt(kernel.sum()), _fmt(x.mean()),
                 _fmt(y.mean()), _fmt(np.abs(y).mean())])
  viz.save_panels([kernel_row, output_row], os.path.join(out, "filters.png"),
                  title="Classic filters: kernel (top) and correlate(image, kernel) (bottom)")
  return writers.markdown_table(
      ["filter", "kernel", "sum of weights", "input mean", "output mean", "mean |output|"], rows)


def correlation_vs_convolution(x: np.ndarray, out: str) -> str:
  """``correlate`` against ``convolve`` for an asymmetric kernel, and the kernel flip between."""
  streak = streak_kernel(max(x.shape[0] // 8, 2))
  kernels = {"streak": streak, "Sobel x": KERNELS["Sobel x"],
             "Gaussian blur": KERNELS["Gaussian blur"]}
  rows, figure = [], []
  for name, kernel in kernels.items():
    flipped = np.flip(kernel)
    cor = np.asarray(layers.correlate(x, kernel, padding="same"))
    con = np.asarray(layers.convolve(x, kernel, padding="same"))
    cor_flipped = np.asarray(layers.correlate(x, flipped, padding="same"))
    symmetric = bool(np.array_equal(kernel, flipped))
    rows.append([name, "yes" if symmetric else "no", _fmt(np.abs(cor - con).max()),
                 _fmt(np.abs(con - cor_flipped).max())])
    if name == "streak":
      figure = [[viz.Panel(kernel, "streak kernel k", cmap="gray_r"),
                 viz.Panel(flipped, "flip(k)", cmap="gray_r"),
                 viz.Panel(np.abs(cor - con), "|correlate - convolve|", cmap="magma")],
                [_output_panel(cor, "correlate(x, k)", False),
                 _output_panel(con, "convolve(x, k)", False),
                 _output_panel(cor_flipped, "correlate(x, flip(k))", False)]]
  viz.save_panels(figure, os.path.join(out, "correlate_vs_convolve.png"),
                  title="Correlation vs convolution: the same kernel, flipped")
  return writers.markdown_table(
      ["kernel", "equal to its flip", "max |correlate(x, k) - convolve(x, k)|",
       "max |convolve(x, k) - correlate(x, flip(k))|"], rows)


def padding_and_stride(x: np.ndarray, out: str, kernel_size: int) -> str:
  """A box blur with each padding name and stride 1 and 2, drawn at the same pixel scale."""
  kernel = np.full((kernel_size, kernel_size), 1 / kernel_size**2, np.float32)
  figure, rows = [], []
  for stride in (1, 2):
    row = [viz.Panel(x, f"input {common.dims(x)}", vmin=0.0, vmax=1.0)
           if stride == 1 else None]
    for padding in ("valid", "same", "full"):
      y = np.asarray(layers.correlate(x, kernel, padding=padding, stride=stride))
      size = [layers.conv_output_size(n, kernel_size, stride, padding) for n in x.shape]
      common.check_shape(f"correlate padding={padding!r} stride={stride}", y, size)
      lo, hi = layers.resolve_padding(x.shape[0], kernel_size, 1, padding)
      row.append(viz.Panel(y, f"{padding}, stride {stride}: {common.dims(size)}",
                           vmin=0.0, vmax=1.0))
      rows.append([padding, stride, f"({lo}, {hi})" if stride == 1 else "",
                   common.dims(size), common.dims(y)])
    figure.append(row)
  viz.save_panels(figure, os.path.join(out, "padding_stride.png"), same_scale=True,
                  title=f"{kernel_size}x{kernel_size} box blur: padding and stride "
                        f"(all panels at the same pixel scale)")
  return writers.markdown_table(
      ["padding", "stride", "zeros added (low, high) at stride 1", "conv_output_size",
       "array shape"], rows)


def dilation(x: np.ndarray, out: str, rates: Sequence[int]) -> str:
  """A 3x3 box blur at growing dilation: its spread-out taps and what they do to the image."""
  kernel = np.full((3, 3), 1 / 9, np.float32)
  largest = layers.receptive_field([(3, 1, max(rates))]).size
  impulse = np.zeros((largest + 2, largest + 2), np.float32)
  impulse[impulse.shape[0] // 2, impulse.shape[1] // 2] = 1.0
  taps_row, output_row, rows = [], [], []
  for rate in rates:
    extent = layers.receptive_field([(3, 1, rate)]).size
    # The response to a single bright pixel is the (dilated) kernel itself.
    taps = np.asarray(layers.convolve(impulse, kernel, padding="same", dilation=rate))
    ys, xs = np.nonzero(taps)
    common.check_shape(f"taps at dilation {rate}",
                       taps[ys.min():ys.max() + 1, xs.min():xs.max() + 1], (extent, extent))
    y = np.asarray(layers.correlate(x, kernel, padding="valid", dilation=rate))
    size = [layers.conv_output_size(n, 3, 1, "valid", rate) for n in x.shape]
    common.check_shape(f"correlate dilation={rate}", y, size)
    taps_row.append(viz.Panel(taps, f"dilation {rate}: taps span {extent}x{extent}",
                              cmap="gray_r"))
    output_row.append(viz.Panel(y, f"output {common.dims(size)} ('valid')", vmin=0.0, vmax=1.0))
    rows.append([rate, int(np.count_nonzero(taps)), f"{extent}x{extent}",
                 common.dims(size), common.dims(y)])
  viz.save_panels([taps_row, output_row], os.path.join(out, "dilation.png"),
                  title="Dilation: a 3x3 box blur whose 9 taps are spread apart")
  return writers.markdown_table(
      ["dilation", "non-zero taps", "receptive field", "conv_output_size ('valid')",
       "array shape"], rows)


_SOBEL_DIAGONAL = np.array([[-2, -1, 0], [-1, 0, 1], [0, 1, 2]], np.float32)
# The filter bank: Sobel kernels for four directions of increasing brightness (arrows in image
# coordinates), each applied to the mean of the three colours.
BANK = {
    "Sobel \u2192": _SOBEL_X,
    "Sobel \u2198": _SOBEL_DIAGONAL,
    "Sobel \u2193": _SOBEL_X.T.copy(),
    "Sobel \u2199": np.fliplr(_SOBEL_DIAGONAL).copy(),
}
GREY_WEIGHTS = (1 / 3, 1 / 3, 1 / 3)


def filter_bank(rgb: np.ndarray, out: str) -> str:
  """The filters of ``BANK`` stacked into the kernel of one ``Conv``: RGB in, one channel each out.

  Output channel f is the sum over input channels c of ``correlate(x[..., c], K[..., c, f])``.
  """
  kernel = np.stack([np.stack([k * w for w in GREY_WEIGHTS], axis=-1)
                     for k in BANK.values()], axis=-1)  # (3, 3, 3 in, F out)
  conv = layers.Conv(features=len(BANK), kernel_size=(3, 3), padding="same")
  variables = {"params": {"kernel": jnp.asarray(kernel), "bias": jnp.zeros(len(BANK))}}
  y = np.asarray(conv.apply(variables, jnp.asarray(rgb)[None]))[0]
  size = [layers.conv_output_size(n, 3, 1, "same") for n in rgb.shape[:2]]
  common.check_shape("Conv output", y, size + [len(BANK)])
  panels, rows = [viz.Panel(rgb, f"input RGB {common.dims(rgb)}")], []
  for f, name in enumerate(BANK):
    by_hand = sum(np.asarray(layers.correlate(rgb[..., c], kernel[..., c, f], padding="same"))
                  for c in range(3))
    panels.append(viz.Panel(y[..., f], f"channel {f}: {name}", cmap="RdBu_r", symmetric=True))
    rows.append([f, name, ", ".join(_fmt(w) for w in GREY_WEIGHTS),
                 f"{np.abs(y[..., f] - by_hand).max():.1e}"])
  viz.save_panels([panels], os.path.join(out, "filter_bank.png"),
                  title=f"One Conv, kernel {common.dims(kernel)}: "
                        f"{len(BANK)} filters give {len(BANK)} output channels")
  return (f"`Conv` input {common.dims(rgb)}, kernel "
          f"{common.dims(kernel)}, output "
          f"{common.dims(y)} (`conv_output_size` per side: "
          f"{common.dims(size)}).\n\n" + writers.markdown_table(
              ["channel", "filter", "weights of R, G, B",
               "max |Conv - sum over colours of correlate|"], rows))


def run(options: common.Options) -> None:
  """Writes the figures and the generated README section; see the module docstring."""
  side, small, kernel_size, rates = (32, 24, 5, (1, 2, 4)) if options.toy else (
      256, 64, 9, (1, 2, 4, 8))
  scene = common.read_scene(options.data_root)
  view = scene.crop(side, CENTRE)
  x = view.gray()
  roofs = scene.crop(small, SMALL_CENTRE)
  sections = [
      f"Image: {view.source}.",
      "### Classic filters\n\n" + classic_filters(x, options.out) + "\n\n![filters](filters.png)",
      "### Correlation and convolution\n\n" + f"Input: {roofs.source}.\n\n"
      + correlation_vs_convolution(roofs.gray(), options.out)
      + "\n\n![correlate vs convolve](correlate_vs_convolve.png)",
      "### Padding and stride\n\n" + f"Input: {roofs.source}.\n\n"
      + padding_and_stride(roofs.gray(), options.out, kernel_size)
      + "\n\n![padding and stride](padding_stride.png)",
      "### Dilation\n\n" + dilation(x, options.out, rates) + "\n\n![dilation](dilation.png)",
      "### A bank of filters as one multi-channel convolution\n\n"
      + filter_bank(view.rgb(), options.out) + "\n\n![filter bank](filter_bank.png)",
  ]
  common.finish(options, __spec__.name, sections)


if __name__ == "__main__":
  common.command(run, FOLDER)
