"""The run folder: every file a run writes into its workdir, and everything read back from it.

`RunDir` is the one owner of a workdir's layout. No other module writes a workdir's file names:

  config.json              the config the run trains with (`save_config`, `load_config`)
  dataset.json             what prediction needs of the training data (`DataInfo`)
  metrics.jsonl            one record per evaluation during training
  events.out.tfevents.*    TensorBoard scalars and images
  predictions/step_<N>.png the prediction grid of the evaluation after step N
  checkpoints/<N>/         Orbax checkpoints (`seg_jax.checkpoint`), unreadable ones moved to
                           checkpoints_unreadable/
  curves.png, confusion_matrix.png, final_metrics.json   the end-of-run outputs; the record
                           that marks the run finished is final_metrics.json
  eval_<name>.json, eval_<name>_table.txt, confusion_matrix_<name>.png   eval-only outputs
  seed<k>/                 replica k's own run folder when replicas train together

A rerun in a workdir continues the run stored there, so its config must be the stored one except
for fields that cannot change what is trained (`RESUMABLE_FIELDS`); anything else is refused
with the list of differing fields, before anything is compiled or written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import ml_collections

from seg_jax import checkpoint as checkpoint_lib
from seg_jax import errors
from seg_jax import writers
from seg_jax.data import palettes

CONFIG_FILE = "config.json"
DATA_INFO_FILE = "dataset.json"
METRICS_FILE = "metrics.jsonl"
FINAL_METRICS = "final_metrics.json"
CURVES = "curves.png"
CONFUSION_MATRIX = "confusion_matrix.png"
PREDICTIONS_DIR = "predictions"
CHECKPOINTS = "checkpoints"
UNREADABLE = "checkpoints_unreadable"
_PREDICTION_GRID = re.compile(r"^step_(\d+)\.png$")

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


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """What prediction needs from a model's training data: classes and colours, mean/std, size."""

  palette: palettes.Palette
  mean: tuple[float, ...]  # per channel, [0, 255] units, as normalised in training
  std: tuple[float, ...]
  image_size: tuple[int, int]  # (H, W) the model was trained on

  @property
  def class_names(self) -> tuple[str, ...]:
    """Class names in class-index order."""
    return self.palette.names

  @classmethod
  def from_dataset(cls, dataset) -> DataInfo:
    """The info of a `seg_jax.data.Dataset`."""
    return cls(palette=dataset.palette, mean=tuple(float(v) for v in dataset.mean),
               std=tuple(float(v) for v in dataset.std),
               image_size=tuple(int(v) for v in dataset.image_size))

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready fields."""
    return {"class_names": list(self.palette.names),
            "colors": [list(c) for c in self.palette.colors],
            "ignore_color": list(self.palette.ignore_color),
            "mean": list(self.mean), "std": list(self.std), "image_size": list(self.image_size)}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> DataInfo:
    """Inverse of `to_dict`."""
    palette = palettes.Palette(names=tuple(d["class_names"]),
                               colors=tuple(tuple(c) for c in d["colors"]),
                               ignore_color=tuple(d["ignore_color"]))
    return cls(palette=palette, mean=tuple(d["mean"]), std=tuple(d["std"]),
               image_size=tuple(d["image_size"]))


def _tuples(value: Any) -> Any:
  """JSON lists back to the tuples configs hold (every sequence in a config is a tuple)."""
  if isinstance(value, Mapping):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


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


def read_json(path: str) -> Any | None:
  """The JSON object in `path`, or None if the file is missing or cut short."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """The records of a JSON-lines file ([] if it does not exist)."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class RunDir:
  """One run folder (a workdir): its files, stored config, data info, records and checkpoints."""

  def __init__(self, path: str):
    self.path = path

  def __repr__(self) -> str:
    return f"RunDir({self.path!r})"

  def file(self, name: str) -> str:
    """The path of file `name` of the run folder."""
    return os.path.join(self.path, name)

  def replica(self, seed: int) -> RunDir:
    """The run folder of seed `seed` among replicas trained together into this one."""
    return RunDir(os.path.join(self.path, f"seed{seed}"))

  def makedirs(self) -> None:
    """Creates the run folder if it does not exist."""
    os.makedirs(self.path, exist_ok=True)

  # The stored config.

  def has_config(self) -> bool:
    """Whether the run folder holds a config.json."""
    return os.path.exists(self.file(CONFIG_FILE))

  def _read_stored(self) -> dict[str, Any]:
    """The parsed config.json; WorkdirError if it is missing or unreadable."""
    path = self.file(CONFIG_FILE)
    if not os.path.exists(path):
      raise errors.WorkdirError(f"{path} does not exist: {self.path} holds no training run")
    try:
      with open(path) as f:
        return json.load(f)
    except (OSError, ValueError) as e:
      raise errors.WorkdirError(f"{path} is unreadable ({e}); restore it from a backup, or "
                                f"move {self.path} away to start afresh") from e

  def load_config(self) -> ml_collections.ConfigDict:
    """The config the run was trained with (tuples restored), locked.

    Raises WorkdirError if the run folder has no readable config.json.
    """
    config = ml_collections.ConfigDict(_tuples(self._read_stored()))
    config.lock()
    return config

  def save_config(self, config: ml_collections.ConfigDict) -> None:
    """Writes config.json (atomically), creating the run folder if needed."""
    self.makedirs()
    writers.write_json(self.file(CONFIG_FILE), config.to_dict())

  def check_config(self, config: ml_collections.ConfigDict) -> bool:
    """Refuses a config that differs from the stored one outside the allowed fields.

    Training reruns may change `RESUMABLE_FIELDS`, eval-only runs `EVAL_FIELDS`.
    Returns:
      Whether the run folder holds a stored config.
    Raises:
      WorkdirError: listing the differing fields, their stored and new values.
    """
    if not self.has_config():
      return False
    allowed = EVAL_FIELDS if config.train.mode == "eval" else RESUMABLE_FIELDS
    diff = differences(self._read_stored(), config, allowed)
    if diff:
      shown = ", ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in diff)
      raise errors.WorkdirError(
          f"{self.path} holds a run with another config ({self.file(CONFIG_FILE)}): {shown}. "
          "Rerun with the stored values or use a new --workdir (a rerun may change only "
          f"{', '.join(allowed)})")
    return True

  # What prediction needs of the training data.

  def save_data_info(self, dataset) -> None:
    """Writes dataset.json, so the run folder predicts without its training data."""
    writers.write_json(self.file(DATA_INFO_FILE), DataInfo.from_dataset(dataset).to_dict())

  def data_info(self) -> DataInfo:
    """The run's dataset.json; WorkdirError naming the file if it is missing or invalid."""
    path = self.file(DATA_INFO_FILE)
    try:
      with open(path) as f:
        return DataInfo.from_dict(json.load(f))
    except FileNotFoundError as e:
      raise errors.WorkdirError(f"{path} does not exist: {self.path} holds no trained run") from e
    except (OSError, KeyError, TypeError, ValueError) as e:
      raise errors.WorkdirError(f"{path}: not a valid dataset info file ({e!r})") from e

  # Records of the training run.

  def metrics(self) -> list[dict[str, Any]]:
    """The evaluation records of metrics.jsonl ([] if it does not exist)."""
    return read_jsonl(self.file(METRICS_FILE))

  def scalars(self, tag: str) -> list[tuple[int, float]]:
    """(step, value) of TensorBoard scalar `tag` over the run's event files, by step."""
    return writers.read_scalars(self.event_files(), tag)

  def event_files(self) -> list[str]:
    """The run's TensorBoard event files (complete ones; `.tmp` rewrites left out)."""
    return sorted(p for p in glob.glob(self.file(writers.EVENT_FILES)) if not p.endswith(".tmp"))

  def metric_writer(self) -> writers.MetricWriter:
    """A writer of this run's TensorBoard events and metrics.jsonl records."""
    return writers.MetricWriter(self.path, self.file(METRICS_FILE))

  def prediction_grid(self, step: int) -> str:
    """Where the prediction grid of the evaluation after `step` goes."""
    return os.path.join(self.path, PREDICTIONS_DIR, f"step_{step}.png")

  def discard_after(self, step: int) -> None:
    """Drops the metrics.jsonl records, TensorBoard events and prediction grids of steps after
    `step`.

    A run killed after its last checkpoint logged steps it will replay when resumed from that
    checkpoint; dropping them first keeps each step logged once. A line or event cut short by
    the kill goes too.
    """
    predictions = os.path.join(self.path, PREDICTIONS_DIR)
    for name in os.listdir(predictions) if os.path.isdir(predictions) else ():
      match = _PREDICTION_GRID.match(name)
      if name.endswith(".tmp") or (match and int(match.group(1)) > step):
        os.remove(os.path.join(predictions, name))
    writers.discard_jsonl_after(self.file(METRICS_FILE), step)
    writers.discard_events_after(glob.glob(self.file(writers.EVENT_FILES)), step)

  def final_record(self, step: int | None = None) -> dict[str, Any] | None:
    """final_metrics.json (None if missing or unreadable, or when `step` is given and the
    record is not of that step)."""
    final = read_json(self.file(FINAL_METRICS))
    if final is None or (step is not None and final.get("step") != step):
      return None
    return final

  def curves(self) -> str:
    """Where curves.png (loss and mIoU against step) goes."""
    return self.file(CURVES)

  def confusion_matrix(self, name: str = "", directory: str = "") -> str:
    """confusion_matrix.png of the run's end, or confusion_matrix_<name>.png of eval-only run
    `name` (in `directory`, default the run folder)."""
    stem, ext = os.path.splitext(CONFUSION_MATRIX)
    return os.path.join(directory or self.path, f"{stem}_{name}{ext}" if name else
                        CONFUSION_MATRIX)

  def eval_file(self, name: str, directory: str = "") -> str:
    """eval_<name>.json of an eval-only run (in `directory`, default the run folder)."""
    return os.path.join(directory or self.path, f"eval_{name}.json")

  def eval_table(self, name: str, directory: str = "") -> str:
    """eval_<name>_table.txt: the per-class table of eval-only run `name`."""
    return os.path.join(directory or self.path, f"eval_{name}_table.txt")

  def eval_record(self, name: str) -> dict[str, Any] | None:
    """eval_<name>.json (e.g. "test"), or None if missing or unreadable."""
    return read_json(self.eval_file(name))

  def write_final(self, record: dict[str, Any]) -> None:
    """final_metrics.json: the record that marks the run finished (written last)."""
    writers.write_json(self.file(FINAL_METRICS), record)

  # Checkpoints.

  def checkpointer(self, keep: int = 2, *, read_only: bool = False
                   ) -> checkpoint_lib.Checkpointer:
    """The run's checkpoints (the caller closes them); read-only: nothing created, moved or
    deleted."""
    return checkpoint_lib.Checkpointer(self.file(CHECKPOINTS), self.file(UNREADABLE), keep,
                                       read_only=read_only)

  @contextlib.contextmanager
  def reading(self) -> Iterator[checkpoint_lib.Checkpointer]:
    """The checkpoints opened read-only, closed after."""
    ckpt = self.checkpointer(read_only=True)
    try:
      yield ckpt
    finally:
      ckpt.close()

  def restore(self, abstract_state: Any, which: str = "best") -> tuple[Any, int]:
    """(state, step) of the "best" (highest val mIoU) or "latest" intact checkpoint, read-only.

    Raises WorkdirError if there is none.
    """
    with self.reading() as ckpt:
      state, step = ckpt.restore_state(abstract_state, which)
    return state, int(step)

  def best_step(self) -> int | None:
    """The best-val checkpoint step (None: none evaluated)."""
    with self.reading() as ckpt:
      return ckpt.best_step()

  def latest_step(self) -> int:
    """The newest checkpoint step, 0 if none."""
    with self.reading() as ckpt:
      steps = ckpt.steps()
    return steps[-1] if steps else 0


def replica_runs(config: ml_collections.ConfigDict, run_dir: RunDir
                 ) -> list[tuple[ml_collections.ConfigDict, RunDir]]:
  """(config, run folder) of every run that `config` trains into `run_dir`.

  One run (`train.num_replicas` = 1): the config itself and `run_dir`. Replica k of several:
  the config with seed `config.seed + k` and `train.num_replicas` = 1, in
  `<run_dir>/seed<seed + k>`, i.e. exactly the config and folder of that seed trained alone.
  """
  if config.train.num_replicas == 1:
    return [(config, run_dir)]
  runs = []
  for k in range(config.train.num_replicas):
    replica = config.copy_and_resolve_references()
    replica.seed = config.seed + k
    replica.train.num_replicas = 1
    replica.lock()
    runs.append((replica, run_dir.replica(replica.seed)))
  return runs
