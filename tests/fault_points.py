"""Runs `python -m seg_jax.main` and SIGKILLs it at an exact point of the run.

  python tests/fault_points.py POINT STEP --config=... --workdir=... [--config.x=y ...]

POINT is where the process kills itself (no cleanup, as with `kill -9`):
  evaluation   during the evaluation after step STEP (its first batch done, the second not)
  temporary    while the checkpoint folder of step STEP is still temporary (before its rename)
  checkpoint   right after the checkpoint of step STEP is committed
  final        right after final_metrics.json is written (STEP unused)
  outputs      not killed: sent SIGTERM as the end-of-run outputs begin (STEP unused)
"""

import os
import runpy
import signal
import sys


def _die():
  sys.stderr.flush()
  os.kill(os.getpid(), signal.SIGKILL)


def _kill_during_evaluation(step: int) -> None:
  import numpy as np  # pylint: disable=g-import-not-at-top
  from seg_jax import steps  # pylint: disable=g-import-not-at-top
  evaluate = steps.Trainer.evaluate_all

  def patched(self, state, *args, **kwargs):
    if int(np.max(state.step)) == step:  # one step per replica
      inner = self.eval_step
      calls = []

      def eval_step(*a):
        calls.append(1)
        if len(calls) == 2:
          _die()
        return inner(*a)

      self.eval_step = eval_step
    return evaluate(self, state, *args, **kwargs)

  steps.Trainer.evaluate_all = patched


def _kill_in_temporary_folder(step: int) -> None:
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=g-import-not-at-top
  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def patched(self, *args, **kwargs):
    if self.get_final().name == str(step):
      _die()
    return await finalize(self, *args, **kwargs)

  atomicity.AtomicRenameTemporaryPath.finalize = patched


def _kill_after_checkpoint(step: int) -> None:
  from seg_jax import checkpoint  # pylint: disable=g-import-not-at-top
  save = checkpoint.Checkpointer.save

  def patched(self, saved_step, *args, **kwargs):
    save(self, saved_step, *args, **kwargs)
    if saved_step == step:
      self.wait()
      _die()

  checkpoint.Checkpointer.save = patched


def _kill_after_final(step: int) -> None:
  del step
  from seg_jax import workdir  # pylint: disable=g-import-not-at-top
  write_final = workdir.RunDir.write_final

  def patched(self, record):
    write_final(self, record)
    _die()

  workdir.RunDir.write_final = patched


def _sigterm_in_outputs(step: int) -> None:
  del step
  from seg_jax import outputs  # pylint: disable=g-import-not-at-top
  write_curves = outputs.write_curves

  def patched(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return write_curves(*args, **kwargs)

  outputs.write_curves = patched


POINTS = {"evaluation": _kill_during_evaluation, "temporary": _kill_in_temporary_folder,
          "checkpoint": _kill_after_checkpoint, "final": _kill_after_final,
          "outputs": _sigterm_in_outputs}

if __name__ == "__main__":
  point, step = sys.argv[1], int(sys.argv[2])
  del sys.argv[1:3]
  POINTS[point](step)
  runpy.run_module("seg_jax.main", run_name="__main__", alter_sys=True)
