r"""First vs second launch of `python -m seg_jax.main` as whole processes: time to the first step.

  python -m benchmarks.launch_bench                                   # configs/default.py
  python -m benchmarks.launch_bench --config=configs/dubai.py --launches=3

Each launch trains a new workdir for `--steps` steps, logging every step, with $XDG_CACHE_HOME
set to one empty temporary folder for all launches: the first launch generates the synthetic
scenes and compiles everything into it, later launches find both there (seg_jax's per-user
caches, `train.compilation_cache_dir` and `data.cache_dir`). Printed per launch: seconds from
starting the process to its "step 1/" log line (the first step done) and to its exit.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from absl import flags

from seg_jax import cli
from seg_jax import errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS


@functools.cache
def define_flags() -> None:
  """Defines this benchmark's flags (once per process)."""
  flags.DEFINE_string("config", os.path.join(REPO, "configs", "default.py"),
                      "Config file to launch.")
  flags.DEFINE_integer("launches", 2, "Launches, the first with empty caches.")
  flags.DEFINE_integer("steps", 20, "train.num_steps of each launch.")


def launch(config: str, workdir: str, cache_root: str, steps: int,
           overrides: Sequence[str] = ()) -> tuple[float, float]:
  """Runs one training process of `steps` steps (and `--config.x=y` `overrides`); returns
  seconds to its first step and to its exit. Raises RunError if it fails."""
  env = dict(os.environ, XDG_CACHE_HOME=cache_root,
             PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
  start = time.perf_counter()
  proc = subprocess.Popen(
      [sys.executable, "-m", "seg_jax.main", f"--config={config}", f"--workdir={workdir}",
       f"--config.train.num_steps={steps}", "--config.train.log_every=1", *overrides],
      cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
  first_step = None
  lines = []
  for line in proc.stderr:
    lines.append(line)
    if first_step is None and " step 1/" in line:
      first_step = time.perf_counter() - start
  if proc.wait() != 0 or first_step is None:
    sys.stderr.write("".join(lines[-20:]))
    raise errors.RunError(f"the launch into {workdir} failed (exit code {proc.returncode}; the "
                          "end of its log is above)")
  return first_step, time.perf_counter() - start


def run(config: str, launches: int, steps: int, overrides: Sequence[str] = ()) -> None:
  """Launches `config` `launches` times with one cache folder and prints each launch's times."""
  root = tempfile.mkdtemp()
  try:
    print(f"{os.path.relpath(config, REPO)}, {steps} steps per launch, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    for i in range(launches):
      first_step, total = launch(config, os.path.join(root, f"run{i}"),
                                 os.path.join(root, "cache"), steps, overrides)
      caches = "empty caches" if i == 0 else "caches filled by launch 1"
      print(f"launch {i + 1} ({caches}): first step after {first_step:.1f} s, exit after "
            f"{total:.1f} s (load average {os.getloadavg()[0]:.1f})", flush=True)
  finally:
    shutil.rmtree(root)


def main(argv: Sequence[str]) -> None:
  """Launches --config --launches times."""
  del argv
  run(os.path.abspath(FLAGS.config), FLAGS.launches, FLAGS.steps)


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, shared=())
