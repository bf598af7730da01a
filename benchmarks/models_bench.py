"""Times a forward+backward step of each segmentation model, and seg_jax's U-Net against plain Flax.

    .venv/bin/python benchmarks/models_bench.py                 # every segmentation model
    .venv/bin/python benchmarks/models_bench.py --models=unet --unet_base_width=32

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

import json
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from absl import app, flags

from seg_jax import models
from seg_jax.models import summary

_MODELS = flags.DEFINE_list(
    "models", ["unet", "asym_unet", "deeplabv3", "deeplabv3plus", "fcn32s", "fcn16s", "fcn8s",
               "fcn_resnet50"], "Segmentation models to time (default settings).")
_BATCH = flags.DEFINE_integer("batch", 2, "Batch size.")
_HEIGHT = flags.DEFINE_integer("height", 144, "Input height.")
_WIDTH = flags.DEFINE_integer("width", 256, "Input width.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 6, "Number of classes.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps per model (after one warm-up).")
_COMPARE = flags.DEFINE_bool("compare_unet", True, "Time unet against the plain Flax U-Net.")
_COMPARE_STEPS = flags.DEFINE_integer("compare_steps", 8, "Interleaved steps per U-Net.")
_UNET_BASE = flags.DEFINE_integer("unet_base_width", 64, "Base width of the compared U-Nets.")
_JSON = flags.DEFINE_string("json", "", "Also write the results to this JSON file.")


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


def bench_model(name: str) -> dict[str, Any]:
  """Compile time, step times and forward GFLOPs of registered model ``name``."""
  model = models.create(name, num_classes=_NUM_CLASSES.value)
  variables, images, labels = setup(model, _BATCH.value, _HEIGHT.value, _WIDTH.value,
                                    _NUM_CLASSES.value)
  step = make_step(model)
  call = lambda: step(variables["params"], variables.get("batch_stats", {}), images, labels,
                      jax.random.key(3))
  first = time_call(call)
  times = [time_call(call) for _ in range(_STEPS.value)]
  shape = (1, _HEIGHT.value, _WIDTH.value, 3)
  gflops = summary.forward_flops(model, summary.abstract_variables(model, shape), shape) / 1e9
  return {"model": name, "params": models.count_params(variables), "fwd_gflops_per_image": gflops,
          "first_call_s": first, "median_s": statistics.median(times), "min_s": min(times)}


def compare_unets(base_width: int) -> dict[str, Any]:
  """Interleaved step times of seg_jax's ``unet`` and ``PlainUNet`` at ``base_width``."""
  widths = tuple(base_width * 2**i for i in range(5))
  built = {"seg_jax": models.create("unet", num_classes=_NUM_CLASSES.value,
                                    backbone_kwargs={"widths": widths}),
           "flax": PlainUNet(num_classes=_NUM_CLASSES.value, base_width=base_width)}
  calls, counts = {}, {}
  for key, model in built.items():
    variables, images, labels = setup(model, _BATCH.value, _HEIGHT.value, _WIDTH.value,
                                      _NUM_CLASSES.value)
    counts[key] = models.count_params(variables)
    step = make_step(model)
    calls[key] = (lambda step=step, v=variables, x=images, y=labels: step(
        v["params"], v["batch_stats"], x, y, jax.random.key(3)))
    time_call(calls[key])
  if counts["seg_jax"] != counts["flax"]:
    raise ValueError(f"the two U-Nets differ in size: {counts}")
  times = {key: [] for key in calls}
  for _ in range(_COMPARE_STEPS.value):
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
  print(f"| model | params | fwd GFLOPs/img | first call (s) | step median (s) | step min (s) |")
  print("|---|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['model']} | {r['params']:,} | {r['fwd_gflops_per_image']:.1f} | "
          f"{r['first_call_s']:.1f} | {r['median_s']:.2f} | {r['min_s']:.2f} |")


def main(argv: Sequence[str]) -> None:
  """Runs the benchmarks and prints Markdown tables."""
  del argv
  print(f"devices: {jax.devices()}, batch {_BATCH.value} x {_HEIGHT.value}x{_WIDTH.value}")
  rows = []
  for name in filter(None, _MODELS.value):
    rows.append(bench_model(name))
    print(json.dumps(rows[-1]), flush=True)
  print_table(rows)
  result = {"models": rows}
  if _COMPARE.value:
    result["unet_vs_flax"] = compare_unets(_UNET_BASE.value)
    print(json.dumps(result["unet_vs_flax"]), flush=True)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  app.run(main)
