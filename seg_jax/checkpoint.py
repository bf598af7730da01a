"""Orbax checkpoints of a training run: periodic saves for resuming plus the best by val mIoU.

Layout in the workdir: `checkpoints/<step>/` (the last `keep` periodic saves: train state and
input-pipeline state) and `best/<step>/` (the train state with the highest validation mIoU).
"""

from __future__ import annotations

import math
import os
from typing import Any

import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores train state (and input-pipeline state) under a workdir."""

  def __init__(self, workdir: str, keep: int = 2):
    """Opens (creating if needed) `workdir/checkpoints` and `workdir/best`."""
    if keep < 1:
      raise ValueError(f"keep must be >= 1, got {keep}")
    workdir = os.path.abspath(workdir)
    self.latest = ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=("state", "pipeline"))
    self.best = ocp.CheckpointManager(
        os.path.join(workdir, "best"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, best_fn=lambda m: m["miou"], best_mode="max"),
        item_names=("state",))

  def save(self, step: int, state: Any, pipeline_state: dict) -> None:
    """Periodic save of the train state and the input-pipeline state after `step` steps."""
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), pipeline=ocp.args.JsonSave(pipeline_state)),
                     force=True)

  def save_best(self, step: int, state: Any, miou: float) -> None:
    """Offers the state for keep-best; only the highest `miou` so far is kept."""
    if math.isnan(miou):
      return
    self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                   metrics={"miou": float(miou)}, force=True)

  def restore_latest(self, abstract_state: Any) -> tuple[Any, dict] | None:
    """(state, pipeline state) of the newest periodic checkpoint, or None if there is none.

    `abstract_state` is a pytree of `jax.ShapeDtypeStruct` (with shardings) shaped like the
    state; restoring into it keeps optax NamedTuples and places arrays on the mesh.
    """
    step = self.latest.latest_step()
    if step is None:
      return None
    restored = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), pipeline=ocp.args.JsonRestore()))
    return restored.state, restored.pipeline

  def restore_state(self, abstract_state: Any, which: str = "best") -> tuple[Any, int]:
    """(state, step) of the "best" or "latest" checkpoint; ValueError if there is none."""
    if which not in ("best", "latest"):
      raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    manager = self.best if which == "best" else self.latest
    step = manager.best_step() if which == "best" else manager.latest_step()
    if step is None:
      raise ValueError(f"no {which!r} checkpoint under {manager.directory}")
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
    return restored.state, step

  def close(self) -> None:
    """Waits for pending saves and releases the managers."""
    self.latest.close()
    self.best.close()
