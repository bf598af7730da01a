r"""First vs second launch of `python -m seg_jax.main` as whole processes: time to the first step.

  python benchmarks/launch_bench.py                                   # configs/default.py
  python benchmarks/launch_bench.py --config=configs/dubai.py --launches=3

Each launch trains a new workdir for `--steps` steps, logging every step, with $XDG_CACHE_HOME
set to one empty temporary folder for all launches: the first launch generates the synthetic
scenes and compiles everything into it, later launches find both there (seg_jax's per-user
caches, `train.compilation_cache_dir` and `data.cache_dir`). Printed per launch: seconds from
starting the process to its "step 1/" log line (the first step done) and to its exit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = flags.DEFINE_string("config", os.path.join(REPO, "configs", "default.py"),
                              "Config file to launch.")
_LAUNCHES = flags.DEFINE_integer("launches", 2, "Launches, the first with empty caches.")
_STEPS = flags.DEFINE_integer("steps", 20, "train.num_steps of each launch.")


def launch(config: str, workdir: str, cache_root: str) -> tuple[float, float]:
  """Runs one training process; returns seconds to its first step and to its exit."""
  env = dict(os.environ, XDG_CACHE_HOME=cache_root,
             PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
  start = time.perf_counter()
  proc = subprocess.Popen(
      [sys.executable, "-m", "seg_jax.main", f"--config={config}", f"--workdir={workdir}",
       f"--config.train.num_steps={_STEPS.value}", "--config.train.log_every=1"],
      cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
  first_step = None
  lines = []
  for line in proc.stderr:
    lines.append(line)
    if first_step is None and " step 1/" in line:
      first_step = time.perf_counter() - start
  if proc.wait() != 0 or first_step is None:
    sys.exit("launch failed:\n" + "".join(lines[-20:]))
  return first_step, time.perf_counter() - start


def main(argv):
  del argv
  root = tempfile.mkdtemp()
  try:
    print(f"{os.path.relpath(_CONFIG.value, REPO)}, {_STEPS.value} steps per launch, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    for i in range(_LAUNCHES.value):
      first_step, total = launch(_CONFIG.value, os.path.join(root, f"run{i}"),
                                 os.path.join(root, "cache"))
      caches = "empty caches" if i == 0 else "caches filled by launch 1"
      print(f"launch {i + 1} ({caches}): first step after {first_step:.1f} s, exit after "
            f"{total:.1f} s (load average {os.getloadavg()[0]:.1f})", flush=True)
  finally:
    shutil.rmtree(root)


if __name__ == "__main__":
  app.run(main)
