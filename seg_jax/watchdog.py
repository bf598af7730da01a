"""The NaN/Inf watchdog of the training loop: step metrics checked a fixed lag behind the device,
and the message that says where a run stopped, what was kept and what to change."""

from __future__ import annotations

import collections
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from seg_jax.errors import NonFiniteLossError


class StepMetrics:
  """Per-step train metrics still on the device, checked for NaN/Inf a fixed lag behind.

  Each step's metrics start an asynchronous copy to the host, and after step N the metrics of
  step N - `lag` are checked: the host waits only for a step that finished while later ones
  keep the device busy, so the check costs no device time. A non-finite loss (of any replica)
  stops the run `lag` steps after it happened (on every process at the same step), naming that
  step. Checked metrics hold one value per replica.
  """

  def __init__(self, describe_stop: Callable[[int, int, dict[str, np.ndarray]], str],
               lag: int = 2):
    self._describe_stop = describe_stop
    self._lag = lag
    self._unchecked: collections.deque = collections.deque()
    self._checked: list[tuple[int, dict[str, np.ndarray]]] = []
    self._step = 0

  def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
    """Queues the metrics of `step` and checks those of step - lag."""
    for value in metrics.values():
      value.copy_to_host_async()
    self._unchecked.append((step, metrics))
    self._step = step
    while len(self._unchecked) > self._lag:
      self._check_oldest()

  def _check_oldest(self) -> None:
    step, metrics = self._unchecked.popleft()
    values = {k: np.asarray(v, np.float64).reshape(-1) for k, v in metrics.items()}
    if not all(np.isfinite(v).all() for v in values.values()):
      raise NonFiniteLossError(self._describe_stop(self._step, step, values))
    self._checked.append((step, values))

  def drain(self) -> list[tuple[int, dict[str, np.ndarray]]]:
    """Checks every queued step; returns (step, {name: value per replica}) since the last drain."""
    while self._unchecked:
      self._check_oldest()
    out, self._checked = self._checked, []
    return out


def non_finite_message(config: ml_collections.ConfigDict, workdirs: list[str],
                        last_checkpoint: Callable[[], int | None]
                        ) -> Callable[[int, int, dict[str, np.ndarray]], str]:
  """Builds the message of a NaN/Inf stop: where it happened, what was kept, what to change.

  `workdirs` are the run folders of the replicas (one for one run); the message names the first
  replica whose values are not finite.
  """
  o = config.optim

  def describe(now: int, step: int, values: dict[str, np.ndarray]) -> str:
    bad = next(k for k in range(len(workdirs))
               if not all(np.isfinite(v[k]) for v in values.values()))
    saved = last_checkpoint()
    kept = (f"the last checkpoint is step {saved} in {workdirs[bad]}" if saved is not None
            else "no checkpoint was saved")
    replica = (f" in replica seed {config.seed + bad} ({workdirs[bad]})" if len(workdirs) > 1
               else "")
    if o.grad_clip_norm:
      advice = (f"lower optim.learning_rate (now {o.learning_rate:g}) or optim.grad_clip_norm "
                f"(now {o.grad_clip_norm:g}), lengthen optim.warmup_steps (now "
                f"{o.warmup_steps}), or check the data")
    else:
      advice = (f"lower optim.learning_rate (now {o.learning_rate:g}) or enable "
                "optim.grad_clip_norm (e.g. 1.0)")
    return (f"training stopped at step {now}: loss {values['loss'][bad]} / gradient norm "
            f"{values['grad_norm'][bad]} at step {step}{replica} is not finite; {kept}. "
            f"To fix: {advice}")

  return describe

