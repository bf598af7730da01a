"""Preemption notices (SIGTERM): every process of a run saves at the same step, then stops.

One process: a SIGTERM handler sets a flag that the loop reads after each step.
Several processes (`jax.distributed`): an Orbax save is a collective, so hosts that reacted to
their own signals at different steps would hang or write inconsistent checkpoints. JAX's
preemption service (started by `jax.distributed.initialize`, listening for SIGTERM) turns a
notice on any host into one agreed step, which `multihost_utils.reached_preemption_sync_point`
reports on every host; the loop calls it after every step.

Watches nest: the outermost one installs the SIGTERM handler and a watch entered inside it (the
training loop inside a sweep) shares that one, so one notice stops both and one handler is
installed per process.
"""

from __future__ import annotations

import signal

from absl import logging
import jax
from jax.experimental import multihost_utils


class PreemptionWatch:
  """Context manager; `reached(step)` is True at the step where every process should save.

  Entered while another watch is active, it installs nothing and reports that watch's notice.
  """

  _installed: PreemptionWatch | None = None  # the watch whose SIGTERM handler is installed

  def __init__(self):
    self._received = False
    self._previous = None
    self._owner = self  # the watch whose handler sees the signal
    self._coordinated = jax.process_count() > 1

  def __enter__(self) -> PreemptionWatch:
    if PreemptionWatch._installed is not None:
      self._owner = PreemptionWatch._installed
    elif not self._coordinated:  # several processes: JAX's own SIGTERM handler must stay
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        PreemptionWatch._installed = self
      except ValueError:  # not the main thread: preemption is then left to the caller
        self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint and exiting after this step")
    self._received = True

  def reached(self, step: int) -> bool:
    """Whether to save and stop after `step`; call it after every step, on every process."""
    if self._coordinated:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._owner._received  # pylint: disable=protected-access

  def __exit__(self, *exc):
    if PreemptionWatch._installed is self:
      PreemptionWatch._installed = None
      if self._previous is not None:  # None: a handler not installed from Python; ours stays
        signal.signal(signal.SIGTERM, self._previous)
    self._owner = self
