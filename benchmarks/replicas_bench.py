r"""Images/s of S replicas trained in one jitted step (`train.num_replicas=S`), for several S.

  python -m benchmarks.replicas_bench                     # configs/dubai.py, S = 1, 4, 8
  python -m benchmarks.replicas_bench --replicas=1,2 --steps=2 \
      --config=configs/dubai.py --config.train.global_batch_size=4

For each S and replica mode (`train.replica_mode`: vmap or unroll) it builds the trainer of the
config with `train.num_replicas=S` (replica k: seed k, its own data order, augmentation and
batch), runs one step (compilation included), then times
`--steps` further steps of the real jitted train step fed by the replicas' input pipelines and
prints seconds per step and images/s (S x batch images per step). S replicas are worth it where
their images/s beat those of S = 1, i.e. runs one after the other.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from collections.abc import Sequence

from absl import flags
import jax
import ml_collections

from seg_jax import cli
from seg_jax import compilation
from seg_jax import data as data_lib
from seg_jax import replicas

FLAGS = flags.FLAGS
CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "dubai.py")


@functools.cache
def define_flags() -> None:
  """Defines this benchmark's flags besides --config (once per process)."""
  flags.DEFINE_list("replicas", ["1", "4", "8"], "Values of S to time.")
  flags.DEFINE_list("modes", ["unroll", "vmap"],
                    "train.replica_mode values to time for each S > 1.")
  flags.DEFINE_integer("steps", 3, "Timed steps per S (after one untimed step).")


def time_replicas(config: ml_collections.ConfigDict, num_replicas: int, mode: str, steps: int,
                  dataset: data_lib.Dataset) -> dict[str, float]:
  """Compile time, seconds per step and images/s of `num_replicas` replicas of `config`."""
  config = config.copy_and_resolve_references()
  config.train.num_replicas = num_replicas
  config.train.replica_mode = mode
  trainer = replicas.create_trainer(config, dataset)
  pipelines = [trainer.train_pipeline(seed) for seed in trainer.seeds]
  state, key = trainer.initial_state(), trainer.step_key()
  start = time.perf_counter()
  state, metrics = trainer.train_step(state, trainer.next_batch(pipelines), key)
  jax.block_until_ready(metrics)
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = trainer.train_step(state, trainer.next_batch(pipelines), key)
    jax.block_until_ready(metrics)  # as the loop does for logging, one step at a time
  per_step = (time.perf_counter() - start) / steps
  images = num_replicas * config.train.global_batch_size
  return {"first_step_s": first, "step_s": per_step, "images_per_s": images / per_step}


def run(config: ml_collections.ConfigDict, sizes: Sequence[int], modes: Sequence[str],
        steps: int) -> None:
  """Prints the figures of each S of `sizes` in each mode of `modes` (S = 1: one mode)."""
  compilation.use_persistent_cache(config.train.compilation_cache_dir)
  dataset = data_lib.get_dataset(config.data)
  print(f"{platform.node()}: {os.cpu_count()} CPU cores, jax {jax.__version__} on "
        f"{jax.devices()[0].platform} ({jax.devices()[0].device_kind}); model "
        f"{config.model.name}, batch {config.train.global_batch_size} x "
        f"{tuple(dataset.image_size)} per replica; load average {os.getloadavg()[0]:.1f}")
  base = None
  for num_replicas in sizes:
    for mode in modes if num_replicas > 1 else ["-"]:
      r = time_replicas(config, num_replicas, "auto" if mode == "-" else mode, steps, dataset)
      base = base or r["images_per_s"]
      print(f"S={num_replicas:<3d} {mode:6s} first step {r['first_step_s']:7.1f} s  step "
            f"{r['step_s']:7.2f} s  {r['images_per_s']:7.2f} images/s  "
            f"({r['images_per_s'] / base:.2f}x S={sizes[0]})  load average "
            f"{os.getloadavg()[0]:.1f}", flush=True)


def main(argv: Sequence[str]) -> None:
  """Times --replicas in --modes for --config."""
  del argv
  run(FLAGS.config, [int(s) for s in FLAGS.replicas], FLAGS.modes, FLAGS.steps)


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, shared=("config",), config_default=CONFIG)
