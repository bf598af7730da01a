r"""Training loop vs bare train step: images/s of both, in one process, in alternating blocks.

  python benchmarks/loop_bench.py                        # configs/default.py and configs/dubai.py
  python benchmarks/loop_bench.py --configs=configs/default.py --rounds=3 --steps=100

For each config:
- start-up: reading the data (for a folder dataset: decoding, resizing and statistics timed
  on their own; for synthetic scenes: generating them into an empty cache and reading them back),
  building the Trainer, and compiling its steps (XLA, then loaded from the persistent cache);
- (a) the bare jitted train step on one batch already on the device, and (b) the training loop
  as `seg_jax.main` runs it (input pipeline, augmentation, logging, evaluation and checkpoints
  at the config's intervals, final outputs), each `--steps` steps long, timed in alternating
  blocks so that a shared machine slows both alike. The loop ratio is (b)/(a).
`--steps` defaults to the config's `train.eval_every`, so each loop block holds one evaluation
and one checkpoint, as a run does per interval, plus the end of a run (final metrics, confusion
matrix).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np

from seg_jax import checkpoint as checkpoint_lib
from seg_jax import compilation
from seg_jax import config_files
from seg_jax import data as data_lib
from seg_jax import train
from seg_jax.data import dubai
from seg_jax.data import preprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIGS = flags.DEFINE_list(
    "configs", [os.path.join(REPO, "configs", "default.py"),
                os.path.join(REPO, "configs", "dubai.py")], "Config files to measure.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Alternating (bare step, loop) rounds per config.")
_STEPS = flags.DEFINE_integer("steps", 0, "Steps per block (0: the config's train.eval_every).")


def _load() -> float:
  return os.getloadavg()[0]


class Timer:
  """Seconds spent in the wrapped calls."""

  def __init__(self):
    self.seconds = 0.0

  def wrap(self, fn):
    def timed(*args, **kwargs):
      start = time.perf_counter()
      try:
        return fn(*args, **kwargs)
      finally:
        self.seconds += time.perf_counter() - start
    return timed


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def folder_startup(config) -> None:
  """Times reading a folder dataset: decoding every file, resizing, statistics, and all of it."""
  c = config.data
  dataset, total = _timed(lambda: data_lib.get_dataset(c))
  log = dubai.SkipLog(c.on_bad_file)
  palette = data_lib.dataset.folder_palette(c)
  decoded, decode = _timed(lambda: list(dubai.read_pairs(
      dubai.find_pairs(c.root, log), log, palette=palette, ignore_index=c.ignore_index,
      max_unknown_fraction=c.max_unknown_fraction)))
  _, resize = _timed(lambda: [preprocess.resize_pair(im, lb, c.image_size)
                              for _, im, lb in decoded])
  _, stats = _timed(lambda: preprocess.mean_std(dataset.train.images))
  pixels = sum(im.shape[0] * im.shape[1] for _, im, _ in decoded)
  print(f"  data start-up: {total:.2f} s for {len(decoded)} image/mask pairs "
        f"({pixels / 1e6:.1f} megapixels): decode {decode:.2f} s, resize to "
        f"{tuple(c.image_size)} {resize:.2f} s, statistics {stats:.3f} s")


def synthetic_startup(config) -> None:
  """Times generating the synthetic splits into an empty cache folder, and reading them back."""
  c = config.data.copy_and_resolve_references()
  cache = tempfile.mkdtemp()
  try:
    c.cache_dir = cache
    _, cold = _timed(lambda: data_lib.get_dataset(c))
    _, warm = _timed(lambda: data_lib.get_dataset(c))
  finally:
    shutil.rmtree(cache)
  n = c.num_train + c.num_val + c.num_test
  print(f"  data start-up: {cold:.2f} s generating {n} scenes of {tuple(c.image_size)} into an "
        f"empty cache, {warm:.3f} s reading them from it")


def bare_steps(trainer: train.Trainer, steps: int) -> float:
  """Seconds of `steps` jitted train steps on one batch already on the device."""
  state = trainer.initial_state()
  batch = next(trainer.train_pipeline())
  key = trainer.step_key()
  jax.block_until_ready((state, batch))
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = trainer.train_step(state, batch, key)
  jax.block_until_ready((state, metrics))
  return time.perf_counter() - start


def loop(trainer: train.Trainer, root: str, timers: dict[str, Timer]) -> float:
  """Seconds of the training loop of `seg_jax.main` from a fresh state in a new workdir."""
  workdir = tempfile.mkdtemp(dir=root)
  ckpt = checkpoint_lib.Checkpointer(workdir, trainer.config.train.keep_checkpoints)
  ckpt.save = timers["checkpoint save"].wrap(ckpt.save)
  try:
    start = time.perf_counter()
    train._train(trainer, [ckpt], [None], [workdir])  # pylint: disable=protected-access
    return time.perf_counter() - start
  finally:
    ckpt.close()
    shutil.rmtree(workdir)


def measure(path: str) -> None:
  """Prints start-up, compile, bare-step and loop figures of one config file."""
  config = config_files.load_module(path).get_config()
  steps = _STEPS.value or config.train.eval_every
  config.train.num_steps = steps
  c = config.train
  print(f"\n{os.path.relpath(path, REPO)}: model {config.model.name}, data {config.data.name} "
        f"{tuple(config.data.image_size)}, batch {c.global_batch_size}, blocks of {steps} steps "
        f"(log every {c.log_every}, evaluate every {c.eval_every} on "
        f"{config.eval.split}, checkpoint every {c.checkpoint_every})")
  if config.data.name == "synthetic_aerial":
    synthetic_startup(config)
  else:
    folder_startup(config)
  config.lock()
  trainer, build = _timed(lambda: train.Trainer(config))
  print(f"  Trainer built in {build:.2f} s (reading the dataset included)")
  root = tempfile.mkdtemp()
  timers = {"evaluate": Timer(), "checkpoint save": Timer()}
  trainer.evaluate_replicas = timers["evaluate"].wrap(trainer.evaluate_replicas)
  try:
    with compilation.CompileLog() as compiles:
      first = loop(trainer, root, timers)  # compiles the loop's functions
    print(f"  first loop block {first:.1f} s, of which compiling "
          f"{sum(compiles.seconds.values()):.1f} s: " + ", ".join(
              f"{name} {compiles.seconds[name]:.1f} s" for name in
              ("jit(init)", "jit(train_step)", "jit(eval_step)")))
    for timer in timers.values():
      timer.seconds = 0.0
    bare, full, loads = [], [], []
    for r in range(_ROUNDS.value):
      load_before = _load()
      bare.append(bare_steps(trainer, steps))
      full.append(loop(trainer, root, timers))
      loads.append((load_before, _load()))
      images = steps * c.global_batch_size
      print(f"  round {r + 1}: (a) bare step {images / bare[-1]:7.2f} img/s  (b) loop "
            f"{images / full[-1]:7.2f} img/s  (b)/(a) {bare[-1] / full[-1]:.3f}  "
            f"load {loads[-1][0]:.1f} -> {loads[-1][1]:.1f}")
    images = steps * c.global_batch_size * len(bare)
    overhead = {k: t.seconds / len(full) for k, t in timers.items()}
    rest = np.mean(full) - np.mean(bare) - sum(overhead.values())
    print(f"  all rounds: (a) {images / sum(bare):.2f} img/s  (b) {images / sum(full):.2f} "
          f"img/s  (b)/(a) {sum(bare) / sum(full):.3f}")
    print(f"  per loop block: {np.mean(full):.1f} s = steps {np.mean(bare):.1f} s + " +
          " + ".join(f"{k} {v:.2f} s" for k, v in overhead.items()) +
          f" + the rest (input, logging, final outputs) {rest:.2f} s")
  finally:
    shutil.rmtree(root)


def main(argv):
  del argv
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} CPUs), "
        f"load average {_load():.1f}")
  for path in _CONFIGS.value:
    measure(os.path.abspath(path))


if __name__ == "__main__":
  app.run(main)
