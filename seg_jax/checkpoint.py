"""Orbax checkpoints of a run: one folder per saved step, each complete on its own.

`<directory>/<step>/state` holds the train state and `<step>/run` a JSON record: the
input-pipeline position, a fingerprint of the state's bits, the training time so far, the config
the state was trained with and, when the step was evaluated, the validation mIoU. The latest `keep` checkpoints and the one with the highest mIoU are kept, so
"latest" and "best" are two views of one set of checkpoints and cannot disagree.

Restoring walks back past a checkpoint that cannot be read (a truncated or garbled array file, a
missing or garbled metadata file, bits that do not match their fingerprint) to the newest intact
one, and logs which it skipped and why. When resuming, a skipped checkpoint newer than the one
restored is moved to the folder of unreadable checkpoints so that its step can be saved again.
Where both folders lie in a run folder is `seg_jax.workdir.RunDir`'s to say.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from seg_jax import errors
from seg_jax import storage

WHICH = ("best", "latest")


class Restored(NamedTuple):
  """A restored checkpoint: train state, its step, input-pipeline position and training time."""

  state: Any
  step: int
  pipeline: dict[str, Any]
  seconds: float


class _Unreadable(Exception):
  """A checkpoint whose files cannot be turned back into the saved state."""


class _RestoreLoop(asyncio.SelectorEventLoop):
  """The event loop of an Orbax restore, which ends the reads a failed restore abandons.

  Orbax reads every array of a checkpoint at once on a fresh event loop and closes that loop as
  soon as one read fails, with the other reads suspended: each would later print a traceback
  (a coroutine closed mid-read, a TensorStore completion posted to the closed loop, an error
  never retrieved), thousands for a large model. This loop cancels and drains them before it
  closes, as `asyncio.run` does; the first error is the one reported.
  """

  def close(self):
    if not self.is_running() and not self.is_closed():
      pending = asyncio.all_tasks(self)
      for task in pending:
        task.cancel()
      if pending:
        self.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    super().close()


class _RestoreLoops(asyncio.DefaultEventLoopPolicy):
  def new_event_loop(self):
    return _RestoreLoop()


@contextlib.contextmanager
def _restore_loops() -> Iterator[None]:
  """Event loops created meanwhile (Orbax makes one per restore) are `_RestoreLoop`s."""
  previous = asyncio.get_event_loop_policy()
  asyncio.set_event_loop_policy(_RestoreLoops())
  try:
    yield
  finally:
    asyncio.set_event_loop_policy(previous)


@jax.jit
def _fingerprint(tree: Any) -> list[jax.Array]:
  """One uint32 per leaf: a position-weighted, wrapping sum of the leaf's bits."""
  out = []
  for leaf in jax.tree.leaves(tree):
    bits = leaf.reshape(-1)
    bits = jax.lax.bitcast_convert_type(bits, jnp.dtype(f"uint{8 * bits.dtype.itemsize}"))
    bits = bits.astype(jnp.uint32)
    weights = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + 1
    out.append(jnp.sum(bits * weights, dtype=jnp.uint32))
  return out


def fingerprint(state: Any) -> str:
  """Hex digest of the bits of every array in `state` (equal bits give equal fingerprints)."""
  leaves = np.asarray(jax.device_get(_fingerprint(state)), np.uint32)
  return hashlib.sha256(leaves.tobytes()).hexdigest()


def _reason(exc: BaseException) -> str:
  """The first line of an exception's message, short enough for a log line."""
  lines = str(exc).strip().splitlines()
  text = lines[0] if lines else ""
  text = text if len(text) <= 160 else text[:157] + "..."
  return f"{type(exc).__name__}: {text}" if not isinstance(exc, _Unreadable) else text


def _cause(exc: BaseException) -> str:
  """The operating system's words for the first OSError in an exception's chain, or the error
  code TensorStore names in its message (e.g. "No space left on device"), else `_reason`."""
  seen = exc
  while seen is not None:
    if isinstance(seen, OSError) and seen.strerror:
      return seen.strerror
    code = re.search(r"os_error_code='(\d+)'", str(seen))
    if code:
      return os.strerror(int(code.group(1)))
    seen = seen.__cause__ or seen.__context__
  return _reason(exc)


class Checkpointer:
  """Saves, keeps and restores the checkpoints in one folder.

  With `read_only=True` nothing is created, moved or deleted (eval-only runs and inference on a
  run folder that may be read-only). Unreadable checkpoints skipped when resuming are moved to
  `unreadable`.
  """

  def __init__(self, directory: str, unreadable: str, keep: int = 2, *,
               read_only: bool = False):
    if keep < 1:
      raise errors.ConfigError(f"train.keep_checkpoints must be >= 1, got {keep}")
    self.directory = storage.absolute(directory)
    self.unreadable = storage.absolute(unreadable)
    self.keep = keep
    self.read_only = read_only
    self._manager = None
    self._miou: dict[int, float | None] = {}  # known mIoU of saved steps (None: not evaluated)
    self._failed = False  # a save failed: its error was raised, close() does not raise it again
    if read_only and not storage.isdir(self.directory):
      return
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            create=not read_only, read_only=read_only, cleanup_tmp_directories=not read_only),
        item_names=("state", "run"))

  def steps(self) -> list[int]:
    """Saved steps, oldest first."""
    return sorted(self._manager.all_steps()) if self._manager is not None else []

  @contextlib.contextmanager
  def _saving(self) -> Iterator[None]:
    """Turns a failed save (a full disk, an I/O error; Orbax raises the errors of a save in the
    background at the next call) into a `WriteError` naming the folder and the cause."""
    try:
      yield
    except errors.RunError:
      raise
    except Exception as e:  # pylint: disable=broad-except (Orbax wraps OSErrors variously)
      self._failed = True
      raise errors.WriteError(
          f"cannot save a checkpoint in {self.directory}: {_cause(e)}; the last complete "
          f"checkpoint is kept: {storage.failed_write_hint(self.directory)} and rerun the same "
          "command to resume") from e

  def check(self) -> None:
    """Raises `WriteError` if a save running in the background has failed (call it after
    every step: a failed save stops the run at once, not at its end)."""
    if self._manager is not None:
      with self._saving():
        self._manager.check_for_errors()

  def save(self, step: int, state: Any, pipeline_state: dict[str, Any],
           miou: float | None = None, seconds: float = 0.0,
           config: dict[str, Any] | None = None) -> None:
    """Saves the state after `step` steps (asynchronously), then drops checkpoints not kept.

    `miou` is the evaluation score of this very state, or None when the step was not evaluated;
    `seconds` the training time that led to it; `config` the (JSON) config it was trained with
    (`stored_config`). A step saved already is kept as it is: only a replica that resumed
    behind its own latest checkpoint, to train in step with the others
    (`restore_latest(at_most=...)`), computes a step again.
    Raises WriteError if this or the previous save failed.
    """
    self.check()
    if step in self.steps():
      logging.info("checkpoint %d in %s is already saved; kept", step, self.directory)
      return
    miou = None if miou is None or miou != miou else float(miou)  # NaN: nothing was scored
    record = {"pipeline": pipeline_state, "fingerprint": fingerprint(state), "miou": miou,
              "seconds": float(seconds), "config": config}
    with self._saving():
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), run=ocp.args.JsonSave(record)))
    self._miou[step] = miou
    kept = self._kept(self.steps() + [step])
    for old in self.steps():
      if old not in kept:
        self._manager.delete(old)
        self._miou.pop(old, None)

  def stored_config(self) -> tuple[int, dict[str, Any]] | None:
    """(step, config) of the newest checkpoint whose record holds the config it was trained
    with; None if there is none (no checkpoint, or all saved before configs were recorded)."""
    for step in self.steps()[::-1]:
      try:
        config = self._read_record(step).get("config")
      except Exception:  # pylint: disable=broad-except (an unreadable record: walk back)
        continue
      if config is not None:
        return step, config
    return None

  def _kept(self, steps: list[int]) -> set[int]:
    """The latest `keep` steps and the best-mIoU one."""
    steps = sorted(set(steps))
    return set(steps[-self.keep:]) | set(self._ranked(steps)[-1:])

  def _ranked(self, steps: list[int]) -> list[int]:
    """The evaluated ones of `steps`, best last (of equal scores the earliest counts as best)."""
    return sorted((s for s in steps if self._score(s) is not None),
                  key=lambda s: (self._score(s), -s))

  def _score(self, step: int) -> float | None:
    """The mIoU saved with `step` (read once from its record), None if unscored or unreadable."""
    if step not in self._miou:
      try:
        self._miou[step] = self._read_record(step)["miou"]
      except Exception:  # pylint: disable=broad-except
        self._miou[step] = None  # an unreadable record is never the best
    return self._miou[step]

  def _read_record(self, step: int) -> dict[str, Any]:
    return self._manager.restore(step, args=ocp.args.Composite(run=ocp.args.JsonRestore())).run

  def _restore_step(self, step: int, abstract_state: Any) -> Restored:
    """Restores one step into `abstract_state`; raises _Unreadable with the reason."""
    try:
      with _restore_loops():
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), run=ocp.args.JsonRestore()))
      record = restored.run
      saved = record["fingerprint"]
    except Exception as e:  # any unreadable part makes the whole checkpoint unusable
      raise _Unreadable(_reason(e)) from e
    if fingerprint(restored.state) != saved:
      raise _Unreadable("the restored arrays do not match the fingerprint saved with them "
                        "(a garbled array file)")
    return Restored(restored.state, step, record["pipeline"], record["seconds"])

  def _first_intact(self, candidates: list[int], abstract_state: Any, what: str
                    ) -> tuple[Restored, list[int]]:
    """The first of `candidates` that restores, and those skipped before it."""
    skipped = []
    for step in candidates:
      try:
        restored = self._restore_step(step, abstract_state)
      except _Unreadable as e:
        logging.warning("checkpoint %d in %s is unreadable, skipped: %s", step, self.directory,
                        e)
        skipped.append((step, str(e)))
        continue
      if skipped:
        logging.warning("%s checkpoint: step %d (newer unreadable ones skipped: %s)", what,
                        step, ", ".join(str(s) for s, _ in skipped))
      return restored, [s for s, _ in skipped]
    reasons = "; ".join(f"step {s}: {r}" for s, r in skipped)
    raise errors.WorkdirError(
        f"no readable checkpoint in {self.directory} ({reasons}); move the workdir away to "
        "start afresh, or restore its files from a backup")

  def restore_latest(self, abstract_state: Any, at_most: int | None = None
                     ) -> Restored | None:
    """The newest intact checkpoint (for resuming), or None if there is none.

    `abstract_state` is a pytree of `jax.ShapeDtypeStruct` (with shardings) shaped like the
    state; restoring into it keeps optax NamedTuples and places arrays on the mesh. Unless read
    only, skipped newer checkpoints are moved to the folder of unreadable ones. With
    `at_most`, steps after it are left alone (neither restored nor moved).
    """
    steps = [s for s in self.steps() if at_most is None or s <= at_most]
    if not steps:
      return None
    restored, skipped = self._first_intact(steps[::-1], abstract_state, "resuming from")
    if skipped and not self.read_only:
      self._set_aside(skipped)
    return restored

  def _set_aside(self, steps: list[int]) -> None:
    """Moves the given step folders to the folder of unreadable checkpoints (process 0)."""
    if jax.process_index() == 0:
      target_root = self.unreadable
      storage.makedirs(target_root)
      for step in steps:
        target = storage.join(target_root, str(step))
        suffix = 1
        while storage.exists(target):
          target = storage.join(target_root, f"{step}.{suffix}")
          suffix += 1
        storage.move(storage.join(self.directory, str(step)), target)
        logging.warning("moved unreadable checkpoint %d to %s", step, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("seg_jax: unreadable checkpoints set aside")
    self._manager.reload()
    for step in steps:
      self._miou.pop(step, None)

  def restore_state(self, abstract_state: Any, which: str = "best") -> tuple[Any, int]:
    """(state, step) of the "best" (highest val mIoU) or "latest" intact checkpoint.

    Never creates, moves or deletes anything. Raises WorkdirError if there is none.
    """
    if which not in WHICH:
      raise errors.ConfigError(f"eval.checkpoint must be one of {WHICH}, got {which!r}")
    steps = self._ranked(self.steps()) if which == "best" else self.steps()
    if not steps:
      raise errors.WorkdirError(
          f"no {which!r} checkpoint in {self.directory}: train in this workdir first"
          + (" (no checkpoint has been evaluated yet; eval.checkpoint='latest' takes the "
             "newest)" if which == "best" and self.steps() else ""))
    restored, _ = self._first_intact(steps[::-1], abstract_state, f"{which}")
    return restored.state, restored.step

  def best_step(self) -> int | None:
    """The step with the highest saved mIoU, or None if no checkpoint has been evaluated."""
    ranked = self._ranked(self.steps())
    return ranked[-1] if ranked else None

  def wait(self) -> None:
    """Blocks until the last save is committed (its folder renamed from temporary); raises
    WriteError if it failed."""
    if self._manager is not None:
      with self._saving():
        self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager; raises WriteError if a save failed
    (once: a failure raised already is not raised again)."""
    if self._manager is None:
      return
    manager, self._manager = self._manager, None
    if self._failed:
      with contextlib.suppress(Exception):
        manager.close()
      return
    with self._saving():
      manager.close()
