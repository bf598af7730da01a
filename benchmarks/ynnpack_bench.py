r"""XLA:CPU's YNNPACK fusions on and off: one convolution by channel count, and whole train steps.

  python -m benchmarks.ynnpack_bench                       # the table of benchmarks/README.md
  python -m benchmarks.ynnpack_bench --channels=32,38 --models=unet --rounds=1   # a shorter one

Both settings are compiled in this one process (YNNPACK is a per-program XLA option,
`seg_jax.steps.step_compiler_options`), and timed in alternating rounds so that a shared machine
slows both alike.
- A 3x3 convolution, its input gradient and its kernel gradient (one jitted function), batch
  `--batch` at `--size`x`--size`, C -> C channels for each of `--channels`: ms per call and
  GFLOP/s (3 x 2 x N x H x W x 9 x C x C).
- The train step of `--train_config` (default configs/naip.py: batch 8 of 256x256x4, AdamW) for each
  model of experiments/naip_rgbn/sweep.py named in `--models`, with
  `train.xla_cpu_ynnpack` true and false, on random data shaped as the config's input: s/step.
Each figure is the median of `--calls` calls after one that compiles. The load average is printed
before and after.
"""

from __future__ import annotations

import functools
import os
import statistics
from collections.abc import Callable, Sequence

from absl import flags
import jax
import jax.numpy as jnp

from benchmarks import common
from benchmarks import step_protocol
from seg_jax import cli
from seg_jax import config_files
from seg_jax import steps

FLAGS = flags.FLAGS
OFF = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def define_flags() -> None:
  """Defines this benchmark's flags (once per process)."""
  flags.DEFINE_list("channels", ["16", "19", "32", "38", "64", "76"], "Convolution widths C.")
  flags.DEFINE_integer("batch", 8, "Convolution batch.")
  flags.DEFINE_integer("size", 128, "Convolution height and width.")
  flags.DEFINE_string("train_config", "configs/naip.py", "Config of the train steps.")
  flags.DEFINE_list("models", ["unet", "asym_unet", "unetpp_resnet34", "deeplabv3plus"],
                    "Models of experiments/naip_rgbn/sweep.py whose train steps are timed.")
  flags.DEFINE_integer("calls", 6, "Timed calls per figure.")
  flags.DEFINE_integer("rounds", 2, "Alternating (on, off) rounds.")
  flags.DEFINE_bool("toy", False, "Toy models at batch 2 of 32x64 (a dry run of the script).")


def median_seconds(fn: Callable[[], object], calls: int) -> float:
  """Median wall seconds of `fn()` (blocked until ready) over `calls` calls after a first one."""
  jax.block_until_ready(fn())
  return statistics.median(step_protocol.timed(lambda: jax.block_until_ready(fn()), calls))


def convolution(channels: int, batch: int, size: int, ynnpack: bool) -> Callable[[], object]:
  """A jitted 3x3 convolution with both gradients, C -> C, ready to call."""
  x = jnp.ones((batch, size, size, channels))
  kernel = jnp.full((3, 3, channels, channels), 0.01)

  def loss(x, kernel):
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return (y * y).sum()

  grad = jax.jit(jax.grad(loss, argnums=(0, 1)), compiler_options={} if ynnpack else OFF)
  return lambda: grad(x, kernel)


def train_step(config_name: str, model: str, ynnpack: bool,
               toy: bool = False) -> Callable[[], object]:
  """The jitted train step of `config_name` with sweep `model` (`toy`: its toy version at toy
  size), ready to call on one batch."""
  sweep = config_files.load_module(os.path.join(common.REPO, "experiments", "naip_rgbn",
                                                "sweep.py"))
  overrides = {**common.INPUT_OVERRIDES.get(config_name, {}), "model.name": model,
               "model.ablation": "", "model.kwargs": sweep.MODELS[model],
               "train.xla_cpu_ynnpack": ynnpack}
  config = common.load_config(config_name, overrides)
  if toy:
    config = common.load_config(config_name, {**overrides, **common.toy_overrides(config)})
  trainer = steps.Trainer(config, common.random_dataset_of(config))
  state, batch, key = [trainer.initial_state()], next(trainer.train_pipeline()), trainer.step_key()

  def call():  # the step donates its state: each call trains on from the last one's
    state[0], metrics = trainer.train_step(state[0], batch, key)
    return metrics

  return call


def run(channels: Sequence[int], batch: int, size: int, config_name: str,
        models: Sequence[str], calls: int, rounds: int, toy: bool = False) -> None:
  """Prints both tables."""
  print(f"load average at the start: {os.getloadavg()[0]:.2f}")
  print(f"3x3 convolution with both gradients, batch {batch} at {size}x{size}: ms (GFLOP/s)")
  print("| channels | YNNPACK fusions | without |\n| ---: | ---: | ---: |")
  for c in channels:
    fns = {on: convolution(c, batch, size, on) for on in (True, False)}
    flops = 3 * 2 * batch * size * size * 9 * c * c
    times = {on: [] for on in fns}
    for _ in range(rounds):
      for on, fn in fns.items():
        times[on].append(median_seconds(fn, calls))
    cells = [", ".join(f"{1e3 * t:.0f} ({flops / t / 1e9:.0f})" for t in times[on])
             for on in (True, False)]
    print(f"| {c} | {cells[0]} | {cells[1]} |")
  print(f"train step of {config_name}: s/step")
  print("| model | YNNPACK fusions | without | speed-up |\n| --- | ---: | ---: | ---: |")
  for model in models:
    fns = {on: train_step(config_name, model, on, toy) for on in (True, False)}
    times = {on: [] for on in fns}
    for _ in range(rounds):
      for on, fn in fns.items():
        times[on].append(median_seconds(fn, calls))
    speedup = statistics.median(times[True]) / statistics.median(times[False])
    print(f"| {model} | {', '.join(f'{t:.2f}' for t in times[True])} | "
          f"{', '.join(f'{t:.2f}' for t in times[False])} | {speedup:.2f}x |")
  print(f"load average at the end: {os.getloadavg()[0]:.2f}")


def main(argv: Sequence[str]) -> None:
  del argv
  run([int(c) for c in FLAGS.channels], FLAGS.batch, FLAGS.size, FLAGS.train_config, FLAGS.models,
      FLAGS.calls, FLAGS.rounds, FLAGS.toy)


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags)
