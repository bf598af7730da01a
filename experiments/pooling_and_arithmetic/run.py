"""Pooling and convolution arithmetic: max/avg/min/Lp pooling of a real aerial image, the sizes and
the overlaps of transposed convolutions, and the receptive field of the proposal's encoder.

    python -m experiments.pooling_and_arithmetic.run [--out=DIR] [--data_root=DIR] [--toy]

Pooling comes from ``seg_jax.layers`` (``max_pool``, ``avg_pool``, ``min_pool``, ``lp_pool``),
transposed convolutions from ``ConvTranspose``, sizes from ``conv_output_size``,
``conv_transpose_output_size`` and ``receptive_field``; every size is checked against an array.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from configs import default as default_config
from configs import dubai as dubai_config
from experiments import common
from seg_jax import layers
from seg_jax import models
from seg_jax.models import unet
from seg_jax import viz
from seg_jax import writers

FOLDER = os.path.dirname(os.path.abspath(__file__))
# Warehouse roofs, dark roads and a strip of vegetation of the default image.
CENTRE = (0.8, 0.35)


def pooling(rgb: np.ndarray, out: str, windows: Sequence[int]) -> str:
  """Each pooling of ``rgb`` at each window size (stride = window), one row per window."""
  x = jnp.asarray(rgb)[None]
  ones = jnp.ones_like(x)

  def power_mean(p):
    # Lp pooling sums |x|^p; dividing by the pool of ones gives the power mean of the window, on
    # the same brightness scale as the others: min <= mean <= power means <= max.
    return lambda w: layers.lp_pool(x, w, p=p) / layers.lp_pool(ones, w, p=p)

  ops = {
      "min_pool": lambda w: layers.min_pool(x, w),
      "avg_pool": lambda w: layers.avg_pool(x, w),
      "lp_pool p=2 / lp_pool(1)": power_mean(2),
      "lp_pool p=8 / lp_pool(1)": power_mean(8),
      "max_pool": lambda w: layers.max_pool(x, w),
  }
  figure, rows = [], []
  for i, window in enumerate(windows):
    row = [viz.Panel(rgb, f"input {common.dims(rgb)}") if i == 0 else None]
    size = [layers.conv_output_size(n, window, window) for n in rgb.shape[:2]]
    for name, op in ops.items():
      y = np.asarray(op(window))[0]
      common.check_shape(f"{name} window {window}", y, size + [3])
      row.append(viz.Panel(np.clip(y, 0.0, 1.0), f"{name.split(' /')[0]}, {window}x{window}"))
      rows.append([name, f"{window}x{window}", common.dims(size), common.dims(y),
                   f"{y.mean():.3f}"])
    figure.append(row)
  viz.save_panels(figure, os.path.join(out, "pooling.png"),
                  title="Pooling the same image: one row per window (stride = window)")
  return writers.markdown_table(
      ["pooling", "window", "conv_output_size", "array shape", "mean brightness"], rows)


# (input size, kernel, stride, padding, output padding, dilation): common transposed convolutions.
TRANSPOSE_CASES = (
    (4, 2, 2, "valid", 0, 1),  # U-Net's 2x2 up-convolution: exactly doubles.
    (4, 3, 2, "valid", 0, 1),
    (4, 3, 2, "same", 0, 1),  # TensorFlow/Keras "same": size * stride.
    (4, 3, 2, 1, 0, 1),  # PyTorch padding=1.
    (4, 3, 2, 1, 1, 1),  # PyTorch padding=1, output_padding=1: doubles.
    (4, 4, 2, 1, 0, 1),  # DCGAN: doubles with an even kernel.
    (4, 3, 1, "valid", 0, 1),  # Transpose of a valid convolution: grows by k - 1.
    (4, 3, 1, "full", 0, 1),  # Transpose of a full convolution: shrinks by k - 1.
    (4, 3, 1, "valid", 0, 2),  # Dilated: grows by the effective kernel 5, minus 1.
)


def _conv_pair(kernel: int, stride: int, padding, output_padding: int, dilation: int):
  common_args = dict(features=1, kernel_size=(kernel, kernel), strides=stride, padding=padding,
                     dilation=dilation, use_bias=False)
  return (layers.Conv(**common_args),
          layers.ConvTranspose(output_padding=output_padding, **common_args))


def transposed_sizes(key: jax.Array) -> str:
  """Table of ``TRANSPOSE_CASES``: predicted and actual sizes, and the gradient of ``Conv``."""
  predicted = [layers.conv_transpose_output_size(size, k, s, p, d, op)
               for size, k, s, p, op, d in TRANSPOSE_CASES]
  inputs = [(jax.random.normal(jax.random.fold_in(key, 1000 + i), (k, k, 1, 1)),
             jax.random.normal(jax.random.fold_in(key, i), (1, size, size, 1)))
            for i, (size, k, *_) in enumerate(TRANSPOSE_CASES)]

  @jax.jit
  def transposed_and_gradient(inputs):
    outputs = []
    for (w, y), (_, k, s, p, op, d), out_size in zip(inputs, TRANSPOSE_CASES, predicted):
      conv, transpose = _conv_pair(k, s, p, op, d)
      # The transposed convolution is the gradient of the convolution with respect to its input.
      grad = jax.grad(lambda x: jnp.vdot(conv.apply({"params": {"kernel": w}}, x), y))(
          jnp.zeros((1, out_size, out_size, 1)))
      outputs.append((transpose.apply({"params": {"kernel": w}}, y), grad))
    return outputs

  rows = []
  for i, ((size, k, s, p, op, d), (up, grad)) in enumerate(
      zip(TRANSPOSE_CASES, transposed_and_gradient(inputs))):
    common.check_shape(f"ConvTranspose case {i}", up, (1, predicted[i], predicted[i], 1))
    back = layers.conv_output_size(predicted[i], k, s, p, d)
    if back != size:
      raise AssertionError(f"case {i}: Conv maps the transposed output {predicted[i]} to {back}, "
                           f"not back to {size}")
    rows.append([size, k, s, repr(p), op, d, predicted[i], common.dims(up[0, ..., 0]), back,
                 f"{float(jnp.abs(grad - up).max()):.1e}"])
  return writers.markdown_table(
      ["input", "kernel", "stride", "padding", "output_padding", "dilation",
       "conv_transpose_output_size", "ConvTranspose output", "Conv maps it back to",
       "max |ConvTranspose - grad of Conv|"], rows)


def transposed_overlaps(rgb: np.ndarray, out: str, cases: Sequence[tuple[int, int]]) -> None:
  """Figure: what a transposed convolution with a kernel of ones does, per (kernel, stride).

  Each row shows the stamp of one input pixel, the overlap count of a constant input and a
  half-size image brought back up ('valid' padding).
  """
  figure = []
  small = np.asarray(layers.avg_pool(jnp.asarray(rgb)[None], 2))[0]
  for k, s in cases:
    transpose = layers.ConvTranspose(1, (k, k), strides=s, use_bias=False)
    ones = {"params": {"kernel": jnp.ones((k, k, 1, 1))}}
    impulse = np.zeros((1, 4, 4, 1), np.float32)
    impulse[0, 1, 1, 0] = 1.0
    stamp = np.asarray(transpose.apply(ones, impulse))[0, ..., 0]
    count = np.asarray(transpose.apply(ones, np.ones((1, 4, 4, 1), np.float32)))[0, ..., 0]
    # One channel at a time: the kernel has one input and one output channel.
    up = np.stack([np.asarray(transpose.apply(ones, small[None, ..., c:c + 1]))[0, ..., 0]
                   for c in range(3)], axis=-1)
    figure.append([
        viz.Panel(stamp, f"k={k}, s={s}: one pixel, 4x4 -> {common.dims(stamp)}",
                  cmap="viridis", vmin=0.0),
        viz.Panel(count, f"overlap count, 4x4 ones -> {common.dims(count)}",
                  cmap="viridis", annotate=True, vmin=0.0),
        viz.Panel(up / count.max(), f"image / max count, {common.dims(small[..., 0])} -> "
                                    f"{common.dims(up[..., 0])}"),
    ])
  viz.save_panels(figure, os.path.join(out, "transposed.png"), panel_inches=3.4,
                  title="Transposed convolution ('valid', kernel of ones): each input pixel "
                        "adds a k x k stamp,\ns pixels apart; where stamps overlap they add up")


def encoder_layers(model: Any) -> tuple[list[tuple[str, list[tuple[int, int, int]]]],
                                         list[tuple[str, tuple[int, int, int]]]]:
  """The (kernel, stride, dilation) layers of an ``asym_unet`` encoder, from the model's fields.

  Reads the ``unet_encoder`` backbone's ``widths`` (one stage each) and ``blocks`` (3x3 stride-1
  convolutions per stage; an int applies to every stage), a 2x2 stride-2 max pool before every
  stage but the first, and, when ``model.neck`` is ``"aspp"``, its ``rates``: one dilated 3x3
  branch per rate on the last stage. Returns the stages, shallowest first, and the ASPP branches
  (parallel, not stacked).
  """
  if model.backbone != "unet_encoder":
    raise ValueError(f"encoder_layers reads a unet_encoder backbone, got {model.backbone!r}")
  backbone = dict(model.backbone_kwargs)
  blocks = unet.per_stage("blocks", backbone["blocks"], len(backbone["widths"]))
  stages = [(f"stage{i}", ([(2, 2, 1)] if i else []) + [(3, 1, 1)] * n)
            for i, n in enumerate(blocks)]
  rates = dict(model.neck_kwargs)["rates"] if model.neck == "aspp" else ()
  branches = [(f"ASPP rate {r}", (3, 1, r)) for r in rates]
  return stages, branches


def _describe(layer_list: Sequence[tuple[int, int, int]]) -> str:
  convs = sum(1 for k, _, _ in layer_list if k == 3)
  parts = ["2x2/2 max pool"] if (2, 2, 1) in layer_list else []
  return ", ".join(parts + [f"{convs} x 3x3 conv"])


def receptive_fields(configs: dict[str, Any]) -> tuple[str, dict[str, list]]:
  """Per config: the receptive field after each encoder stage and each ASPP branch.

  Returns the Markdown table and, per config, ``(name, layer stack)`` for every row.
  """
  rows, stacks = [], {}
  for config_name, config in configs.items():
    if config.model.name != "asym_unet":
      raise ValueError(f"{config_name}: model.name is {config.model.name!r}, not 'asym_unet'")
    model = models.create("asym_unet", num_classes=1, **config.model.kwargs.to_dict())
    stages, branches = encoder_layers(model)
    h, w = config.data.image_size
    stack, stacks[config_name] = [], []
    for name, layer_list in stages:
      stack = stack + layer_list
      stacks[config_name].append((name, stack))
      rf = layers.receptive_field(stack)
      rows.append([config_name, name, _describe(layer_list), rf.stride, rf.size, f"{h}x{w}"])
    for name, layer in branches:
      rf = layers.receptive_field(stack + [layer])
      stacks[config_name].append((name, stack + [layer]))
      rows.append([config_name, name, f"3x3 conv, dilation {layer[2]}", rf.stride, rf.size,
                   f"{h}x{w}"])
    if model.neck == "aspp":
      rows.append([config_name, "ASPP image pooling", "global average", "", "whole image",
                   f"{h}x{w}"])
  return writers.markdown_table(
      ["config", "after", "layers", "output stride (px)", "receptive field (px)",
       "training image"], rows), stacks


def gradient_map(layer_list: Sequence[tuple[int, int, int]], side: int) -> np.ndarray:
  """|d centre output / d input| of a one-channel linear stack with all-ones kernels.

  The stack has the geometry of ``layer_list``; its strided layers (the max pools) are average
  pools of the same window and stride, so that every input of a window gets a gradient and the
  non-zero area is the whole receptive field; the shape inside it is the "effective" field.
  """
  def stack(x):
    for k, s, d in layer_list:
      if s > 1:
        x = layers.avg_pool(x[None, ..., None], k, s)[0, ..., 0]
      else:
        x = layers.correlate(x, jnp.ones((k, k)), padding="same", dilation=d)
    return x[x.shape[0] // 2, x.shape[1] // 2]

  return np.asarray(jnp.abs(jax.jit(jax.grad(stack))(jnp.zeros((side, side)))))


def _half_mass_side(grad: np.ndarray, top: int, left: int, size: int) -> int:
  """Side of the smallest square, centred in the field, that holds half the gradient's sum."""
  total = grad.sum()
  for margin in range(size // 2, -1, -1):
    inner = grad[top + margin:top + size - margin, left + margin:left + size - margin]
    if inner.sum() >= total / 2:
      return size - 2 * margin
  return size


def receptive_field_figure(stacks: list, background: np.ndarray, out: str) -> str:
  """Per stack: its field on a training image, and its gradient map checked against the field."""
  rfs = [layers.receptive_field(s) for _, s in stacks]
  jump = rfs[-1].stride
  # A canvas a multiple of the total stride and wider than the largest field keeps it whole.
  side = -(-(max(r.size for r in rfs) + 2 * jump) // jump) * jump
  h, w = background.shape[:2]
  fields, maps, rows = [], [], []
  for (name, stack), rf in zip(stacks, rfs):
    grad = gradient_map(stack, side)
    ys, xs = np.nonzero(grad)
    extent = (int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1))
    if extent != (rf.size, rf.size):
      raise AssertionError(f"{name}: the gradient reaches {extent} pixels, receptive_field "
                           f"says {rf.size}")
    top, left = int(ys.min()), int(xs.min())
    half = _half_mass_side(grad, top, left, rf.size)
    fields.append(viz.Panel(background, f"{name}: {rf.size}x{rf.size} of {h}x{w}",
                            boxes=[((h - rf.size) / 2, (w - rf.size) / 2, rf.size, rf.size)]))
    maps.append(viz.Panel(grad / grad.max(), f"gradient; half of it in {half}x{half}",
                          cmap="magma", boxes=[(top, left, rf.size, rf.size)]))
    rows.append([name, rf.size, common.dims(extent), f"{half}x{half}"])
  viz.save_panels([fields, maps], os.path.join(out, "receptive_field.png"),
                  title="Receptive field of one output pixel per encoder stage (top) and the "
                        "gradient of that pixel with respect to the input (bottom)")
  return writers.markdown_table(
      ["after", "receptive_field (px)", "gradient non-zero over (px)",
       "centred square holding half the gradient (px)"], rows)


def run(options: common.Options) -> None:
  """Writes the figures and the generated README section; see the module docstring."""
  side, windows = (32, (2, 4)) if options.toy else (128, (2, 4, 8))
  scene = common.read_scene(options.data_root)
  view = scene.crop(side, CENTRE)
  configs = {"configs/default.py": default_config.get_config(),
             "configs/dubai.py": dubai_config.get_config()}
  rf_table, stacks = receptive_fields(configs)
  training_view = scene.resize(tuple(configs["configs/dubai.py"].data.image_size))
  transposed_overlaps(view.rgb(), options.out, [(2, 2), (3, 2), (4, 2)])
  sections = [
      f"Image: {view.source}.",
      "### Pooling\n\n" + pooling(view.rgb(), options.out, windows) + "\n\n![pooling](pooling.png)",
      "### Transposed convolution\n\n" + transposed_sizes(jax.random.key(0))
      + "\n\n![transposed convolution](transposed.png)",
      "### Receptive field of the proposal's encoder\n\n"
      + "`asym_unet` at the widths of each config; layers from the model's backbone `widths` "
      + "and `blocks` and its ASPP neck's `rates`.\n\n" + rf_table
      + f"\n\nGradient check for `configs/dubai.py`; background: {training_view.source}.\n\n"
      + receptive_field_figure(stacks["configs/dubai.py"], training_view.image, options.out)
      + "\n\n![receptive field](receptive_field.png)",
  ]
  common.finish(options, __spec__.name, sections)


if __name__ == "__main__":
  common.command(run, FOLDER)
