"""The run folder's config: stored as config.json, loaded back, and checked against a rerun.

A rerun in a workdir continues the run stored there, so its config must be the stored one except
for fields that cannot change what is trained (`RESUMABLE_FIELDS`); anything else is refused
with the list of differing fields, before anything is compiled or written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from seg_jax import errors
from seg_jax import writers

CONFIG_FILE = "config.json"

# Fields a training rerun may change: logging, evaluation cadence, checkpoint retention, the
# compilation and data caches (also how replicas are computed), and eval-only settings. None of
# them changes what a training step computes, so a resumed run still matches an uninterrupted
# one. train.num_steps extends (or shortens) the schedule.
RESUMABLE_FIELDS = (
    "train.mode", "train.num_steps", "train.log_every", "train.eval_every",
    "train.checkpoint_every", "train.keep_checkpoints", "train.compilation_cache_dir",
    "train.replica_mode",
    "eval.global_batch_size", "eval.num_images", "eval.checkpoint", "eval.output_dir",
    "eval.resolution", "eval.predict.mode", "eval.predict.window", "eval.predict.overlap",
    "eval.predict.blend", "eval.predict.tta", "eval.predict.scales", "eval.predict.batch_size",
    "data.keep_on_device", "data.cache_dir",
)
# An eval-only run may also score another split, or read the data from where it now lives.
EVAL_FIELDS = RESUMABLE_FIELDS + ("eval.split", "data.root")


def config_path(workdir: str) -> str:
  """Where a workdir keeps its config."""
  return os.path.join(workdir, CONFIG_FILE)


def _tuples(value: Any) -> Any:
  """JSON lists back to the tuples configs hold (every sequence in a config is a tuple)."""
  if isinstance(value, Mapping):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def _read_stored(workdir: str) -> dict[str, Any]:
  """The parsed config.json of a workdir; WorkdirError if it is missing or unreadable."""
  path = config_path(workdir)
  if not os.path.exists(path):
    raise errors.WorkdirError(f"{path} does not exist: {workdir} holds no training run")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise errors.WorkdirError(f"{path} is unreadable ({e}); restore it from a backup, or move "
                              f"{workdir} away to start afresh") from e


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir's run was trained with (tuples restored), locked.

  Raises WorkdirError if the workdir has no readable config.json.
  """
  config = ml_collections.ConfigDict(_tuples(_read_stored(workdir)))
  config.lock()
  return config


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes config.json (atomically), creating the workdir if needed."""
  os.makedirs(workdir, exist_ok=True)
  writers.write_json(config_path(workdir), config.to_dict())


def replica_workdir(workdir: str, seed: int) -> str:
  """The run folder of seed `seed` among replicas trained together into `workdir`."""
  return os.path.join(workdir, f"seed{seed}")


def replica_runs(config: ml_collections.ConfigDict, workdir: str
                 ) -> list[tuple[ml_collections.ConfigDict, str]]:
  """(config, run folder) of every run that `config` trains into `workdir`.

  One run (`train.num_replicas` = 1): the config itself and `workdir`. Replica k of several:
  the config with seed `config.seed + k` and `train.num_replicas` = 1, in
  `<workdir>/seed<seed + k>`, i.e. exactly the config and folder of that seed trained alone.
  """
  if config.train.num_replicas == 1:
    return [(config, workdir)]
  runs = []
  for k in range(config.train.num_replicas):
    replica = config.copy_and_resolve_references()
    replica.seed = config.seed + k
    replica.train.num_replicas = 1
    replica.lock()
    runs.append((replica, replica_workdir(workdir, replica.seed)))
  return runs


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def differences(stored: Mapping[str, Any], config: ml_collections.ConfigDict,
                allowed: Sequence[str] = ()) -> list[tuple[str, Any, Any]]:
  """(field, stored value, new value) of every field that differs, allowed ones left out.

  Values are compared as JSON (tuples as lists); a field missing on one side is `<absent>`.
  """
  old = _flatten(stored)
  new = _flatten(writers.to_jsonable(config.to_dict()))
  absent = "<absent>"
  return [(key, old.get(key, absent), new.get(key, absent))
          for key in sorted(set(old) | set(new))
          if key not in allowed and old.get(key, absent) != new.get(key, absent)]


def check_config(config: ml_collections.ConfigDict, workdir: str) -> bool:
  """Refuses a config that differs from the workdir's stored one outside the allowed fields.

  Training reruns may change `RESUMABLE_FIELDS`, eval-only runs `EVAL_FIELDS`.
  Returns:
    Whether the workdir holds a stored config.
  Raises:
    WorkdirError: listing the differing fields, their stored and new values.
  """
  path = config_path(workdir)
  if not os.path.exists(path):
    return False
  stored = _read_stored(workdir)
  allowed = EVAL_FIELDS if config.train.mode == "eval" else RESUMABLE_FIELDS
  diff = differences(stored, config, allowed)
  if diff:
    shown = ", ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in diff)
    raise errors.WorkdirError(
        f"{workdir} holds a run with another config ({path}): {shown}. Rerun with the "
        "stored values or use a new --workdir (a rerun may change only "
        f"{', '.join(allowed)})")
  return True
