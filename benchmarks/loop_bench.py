r"""Training loop vs bare train step: images/s of both, in one process, in alternating blocks.

  python -m benchmarks.loop_bench                        # configs/default.py and configs/dubai.py
  python -m benchmarks.loop_bench --configs=configs/default.py --rounds=3 --steps=100

For each config:
- start-up: reading the data (for a folder dataset: decoding, resizing and statistics timed
  on their own; for synthetic scenes: generating them into an empty cache and reading them back),
  building the Trainer, and compiling its steps (XLA, then loaded from the persistent cache);
- (a) the bare jitted train step on one batch already on the device, and (b) the training loop
  as `seg_jax.main` runs it (`train.train_and_evaluate` into a new workdir: input pipeline,
  augmentation, logging, evaluation and checkpoints at the config's intervals, final outputs),
  each `--steps` steps long, timed in alternating blocks so that a shared machine slows both
  alike. The loop ratio is (b)/(a).
`--steps` defaults to the config's `train.eval_every`, so each loop block holds one evaluation
and one checkpoint, as a run does per interval, plus the end of a run (final metrics, confusion
matrix). Of a block's time, evaluating is what the loop's evaluations took (`TimedTrainer`);
saving checkpoints is the block's number of saves times one save of the same state, timed on
its own after the block.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags
import jax
import ml_collections
import numpy as np

from seg_jax import cli
from seg_jax import compilation
from seg_jax import config_files
from seg_jax import data as data_lib
from seg_jax import steps as steps_lib
from seg_jax import train
from seg_jax import workdir as workdir_lib
from seg_jax.data import dubai
from seg_jax.data import palettes
from seg_jax.data import preprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS


@functools.cache
def define_flags() -> None:
  """Defines this benchmark's flags (once per process)."""
  flags.DEFINE_list("configs", [os.path.join(REPO, "configs", "default.py"),
                                os.path.join(REPO, "configs", "dubai.py")],
                    "Config files to measure.")
  flags.DEFINE_integer("rounds", 2, "Alternating (bare step, loop) rounds per config.")
  flags.DEFINE_integer("steps", 0, "Steps per block (0: the config's train.eval_every).")


def _load() -> float:
  return os.getloadavg()[0]


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


class TimedTrainer(steps_lib.Trainer):
  """A Trainer that adds up the seconds of its evaluations (the loop evaluates through it)."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.evaluate_seconds = 0.0

  def evaluate_all(self, state, split=None):
    """`Trainer.evaluate_all`, timed."""
    out, seconds = _timed(lambda: super(TimedTrainer, self).evaluate_all(state, split))
    self.evaluate_seconds += seconds
    return out


def folder_startup(config: ml_collections.ConfigDict) -> None:
  """Times reading a folder dataset: decoding every file, resizing, statistics, and all of it."""
  c = config.data
  dataset, total = _timed(lambda: data_lib.get_dataset(c))
  log = dubai.SkipLog(c.on_bad_file)
  palette = data_lib.folder.read_palette(c, palettes.DUBAI_AERIAL)
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


def synthetic_startup(config: ml_collections.ConfigDict) -> None:
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


def bare_steps(trainer: steps_lib.Trainer, steps: int) -> float:
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


def loop(trainer: steps_lib.Trainer, root: str) -> float:
  """Seconds of the training loop of `seg_jax.main` from a fresh state in a new workdir."""
  workdir = tempfile.mkdtemp(dir=root)
  try:
    return _timed(lambda: train.train_and_evaluate(trainer.config, workdir, trainer=trainer))[1]
  finally:
    shutil.rmtree(workdir)


def saves_per_block(c: ml_collections.ConfigDict, steps: int) -> int:
  """Checkpoints the loop saves in `steps` steps of train config `c` (and after the last)."""
  return sum(1 for s in range(1, steps + 1)
             if s % c.checkpoint_every == 0 or s % c.eval_every == 0 or s == steps)


def save_seconds(trainer: steps_lib.Trainer, root: str) -> float:
  """Seconds of one checkpoint save of a fresh state (asynchronous: the call, not the write)."""
  state, pipeline = trainer.initial_state(), trainer.train_pipeline()
  ckpt = workdir_lib.RunDir(tempfile.mkdtemp(dir=root)).checkpointer()
  try:
    jax.block_until_ready(state)
    return _timed(lambda: ckpt.save(1, state, pipeline.get_state(), miou=0.0, seconds=0.0))[1]
  finally:
    ckpt.close()


def _first_block(trainer: TimedTrainer, root: str) -> None:
  """Runs the first loop block, which compiles the loop's functions, and prints its times."""
  with compilation.CompileLog() as compiles:
    first = loop(trainer, root)
  print(f"  first loop block {first:.1f} s, of which compiling "
        f"{sum(compiles.seconds.values()):.1f} s: " + ", ".join(
            f"{name} {compiles.seconds[name]:.1f} s" for name in
            ("jit(init)", "jit(train_step)", "jit(eval_step)")))


def _rounds(trainer: TimedTrainer, root: str, steps: int, rounds: int) -> None:
  """Times `rounds` alternating (bare step, loop) blocks and prints each and their sum."""
  c = trainer.config.train
  bare, full, saves = [], [], []
  trainer.evaluate_seconds = 0.0
  for r in range(rounds):
    load_before = _load()
    bare.append(bare_steps(trainer, steps))
    full.append(loop(trainer, root))
    saves.append(saves_per_block(c, steps) * save_seconds(trainer, root))
    images = steps * c.global_batch_size
    print(f"  round {r + 1}: (a) bare step {images / bare[-1]:7.2f} img/s  (b) loop "
          f"{images / full[-1]:7.2f} img/s  (b)/(a) {bare[-1] / full[-1]:.3f}  "
          f"load {load_before:.1f} -> {_load():.1f}")
  images = steps * c.global_batch_size * len(bare)
  overhead = {"evaluate": trainer.evaluate_seconds / len(full),
              "checkpoint save": float(np.mean(saves))}
  rest = np.mean(full) - np.mean(bare) - sum(overhead.values())
  print(f"  all rounds: (a) {images / sum(bare):.2f} img/s  (b) {images / sum(full):.2f} "
        f"img/s  (b)/(a) {sum(bare) / sum(full):.3f}")
  print(f"  per loop block: {np.mean(full):.1f} s = steps {np.mean(bare):.1f} s + " +
        " + ".join(f"{k} {v:.2f} s" for k, v in overhead.items()) +
        f" + the rest (input, logging, final outputs) {rest:.2f} s")


def measure(config: ml_collections.ConfigDict, name: str, rounds: int, steps: int = 0) -> None:
  """Prints start-up, compile, bare-step and loop figures of `config` (from file `name`).

  `steps` per block (0: the config's `train.eval_every`); the config's folder dataset or
  synthetic scenes, its persistent compilation cache.
  """
  config = config.copy_and_resolve_references()
  steps = steps or config.train.eval_every
  config.train.num_steps = steps
  c = config.train
  print(f"\n{name}: model {config.model.name}, data {config.data.name} "
        f"{tuple(config.data.image_size)}, batch {c.global_batch_size}, blocks of {steps} steps "
        f"(log every {c.log_every}, evaluate every {c.eval_every} on "
        f"{config.eval.split}, checkpoint every {c.checkpoint_every})")
  if config.data.name == "synthetic_aerial":
    synthetic_startup(config)
  else:
    folder_startup(config)
  config.lock()
  compilation.use_persistent_cache(c.compilation_cache_dir)
  trainer, build = _timed(lambda: TimedTrainer(config))
  print(f"  Trainer built in {build:.2f} s (reading the dataset included)")
  root = tempfile.mkdtemp()
  try:
    _first_block(trainer, root)
    _rounds(trainer, root, steps, rounds)
  finally:
    shutil.rmtree(root)


def main(argv: Sequence[str]) -> None:
  """Measures every config of --configs."""
  del argv
  print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} CPUs), "
        f"load average {_load():.1f}")
  for path in FLAGS.configs:
    path = os.path.abspath(path)
    measure(config_files.load_module(path).get_config(), os.path.relpath(path, REPO),
            FLAGS.rounds, FLAGS.steps)


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, shared=())
