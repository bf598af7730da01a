"""Fault injection: `python -m seg_jax.main` killed at chosen points and rerun ends exactly like an
uninterrupted run, logs each step once and leaves no temporary folder behind.

Each test runs the real command in subprocesses on the tiny config of tests/train_testing.py
(32x32 images, batch 2, 6 steps, evaluated and checkpointed after every step) with the
persistent compilation cache, so a run takes a few seconds once compiled.
"""

import collections
import concurrent.futures
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from absl.testing import absltest
import numpy as np
import pytest

from seg_jax import errors
from seg_jax import workdir as workdir_lib
from seg_jax import writers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
# Evaluated (hence checkpointed) every step, periodic checkpoints every 4: the layout in which
# the former separate best-checkpoint folder replayed into a step it had already saved.
OVERRIDES = ("--config.train.num_steps=6", "--config.train.eval_every=1",
             "--config.train.checkpoint_every=4", "--config.train.keep_checkpoints=2")


def _start(workdir, *flags, kill_at=None):
  """Starts the command (under tests/fault_points.py if `kill_at` is (point, step))."""
  args = ([sys.executable, os.path.join(TESTS, "fault_points.py"), kill_at[0],
           str(kill_at[1])] if kill_at else [sys.executable, "-m", "seg_jax.main"])
  args += [f"--config={os.path.join(TESTS, 'train_testing.py')}", f"--workdir={workdir}",
           *OVERRIDES, *flags]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
             JAX_PLATFORMS="cpu")
  return subprocess.Popen(args, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)


def _finish(proc, signal_after_log=None, target=None, timeout=240):
  """Reads the stderr of `proc` to its end; returns (exit code, stderr).

  signal_after_log: (signal, step): sent to `target` (default `proc`) once `proc` logs
  "step N/".
  """
  lines = []
  try:
    for line in proc.stderr:
      lines.append(line)
      if signal_after_log and f"step {signal_after_log[1]}/" in line:
        (target or proc).send_signal(signal_after_log[0])
        signal_after_log = None
    proc.wait(timeout=timeout)
  finally:
    if proc.poll() is None:
      proc.kill()
  return proc.returncode, "".join(lines)


def run_main(workdir, *flags, kill_at=None, signal_after_log=None):
  """Runs the command; returns (exit code, stderr). See `_start` and `_finish`."""
  return _finish(_start(workdir, *flags, kill_at=kill_at), signal_after_log)


def run_two_processes(workdir, port, signal_after_log=None):
  """Runs the command as 2 processes x 1 CPU device; returns [(exit code, stderr)] of each.

  signal_after_log: (signal, step) sent to process 1 only, once process 0 logs "step N/".
  """
  procs = [_start(workdir, "--distributed", f"--coordinator_address=localhost:{port}",
                  "--num_processes=2", f"--process_id={i}") for i in range(2)]
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    first = pool.submit(_finish, procs[0], signal_after_log, procs[1])
    second = pool.submit(_finish, procs[1])
    return [first.result(), second.result()]


def preempt_one_of_two(test, workdir) -> int:
  """Runs the command as 2 processes, SIGTERM to process 1 after step 1; asserts both exit
  preempted, having saved the same step, and returns that step."""
  results = run_two_processes(workdir, free_port(), signal_after_log=(signal.SIGTERM, 1))
  steps = []
  for code, err in results:
    test.assertEqual(code, errors.EXIT_PREEMPTED, err[-3000:])
    steps += re.findall(r"preempted: checkpoint saved at step (\d+)", err)
  test.assertLen(steps, 2)
  test.assertEqual(steps[0], steps[1])
  return int(steps[0])


def free_port() -> int:
  """A free TCP port on localhost (the coordinator's)."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _read_jsonl(workdir):
  with open(os.path.join(workdir, workdir_lib.METRICS_FILE)) as f:
    return [json.loads(line) for line in f]


def _event_steps(workdir):
  """Counter of (tag, step) over every TensorBoard event file of the workdir."""
  counts = collections.Counter()
  for path in glob.glob(os.path.join(workdir, writers.EVENT_FILES)):
    for event in writers.read_events(path):
      counts.update((v.tag, event.step) for v in event.summary.value)
  return counts


def _flat_numbers(record, prefix=""):
  out = {}
  for key, value in record.items():
    if isinstance(value, dict):
      out.update(_flat_numbers(value, f"{prefix}{key}."))
    elif isinstance(value, (int, float)) or value is None:
      out[prefix + key] = np.nan if value is None else value
  return out


class _UninterruptedRunTest(absltest.TestCase):
  """Compares workdirs with one uninterrupted run of the same command (`FLAGS` added)."""

  FLAGS = ()
  RUNS = ("",)  # the run folders inside a workdir ("": the workdir itself)

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.straight = tempfile.mkdtemp()
    code, err = run_main(cls.straight, *cls.FLAGS)
    assert code == 0, err[-3000:]

  def new_workdir(self):
    workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, workdir, ignore_errors=True)
    return workdir

  def run_main(self, workdir, **kwargs):
    return run_main(workdir, *self.FLAGS, **kwargs)

  def rerun_to_the_end(self, workdir):
    """Reruns the plain command; it must finish like the uninterrupted run. Returns stderr."""
    code, err = self.run_main(workdir)
    self.assertEqual(code, 0, err[-3000:])
    self.assertSameAsUninterrupted(workdir)
    return err

  def assertSameAsUninterrupted(self, workdir, rtol=0.0):
    for run in self.RUNS:
      self.assertSameRun(os.path.join(workdir, run), os.path.join(self.straight, run), rtol)

  def assertSameRun(self, workdir, straight, rtol):
    finals = []
    for folder in (workdir, straight):
      with open(os.path.join(folder, "final_metrics.json")) as f:
        finals.append(json.load(f))
    self.assertEqual(finals[0]["step"], finals[1]["step"])
    got, expected = _flat_numbers(finals[0]), _flat_numbers(finals[1])
    self.assertEqual(sorted(got), sorted(expected))
    np.testing.assert_allclose([got[k] for k in sorted(got)],
                               [expected[k] for k in sorted(expected)], atol=1e-6, rtol=rtol)
    self.assertEqual([r["step"] for r in _read_jsonl(workdir)],
                     [r["step"] for r in _read_jsonl(straight)])
    events = _event_steps(workdir)
    self.assertEqual(set(events), set(_event_steps(straight)))
    self.assertEqual(max(events.values()), 1, "a TensorBoard value was logged twice")
    self.assertEqual(glob.glob(os.path.join(workdir, "**", "*orbax-checkpoint-tmp*"),
                               recursive=True), [])
    for name in ("confusion_matrix.png", "curves.png"):
      self.assertTrue(os.path.exists(os.path.join(workdir, name)), name)
    # One prediction grid per evaluation of the uninterrupted run.
    self.assertEqual(set(os.listdir(os.path.join(workdir, workdir_lib.PREDICTIONS_DIR))),
                     {f"step_{r['step']}.png" for r in _read_jsonl(straight)})

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.straight, ignore_errors=True)
    super().tearDownClass()


class FaultInjectionTest(_UninterruptedRunTest):
  """Each test compares its workdir with one uninterrupted run of the same command."""

  @pytest.mark.slow
  def test_a_run_stopped_at_every_kind_of_moment_ends_like_the_uninterrupted_run(self):
    # One workdir through every fault in turn, each run resuming from what the last one left;
    # the signals are those of issue 19 items 6, 7, 8 (Ctrl-C in the loop saves, 75; SIGTERM
    # at launch and during the end-of-run outputs is 75 too; kill -9 right after
    # final_metrics.json finds every output).
    workdir = self.new_workdir()
    proc = _start(workdir)
    time.sleep(1.0)  # importing
    proc.send_signal(signal.SIGTERM)
    code, err = _finish(proc)
    self.assertEqual(code, errors.EXIT_PREEMPTED, err[-3000:])
    self.assertNotIn("Traceback", err)

    code, err = run_main(workdir, signal_after_log=(signal.SIGINT, 1))
    self.assertEqual(code, errors.EXIT_PREEMPTED, err[-3000:])
    self.assertIn("preempted: checkpoint saved at step", err)

    code, _ = run_main(workdir, kill_at=("evaluation", 3))
    self.assertEqual(code, -signal.SIGKILL)
    self.assertFalse(os.path.exists(os.path.join(workdir, "checkpoints", "3")))

    code, err = run_main(workdir, signal_after_log=(signal.SIGTERM, 3))
    self.assertEqual(code, errors.EXIT_PREEMPTED, err[-3000:])
    self.assertIn("preempted: checkpoint saved at step", err)

    code, _ = run_main(workdir, kill_at=("temporary", 5))
    self.assertEqual(code, -signal.SIGKILL)
    self.assertNotEmpty(glob.glob(os.path.join(workdir, "checkpoints", "5.orbax-checkpoint-tmp*")))

    code, err = run_main(workdir, signal_after_log=(signal.SIGKILL, 5))
    self.assertEqual(code, -signal.SIGKILL)
    self.assertIn("resumed from step 4", err)

    code, _ = run_main(workdir, kill_at=("checkpoint", 6))
    self.assertEqual(code, -signal.SIGKILL)
    self.assertFalse(os.path.exists(os.path.join(workdir, "final_metrics.json")))

    code, err = run_main(workdir, kill_at=("outputs", 0))
    self.assertEqual(code, errors.EXIT_PREEMPTED, err[-3000:])
    self.assertIn("error (preempted): SIGTERM", err)
    self.assertFalse(os.path.exists(os.path.join(workdir, "final_metrics.json")))

    code, _ = run_main(workdir, kill_at=("final", 0))
    self.assertEqual(code, -signal.SIGKILL)
    for name in ("confusion_matrix.png", "curves.png", "final_metrics.json"):
      self.assertTrue(os.path.exists(os.path.join(workdir, name)), name)
    self.assertSameAsUninterrupted(workdir)

    os.remove(os.path.join(workdir, "final_metrics.json"))
    self.rerun_to_the_end(workdir)


if __name__ == "__main__":
  absltest.main()
