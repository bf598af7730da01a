"""Preemption notices (SIGTERM): every process of a run saves at the same step, then stops.

One process: a SIGTERM handler sets a flag that the loop reads after each step.
Several processes (`jax.distributed`): an Orbax save is a collective, so hosts that reacted to
their own signals at different steps would hang or write inconsistent checkpoints. JAX's
preemption service (started by `jax.distributed.initialize`, listening for SIGTERM) turns a
notice on any host into one agreed step, which `multihost_utils.reached_preemption_sync_point`
reports on every host; the loop calls it after every step.
"""

from __future__ import annotations

import signal

from absl import logging
import jax
from jax.experimental import multihost_utils


class PreemptionWatch:
  """Context manager; `reached(step)` is True at the step where every process should save."""

  def __init__(self):
    self._received = False
    self._previous = None
    self._coordinated = jax.process_count() > 1

  def __enter__(self) -> PreemptionWatch:
    if not self._coordinated:  # several processes: JAX's own SIGTERM handler must stay
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
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
    return self._received

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
