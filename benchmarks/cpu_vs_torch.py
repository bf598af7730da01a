r"""seg_jax against PyTorch on the CPU: a full AdamW train step of the same model, in one run.

  python -m benchmarks.cpu_vs_torch                     # every case; PyTorch eager, channels_last
                                                        # and torch.compile
  python -m benchmarks.cpu_vs_torch --cases=unet_dubai --torch=eager --rounds=5
  python -m benchmarks.cpu_vs_torch --toy               # toy models at batch 2 of 32x64
  python -m benchmarks.cpu_vs_torch --torch=            # the seg_jax side only (no PyTorch)

The PyTorch side needs torch in the running Python: the `bench` extra of setup.py, installed in a
venv of its own (benchmarks/README.md).

Per case (`CASES`) every side runs in a worker process of its own (`benchmarks.step_protocol`):
seg_jax's real train step (`benchmarks.seg_jax_worker`) and the PyTorch twin of the same model
(`benchmarks.torch_models`, `benchmarks.torch_worker`) in each `--torch` variant, all started
with the same CPU affinity and intra-op thread count (`--threads`). Each side is built and
warmed up (compiled) first; then, in each of `--rounds` rounds, every side times `--steps` steps
while the others wait, in an order rotated from round to round, so that a change of the
machine's load falls on every side alike. Printed per side: parameters, median seconds per step,
images/s, and seg_jax / side (images/s over images/s: above 1, seg_jax is faster), over all
steps and per round.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from typing import Any, TextIO

from absl import flags

from benchmarks import step_protocol
from seg_jax import cli
from seg_jax import errors

FLAGS = flags.FLAGS
SEG_JAX = "seg_jax"
# The cases of the comparison: a config (as --config names it), batch, (H, W) and input bands.
CASES = {
    # The Dubai study: U-Net of widths 16-32-64-128 (482,822 parameters) and the proposal.
    "unet_dubai": dict(config="configs/dubai.py:unet", batch=8, size=(144, 256), bands=3),
    "asym_unet_dubai": dict(config="configs/dubai.py:asym_unet", batch=8, size=(144, 256),
                            bands=3),
    # The NAIP study's input: 4 bands (RGB + near infrared) of 256x256, the same two models.
    "unet_naip": dict(config="configs/dubai.py:unet", batch=16, size=(256, 256), bands=4),
    "asym_unet_naip": dict(config="configs/dubai.py:asym_unet", batch=16, size=(256, 256),
                           bands=4),
}
TORCH_VARIANTS = ("eager", "eager_channels_last", "compile")


@functools.cache
def define_flags() -> None:
  """Defines this benchmark's flags (once per process)."""
  flags.DEFINE_list("cases", list(CASES), f"Cases to run, of {list(CASES)}.")
  flags.DEFINE_list("torch", list(TORCH_VARIANTS),
                    "PyTorch variants (benchmarks.torch_worker.VARIANTS); empty: seg_jax only.")
  flags.DEFINE_integer("rounds", 3, "Rounds; in each, every side times --steps steps.")
  flags.DEFINE_integer("steps", 4, "Timed steps per side and round.")
  flags.DEFINE_integer("warmup", 2, "Untimed steps per side before the rounds (compiles).")
  flags.DEFINE_integer("threads", 0, "Cores (and intra-op threads) of every side; 0: every core "
                       "this process may run on.")
  flags.DEFINE_bool("toy", False, "Toy models at batch 2 of 32x64 (a dry run of the script).")
  flags.DEFINE_string("json", "", "Also write every timing to this JSON file.")
  flags.DEFINE_string("log", "", "File of the workers' stderr (default: a new temporary file).")


def machine(cpus: Sequence[int]) -> str:
  """The CPU model, the cores used, the load average and XLA_FLAGS, in one line."""
  model = "unknown CPU"
  with open("/proc/cpuinfo") as f:
    for line in f:
      if line.startswith("model name"):
        model = line.split(":", 1)[1].strip()
        break
  return (f"{model}; cores {list(cpus)} of {os.cpu_count()}; load average "
          f"{os.getloadavg()[0]:.2f}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")


def start_workers(case: dict[str, Any], variants: Sequence[str], warmup: int,
                  cpus: Sequence[int], log: TextIO) -> dict[str, step_protocol.Worker]:
  """The warm workers of a case: seg_jax's, then one per PyTorch variant that could start."""
  workers = {SEG_JAX: step_protocol.Worker("benchmarks.seg_jax_worker",
                                           {"case": case, "warmup": warmup}, cpus, log)}
  for variant in variants:
    spec = {"case": case, "variant": variant, "seg_jax": workers[SEG_JAX].info, "warmup": warmup}
    try:
      workers[f"torch {variant}"] = step_protocol.Worker("benchmarks.torch_worker", spec, cpus,
                                                         log)
    except step_protocol.WorkerError as e:
      print(f"PyTorch {variant}: not timed: {e}", flush=True)
  return workers


def time_rounds(workers: dict[str, step_protocol.Worker], rounds: int,
                steps: int) -> dict[str, list[list[float]]]:
  """Seconds of every step, per side and round; the sides take turns, rotated every round."""
  names = list(workers)
  seconds = {name: [] for name in names}
  for r in range(rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      seconds[name].append(workers[name].time(steps))
  return seconds


def summary(seconds: dict[str, list[list[float]]], batch: int) -> dict[str, dict[str, Any]]:
  """Per side: median s/step, images/s and seg_jax / side overall and per round."""
  ours = seconds[SEG_JAX]
  out = {}
  for name, rounds in seconds.items():
    median = statistics.median(s for r in rounds for s in r)
    out[name] = {
        "median_s": median, "images_per_s": batch / median,
        "seg_jax_over_side": median / statistics.median(s for r in ours for s in r),
        "per_round": [statistics.median(theirs) / statistics.median(mine)
                      for theirs, mine in zip(rounds, ours)]}
  return out


def print_case(name: str, case: dict[str, Any], workers: dict[str, step_protocol.Worker],
               rows: dict[str, dict[str, Any]]) -> None:
  """The case's table: one row per side."""
  info = workers[SEG_JAX].info
  print(f"\n{name}: {case['config']}, batch {info['batch']} x {info['size'][0]}x"
        f"{info['size'][1]} x {case['bands']} bands, float32")
  counts = {n: w.info["params"] for n, w in workers.items()}
  same = "equal" if len(set(counts.values())) == 1 else "DIFFERENT: NOT THE SAME MODEL"
  print("parameters: " + ", ".join(f"{n} {c:,}" for n, c in counts.items()) + f" ({same})")
  print("| side | s/step (median) | images/s | seg_jax / side | per round | warm-up steps (s) "
        "| cores, intra-op threads | version |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- |")
  for side, row in rows.items():
    w = workers[side].info
    threads = w.get("torch_threads", w["threads"].get("tf_XLAEigen", "?"))
    print(f"| {side} | {row['median_s']:.3f} | {row['images_per_s']:.1f} | "
          f"{row['seg_jax_over_side']:.2f} | {', '.join(f'{v:.2f}' for v in row['per_round'])} | "
          f"{', '.join(f'{s:.1f}' for s in w['warmup_seconds'])} | {len(w['cpus'])}, {threads} | "
          f"{w['version']} |", flush=True)


def run_case(name: str, case: dict[str, Any], variants: Sequence[str], rounds: int, steps: int,
             warmup: int, cpus: Sequence[int], log: TextIO) -> dict[str, Any] | None:
  """Runs and prints one case; returns its record (None when seg_jax's side failed)."""
  try:
    workers = start_workers(case, variants, warmup, cpus, log)
  except step_protocol.WorkerError as e:
    print(f"\n{name}: not timed: {e}", flush=True)
    return None
  try:
    seconds = time_rounds(workers, rounds, steps)
  except step_protocol.WorkerError as e:  # a worker died (say, out of memory): the next case
    print(f"\n{name}: not timed: {e}", flush=True)
    return None
  finally:
    for worker in workers.values():
      worker.close()
  rows = summary(seconds, workers[SEG_JAX].info["batch"])
  print_case(name, case, workers, rows)
  return {"case": name, **case, "sides": {n: {"info": w.info, "seconds": seconds[n], **rows[n]}
                                          for n, w in workers.items()}}


def run(cases: Sequence[str], variants: Sequence[str], rounds: int = 3, steps: int = 4,
        warmup: int = 2, threads: int = 0, toy: bool = False, json_path: str = "",
        log_path: str = "") -> list[dict[str, Any]]:
  """Runs `cases` (keys of CASES) against the PyTorch `variants`; returns their records."""
  cpus = sorted(os.sched_getaffinity(0))[:threads or None]
  if variants and importlib.util.find_spec("torch") is None:
    print(f"no torch in {sys.executable}: the PyTorch side is left out (benchmarks/README.md "
          "says how to install it)")
    variants = ()
  log_path = log_path or tempfile.mkstemp(prefix="cpu_vs_torch_", suffix=".log")[1]
  print(f"machine: {machine(cpus)}\nworkers' stderr: {log_path}", flush=True)
  records = []
  with open(log_path, "a") as log:
    for name in cases:
      case = {**CASES[name], "toy": toy}
      record = run_case(name, case, variants, rounds, steps, warmup, cpus, log)
      records += [record] if record else []
  print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
  if json_path:
    with open(json_path, "w") as f:
      json.dump(records, f, indent=1)
  return records


def main(argv: Sequence[str]) -> None:
  """Runs the cases of --cases."""
  del argv
  unknown = sorted(set(FLAGS.cases) - set(CASES))
  if unknown:
    raise errors.FlagError(f"--cases: unknown {unknown}; the cases are {list(CASES)}")
  run(FLAGS.cases, FLAGS.torch, FLAGS.rounds, FLAGS.steps, FLAGS.warmup, FLAGS.threads,
      FLAGS.toy, FLAGS.json, FLAGS.log)


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, shared=())
