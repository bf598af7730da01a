r"""Cold compile times of the train and eval steps of seg_jax's configs, on this machine's CPU.

  python -m benchmarks.compile_bench                  # every config of CONFIGS, train and eval
  python -m benchmarks.compile_bench --configs=configs/dubai.py:unet --steps=train
  python -m benchmarks.compile_bench --toy            # toy sizes (batch 2 of 32x64): a dry run

Each (config, step) is measured in a fresh process (`--in_process` measures them all in this one,
with `jax.clear_caches()` before each), with the persistent compilation cache off: the config's
`seg_jax.steps.Trainer` is built on random in-memory data shaped as the config's input (no data
files; `benchmarks.common.random_dataset_of`), and its jitted step is lowered from the shapes of
the train state and of a batch (`.lower(...)`: tracing the Python and lowering to StableHLO) and
compiled (`.compile()`: XLA), so nothing runs. The accelerator configs compile for the CPU, in
their own compute dtype and batch. The process's one-time start-up (JAX's CPU backend, the
Trainer's shape evaluation) is done before the clock starts. Printed: one row per (config, step),
and the load average before and after.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from absl import flags
import jax

from benchmarks import common
from seg_jax import cli
from seg_jax import compilation
from seg_jax import errors
from seg_jax import steps as steps_lib

FLAGS = flags.FLAGS
# The CPU configs, then the accelerator configs, as --config names them.
CONFIGS = ("configs/default.py", "configs/dubai.py:asym_unet", "configs/dubai.py:unet",
           "configs/naip.py", "configs/gpu_asym_unet.py", "configs/tpu_asym_unet.py",
           "configs/deeplabv3_resnet50.py", "configs/deeplabv3plus_xception.py")
STEPS = ("train", "eval")


@functools.cache
def define_flags() -> None:
  """Defines this benchmark's flags (once per process)."""
  flags.DEFINE_list("configs", list(CONFIGS), "Configs, as --config names them.")
  flags.DEFINE_list("steps", list(STEPS), f"Steps to compile, of {list(STEPS)}.")
  flags.DEFINE_bool("toy", False, "Batch 2 of 32x64 and toy models (a dry run of the script).")
  flags.DEFINE_bool("in_process", False, "Measure every step in this process instead of a fresh "
                    "process each.")
  flags.DEFINE_bool("json", False, "Print each measurement as one JSON line, without the table "
                    "(what each fresh process prints).")


def trainer_and_args(name: str, step: str, toy: bool) -> tuple[Any, tuple[Any, ...]]:
  """The jitted `step` of config `name`'s Trainer and the arguments (shapes) it compiles for."""
  overrides = common.INPUT_OVERRIDES.get(name, {})
  config = common.load_config(name, overrides)
  if toy:
    config = common.load_config(name, {**overrides, **common.toy_overrides(config)})
  trainer = steps_lib.Trainer(config, common.random_dataset_of(config))
  batch = next(trainer.train_pipeline())
  if step == "train":
    return trainer.train_step, (trainer.abstract_state, batch, trainer.step_key())
  eval_batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      (config.eval.global_batch_size, *x.shape[1:]), x.dtype, sharding=x.sharding), batch)
  return trainer.eval_step, (trainer.abstract_state, eval_batch)


def measure(name: str, step: str, toy: bool) -> dict[str, Any]:
  """Seconds to lower and to compile `step` ("train" or "eval") of config `name`, cold."""
  if step not in STEPS:
    raise errors.FlagError(f"--steps: {step!r} is not one of {list(STEPS)}")
  compilation.use_persistent_cache("")
  jax.clear_caches()
  fn, args = trainer_and_args(name, step, toy)
  load = os.getloadavg()[0]
  start = time.perf_counter()
  lowered = fn.lower(*args)
  lowered_at = time.perf_counter()
  lowered.compile()
  end = time.perf_counter()
  shape = args[1]["image"].shape
  return {"config": name, "step": step, "batch": f"{shape[0]} x {shape[1]}x{shape[2]}",
          "lower_s": lowered_at - start, "compile_s": end - lowered_at, "load": load,
          "jax": jax.__version__}


def measure_in_fresh_process(name: str, step: str, toy: bool) -> dict[str, Any]:
  """`measure` in a new Python process; raises RuntimeError with its stderr if it fails."""
  command = [sys.executable, "-m", "benchmarks.compile_bench", "--json", "--in_process",
             f"--configs={name}", f"--steps={step}", f"--toy={toy}"]
  proc = subprocess.run(command, cwd=common.REPO, capture_output=True, text=True, check=False)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
  if proc.returncode or not lines:
    raise RuntimeError(f"{' '.join(command[1:])} failed ({proc.returncode}): "
                       f"{proc.stderr.strip()[-1500:]}")
  return json.loads(lines[-1])


def run(configs: Sequence[str], steps: Sequence[str], toy: bool = False, in_process: bool = False,
        as_json: bool = False) -> list[dict[str, Any]]:
  """Measures every (config, step) and prints the table (or JSON lines); returns the records."""
  measure_fn = measure if in_process else measure_in_fresh_process
  if not as_json:
    print(f"jax {jax.__version__}, {os.cpu_count()} CPUs, XLA_FLAGS="
          f"{os.environ.get('XLA_FLAGS', '')!r}, "
          f"{'one process' if in_process else 'a fresh process per step'}, persistent cache "
          f"off; load average at the start {os.getloadavg()[0]:.2f}")
    print("| config | step | batch x HxW | lower (s) | XLA compile (s) | total (s) | load |")
    print("| --- | --- | --- | --- | --- | --- | --- |", flush=True)
  records = []
  for name in configs:
    for step in steps:
      try:
        r = measure_fn(name, step, toy)
      except (RuntimeError, ValueError, errors.RunError) as e:  # reported; the others go on
        print(f"| {name} | {step} | failed: {' '.join(str(e).split())[-600:]} |||||", flush=True)
        continue
      records.append(r)
      if as_json:
        print(json.dumps(r), flush=True)
      else:
        print(f"| {name} | {step} | {r['batch']} | {r['lower_s']:.1f} | {r['compile_s']:.1f} | "
              f"{r['lower_s'] + r['compile_s']:.1f} | {r['load']:.2f} |", flush=True)
  if not as_json:
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
  return records


def main(argv: Sequence[str]) -> None:
  """Measures the --configs x --steps."""
  del argv
  run(FLAGS.configs, FLAGS.steps, FLAGS.toy, FLAGS.in_process, FLAGS.json)


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, shared=())
