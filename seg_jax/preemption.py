"""Preemption notices (SIGTERM): every process of a run saves at the same step, then stops.

One process: a SIGTERM handler sets a flag that the loop reads after each step.
Several processes (`jax.distributed`): an Orbax save is a collective, so hosts that reacted to
their own signals at different steps would hang or write inconsistent checkpoints. JAX's
preemption service (started by `jax.distributed.initialize`, listening for SIGTERM) turns a
notice on any host into one agreed step, which `multihost_utils.reached_preemption_sync_point`
reports on every host; the loop calls it after every step.

Ctrl-C (SIGINT) in a one-process run is a notice too (several processes agree on SIGTERM only): the loop saves and exits 75; a second
Ctrl-C exits at once (130, the steps since the last checkpoint are lost).

Watches nest: the outermost one installs the handlers and a watch entered inside it (the
training loop inside a sweep) shares them, so one notice stops both and one handler is
installed per process. Outside any watch (launch, compiling, the end-of-run outputs: nothing
unsaved to lose) `exit_on_signal` makes SIGTERM and SIGINT stop the command at once with the
same code, 75; a write cut short there leaves a temporary file that the next start removes.
"""

from __future__ import annotations

import os
import signal
import sys

from absl import logging
import jax
from jax.experimental import multihost_utils

from seg_jax import errors


def _signals() -> tuple[signal.Signals, ...]:
  """The signals this process answers itself: SIGINT always, SIGTERM unless several processes
  coordinate it (JAX's preemption service must keep its own handler)."""
  return ((signal.SIGINT,) if jax.process_count() > 1 else (signal.SIGINT, signal.SIGTERM))


def _stop(signum, frame):
  """Exits at once (an exception could be swallowed by a callback it interrupts)."""
  del frame
  sys.stderr.write(f"error (preempted): {signal.Signals(signum).name} received outside "
                   "training (launch, compiling or the final outputs): nothing unsaved was "
                   "lost; rerun the same command to resume\n")
  sys.stderr.flush()
  os._exit(errors.EXIT_PREEMPTED)  # pylint: disable=protected-access


def exit_on_signal() -> None:
  """Makes SIGTERM and SIGINT exit at once with one line and code 75 until a
  `PreemptionWatch` takes them over; call it from a command's main, in the main thread."""
  for sig in _signals():
    signal.signal(sig, _stop)


class PreemptionWatch:
  """Context manager; `reached(step)` is True at the step where every process should save.

  Entered while another watch is active, it installs nothing and reports that watch's notice.
  """

  _installed: PreemptionWatch | None = None  # the watch whose SIGTERM handler is installed

  def __init__(self):
    self._received = False
    self._previous = {}
    self._owner = self  # the watch whose handler sees the signal
    self._coordinated = jax.process_count() > 1

  def __enter__(self) -> PreemptionWatch:
    if PreemptionWatch._installed is not None:
      self._owner = PreemptionWatch._installed
    elif not self._coordinated:  # several processes: JAX's own SIGTERM handler must stay
      try:
        for sig in _signals():
          self._previous[sig] = signal.signal(sig, self._handle)
        PreemptionWatch._installed = self
      except ValueError:  # not the main thread: preemption is then left to the caller
        self._previous = {}
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self._received:
      sys.stderr.write("error (interrupted): second Ctrl-C: stopped at once; the steps since "
                       "the last checkpoint are lost, rerun the same command to resume\n")
      sys.stderr.flush()
      os._exit(errors.EXIT_INTERRUPTED)  # pylint: disable=protected-access
    logging.warning("%s received: saving a checkpoint and exiting after this step%s",
                    signal.Signals(signum).name,
                    " (Ctrl-C again stops at once, unsaved)" if signum == signal.SIGINT else "")
    self._received = True

  def reached(self, step: int) -> bool:
    """Whether to save and stop after `step`; call it after every step, on every process."""
    if self._coordinated:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._owner._received  # pylint: disable=protected-access

  def __exit__(self, *exc):
    if PreemptionWatch._installed is self:
      PreemptionWatch._installed = None
      for sig, previous in self._previous.items():
        if previous is not None:  # None: a handler not installed from Python; ours stays
          signal.signal(sig, previous)
    self._owner = self
