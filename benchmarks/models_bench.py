"""Times a forward+backward step of each segmentation model, and seg_jax's U-Net against plain Flax.

    .venv/bin/python -m benchmarks.models_bench                 # every segmentation model
    .venv/bin/python -m benchmarks.models_bench --models=unet --unet_base_width=32

A step is ``jax.value_and_grad`` of the mean pixel cross-entropy with respect to the parameters,
in train mode (BatchNorm batch statistics, dropout on), jitted, at ``--batch`` x H x W x 3.
Times are wall-clock seconds per step after one warm-up call (which includes compilation);
the median and minimum over ``--steps`` calls are reported. On a shared CPU the minimum is the
better estimate of the cost of the step itself.

The U-Net comparison builds the same network twice, once from ``seg_jax.models`` (``unet``) and
once directly from ``flax.linen`` (``nn.Conv``, ``nn.BatchNorm``, ``nn.ConvTranspose``,
``nn.max_pool``), checks that both have the same number of parameters, and times them
interleaved so that background load hits both alike.
"""

from __future__ import annotations

import functools
import json
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from absl import flags

from seg_jax import cli
from seg_jax import models
from seg_jax.models import summary

FLAGS = flags.FLAGS


@functools.cache
def define_flags() -> None:
  """Defines this benchmark's flags (once per process)."""
  flags.DEFINE_list(
      "models", ["unet", "asym_unet", "deeplabv3", "deeplabv3plus", "fcn32s", "fcn16s", "fcn8s",
                 "fcn_resnet50"], "Segmentation models to time (default settings).")
  flags.DEFINE_integer("batch", 2, "Batch size.")
  flags.DEFINE_integer("height", 144, "Input height.")
  flags.DEFINE_integer("width", 256, "Input width.")
  flags.DEFINE_integer("num_classes", 6, "Number of classes.")
  flags.DEFINE_integer("steps", 3, "Timed steps per model (after one warm-up).")
  flags.DEFINE_bool("compare_unet", True, "Time unet against the plain Flax U-Net.")
  flags.DEFINE_integer("compare_steps", 8, "Interleaved steps per U-Net.")
  flags.DEFINE_integer("unet_base_width", 64, "Base width of the compared U-Nets.")
  flags.DEFINE_string("json", "", "Also write the results to this JSON file.")


class Batch(NamedTuple):
  """The shape of what every model is timed on."""

  batch: int
  height: int
  width: int
  num_classes: int


class PlainUNet(nn.Module):
  """The ``unet`` model written with flax.linen layers only (same layers, same parameters)."""

  num_classes: int
  depth: int = 4
  base_width: int = 64

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Returns logits for NHWC ``x`` whose size is a multiple of ``2**depth``."""

    def double_conv(x, features):
      for _ in range(2):
        x = nn.Conv(features, (3, 3), padding="SAME", use_bias=False)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
        x = nn.relu(x)
      return x

    skips = []
    for i in range(self.depth + 1):
      if i > 0:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      x = double_conv(x, self.base_width * 2**i)
      skips.append(x)
    x = skips.pop()
    for i in reversed(range(self.depth)):
      features = self.base_width * 2**i
      x = nn.ConvTranspose(features, (2, 2), strides=(2, 2), padding="VALID")(x)
      x = double_conv(jnp.concatenate([x, skips.pop()], axis=-1), features)
    return nn.Conv(self.num_classes, (1, 1))(x).astype(jnp.float32)


def make_step(model: nn.Module) -> Callable[..., Any]:
  """Jitted forward+backward: (params, batch_stats, images, labels, key) -> (loss, grads)."""

  def loss_fn(params, batch_stats, images, labels, key):
    variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
    logits, _ = model.apply(variables, images, train=True, rngs={"dropout": key},
                            mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  return jax.jit(jax.value_and_grad(loss_fn))


def setup(model: nn.Module, batch: int, height: int, width: int, num_classes: int):
  """Variables and a random batch for ``model``."""
  images = jax.random.normal(jax.random.key(1), (batch, height, width, 3))
  labels = jax.random.randint(jax.random.key(2), (batch, height, width), 0, num_classes)
  variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(images)
  return variables, images, labels


def time_call(fn: Callable[[], Any]) -> float:
  """Seconds for one call of ``fn``, waiting for its results."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def bench_model(name: str, b: Batch, steps: int,
                kwargs: Optional[dict[str, Any]] = None) -> dict[str, Any]:
  """Compile time, step times (over ``steps``) and forward GFLOPs of registered model ``name``
  (at its default settings, or ``kwargs``)."""
  model = models.create(name, num_classes=b.num_classes, **(kwargs or {}))
  variables, images, labels = setup(model, *b)
  step = make_step(model)
  call = lambda: step(variables["params"], variables.get("batch_stats", {}), images, labels,
                      jax.random.key(3))
  first = time_call(call)
  times = [time_call(call) for _ in range(steps)]
  shape = (1, b.height, b.width, 3)
  gflops = summary.forward_flops(model, summary.abstract_variables(model, shape), shape) / 1e9
  return {"model": name, "params": models.count_params(variables), "fwd_gflops_per_image": gflops,
          "first_call_s": first, "median_s": statistics.median(times), "min_s": min(times)}


def compare_unets(base_width: int, b: Batch, steps: int) -> dict[str, Any]:
  """Interleaved step times (``steps`` each) of seg_jax's ``unet`` and ``PlainUNet`` at
  ``base_width``."""
  widths = tuple(base_width * 2**i for i in range(5))
  built = {"seg_jax": models.create("unet", num_classes=b.num_classes,
                                    backbone_kwargs={"widths": widths}),
           "flax": PlainUNet(num_classes=b.num_classes, base_width=base_width)}
  calls, counts = {}, {}
  for key, model in built.items():
    variables, images, labels = setup(model, *b)
    counts[key] = models.count_params(variables)
    step = make_step(model)
    calls[key] = (lambda step=step, v=variables, x=images, y=labels: step(
        v["params"], v["batch_stats"], x, y, jax.random.key(3)))
    time_call(calls[key])
  if counts["seg_jax"] != counts["flax"]:
    raise ValueError(f"the two U-Nets differ in size: {counts}")
  times = {key: [] for key in calls}
  for _ in range(steps):
    for key, call in calls.items():
      times[key].append(time_call(call))
  result = {"base_width": base_width, "params": counts["flax"]}
  for key, ts in times.items():
    result[f"{key}_median_s"] = statistics.median(ts)
    result[f"{key}_min_s"] = min(ts)
  result["median_ratio"] = result["seg_jax_median_s"] / result["flax_median_s"]
  result["min_ratio"] = result["seg_jax_min_s"] / result["flax_min_s"]
  return result


def print_table(rows: Sequence[dict[str, Any]]) -> None:
  """Markdown table of ``bench_model`` results."""
  print("| model | params | fwd GFLOPs/img | first call (s) | step median (s) | step min (s) |")
  print("|---|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['model']} | {r['params']:,} | {r['fwd_gflops_per_image']:.1f} | "
          f"{r['first_call_s']:.1f} | {r['median_s']:.2f} | {r['min_s']:.2f} |")


def run(names: Sequence[str], b: Batch, steps: int, compare_base_width: Optional[int] = None,
        compare_steps: int = 8, json_path: str = "") -> dict[str, Any]:
  """Times models ``names`` and, for a ``compare_base_width``, the two U-Nets; prints the
  results (and writes them to ``json_path``); returns them."""
  print(f"devices: {jax.devices()}, batch {b.batch} x {b.height}x{b.width}")
  rows = []
  for name in filter(None, names):
    rows.append(bench_model(name, b, steps))
    print(json.dumps(rows[-1]), flush=True)
  print_table(rows)
  result = {"models": rows}
  if compare_base_width:
    result["unet_vs_flax"] = compare_unets(compare_base_width, b, compare_steps)
    print(json.dumps(result["unet_vs_flax"]), flush=True)
  if json_path:
    with open(json_path, "w") as f:
      json.dump(result, f, indent=1)
  return result


def main(argv: Sequence[str]) -> None:
  """Runs the benchmarks of the flags and prints Markdown tables."""
  del argv
  run(FLAGS.models, Batch(FLAGS.batch, FLAGS.height, FLAGS.width, FLAGS.num_classes),
      FLAGS.steps, FLAGS.unet_base_width if FLAGS.compare_unet else None, FLAGS.compare_steps,
      FLAGS.json)


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, shared=())
