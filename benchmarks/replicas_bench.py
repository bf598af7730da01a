r"""Images/s of S replicas trained in one jitted step (`train.num_replicas=S`), for several S.

  python benchmarks/replicas_bench.py                     # configs/dubai.py, S = 1, 4, 8
  python benchmarks/replicas_bench.py --replicas=1,2 --steps=2 \
      --config=configs/dubai.py --config.train.global_batch_size=4

For each S and replica mode (`train.replica_mode`: vmap or unroll) it builds the trainer of the
config with `train.num_replicas=S` (replica k: seed k, its own data order, augmentation and
batch), runs one step (compilation included), then times
`--steps` further steps of the real jitted train step fed by the replicas' input pipelines and
prints seconds per step and images/s (S x batch images per step). S replicas are worth it where
their images/s beat those of S = 1, i.e. runs one after the other.
"""

from __future__ import annotations

import os
import platform
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from seg_jax import train
from seg_jax import writers

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                           "dubai.py"), "Config file of the model and data to time.")
_REPLICAS = flags.DEFINE_list("replicas", ["1", "4", "8"], "Values of S to time.")
_MODES = flags.DEFINE_list("modes", ["unroll", "vmap"],
                           "train.replica_mode values to time for each S > 1.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps per S (after one untimed step).")


def time_replicas(config, num_replicas: int, mode: str, steps: int, dataset
                  ) -> dict[str, float]:
  """Compile time, seconds per step and images/s of `num_replicas` replicas of `config`."""
  config = config.copy_and_resolve_references()
  config.train.num_replicas = num_replicas
  config.train.replica_mode = mode
  trainer = train.Trainer(config, dataset)
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


def main(argv):
  del argv
  writers.quiet_library_logs()
  config = _CONFIG.value
  dataset = train.Trainer(config).dataset
  print(f"{platform.node()}: {os.cpu_count()} CPU cores, jax {jax.__version__} on "
        f"{jax.devices()[0].platform} ({jax.devices()[0].device_kind}); model "
        f"{config.model.name}, batch {config.train.global_batch_size} x "
        f"{tuple(dataset.image_size)} per replica; load average {os.getloadavg()[0]:.1f}")
  base = None
  for num_replicas in (int(s) for s in _REPLICAS.value):
    for mode in _MODES.value if num_replicas > 1 else ["-"]:
      r = time_replicas(config, num_replicas, "auto" if mode == "-" else mode, _STEPS.value,
                        dataset)
      base = base or r["images_per_s"]
      print(f"S={num_replicas:<3d} {mode:6s} first step {r['first_step_s']:7.1f} s  step "
            f"{r['step_s']:7.2f} s  {r['images_per_s']:7.2f} images/s  "
            f"({r['images_per_s'] / base:.2f}x S={_REPLICAS.value[0]})  load average "
            f"{os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
  app.run(main)
