"""Train-step worker processes of a benchmark: one framework per process, timed on request.

The coordinator (`Worker`) starts `python -m <module>` with its CPU affinity set to the given
cores (as `taskset -c` does) and the thread variables of `thread_env`, sends it a JSON spec and
then asks it for timed steps, one request at a time. The worker (`serve`) builds its step from
the spec, runs the warm-up steps (compiling), answers with what it built, then times the steps
each request asks for. Workers wait on their stdin between requests, so only one process works
at a time and frameworks never share a process or its thread pools.

Standard library only: the PyTorch worker imports no JAX, and the seg_jax worker no PyTorch.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TextIO

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Read at start-up: OpenMP and MKL (PyTorch's intra-op pools) and XLA:CPU (its Eigen pool is
# NPROC threads, else as many as the affinity mask allows).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NPROC")

Step = Callable[[], None]


class WorkerError(RuntimeError):
  """A worker failed to build or run its step, or exited."""


def thread_env(threads: int) -> dict[str, str]:
  """The environment variables that size every intra-op thread pool to `threads`."""
  return {name: str(threads) for name in THREAD_VARIABLES}


class Worker:
  """A worker process, started with its spec and built (warm) when the constructor returns."""

  def __init__(self, module: str, spec: dict[str, Any], cpus: Sequence[int], log: TextIO):
    cpus = tuple(cpus)
    self.module = module
    self.log = log
    self.proc = subprocess.Popen(
        [sys.executable, "-m", module], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=log, text=True, cwd=REPO, env={**os.environ, **thread_env(len(cpus))},
        preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    self.info = self._ask(spec)

  def _ask(self, message: dict[str, Any]) -> dict[str, Any]:
    try:
      self.proc.stdin.write(json.dumps(message) + "\n")
      self.proc.stdin.flush()
    except BrokenPipeError:
      pass  # the worker has exited; readline says so below
    line = self.proc.stdout.readline()
    if not line:
      raise WorkerError(f"{self.module} exited with code {self.proc.wait()} (its traceback is "
                        f"in {getattr(self.log, 'name', 'its stderr')})")
    reply = json.loads(line)
    if "error" in reply:
      self.close()
      raise WorkerError(f"{self.module}: {reply['error']}")
    return reply

  def time(self, steps: int) -> list[float]:
    """Seconds of each of `steps` train steps, timed one by one."""
    return self._ask({"steps": steps})["seconds"]

  def close(self) -> None:
    """Ends the worker (closing its stdin) and waits for it."""
    if self.proc.stdin and not self.proc.stdin.closed:
      self.proc.stdin.close()
    self.proc.wait(timeout=60)


def thread_names() -> dict[str, int]:
  """How many threads of this process bear each name (XLA's intra-op pool: "tf_XLAEigen")."""
  names = collections.Counter()
  for task in os.listdir("/proc/self/task"):
    with open(f"/proc/self/task/{task}/comm") as f:
      names[f.read().strip()] += 1
  return dict(names)


def timed(step: Step, steps: int) -> list[float]:
  """Seconds of each call of `step` (which returns once its results are computed)."""
  seconds = []
  for _ in range(steps):
    start = time.perf_counter()
    step()
    seconds.append(time.perf_counter() - start)
  return seconds


def serve(build: Callable[[dict[str, Any]], tuple[Step, dict[str, Any]]]) -> None:
  """The worker's side: `build(spec)` gives the step and what to report, then requests are served.

  The protocol goes over a copy of stdout; the process's own stdout is sent to stderr, so that
  nothing a library prints can break a reply.
  """
  replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
  os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

  def reply(message: dict[str, Any]) -> None:
    replies.write(json.dumps(message) + "\n")
    replies.flush()

  step = None
  for line in sys.stdin:
    request = json.loads(line)
    try:
      if step is None:
        step, info = build(request)
        info["warmup_seconds"] = timed(step, request["warmup"])
        reply({**info, "cpus": sorted(os.sched_getaffinity(0)), "threads": thread_names()})
      else:
        reply({"seconds": timed(step, request["steps"])})
    except Exception as e:  # pylint: disable=broad-except (the coordinator reports it, goes on)
      traceback.print_exc()  # into the workers' log
      reply({"error": " ".join(traceback.format_exception_only(e)).strip().replace("\n", " ")})
      return
