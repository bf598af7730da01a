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
  eval_<name>.json, eval_<name>_table.txt, confusion_matrix_<name>.png   eval-only outputs,
                           <name> holding every setting that changes the scores (`eval_name`)
  seed<k>/                 replica k's own run folder when replicas train together
  lock.json                who writes the run folder now ({host, pid, since}; `RunDir.lock`)

The workdir may be a local folder or a URL (`gs://bucket/run`): every file goes through
`seg_jax.storage`, so the layout and the rules below are the same in a bucket.

A rerun in a workdir continues the run stored there, so its config must be the stored one except
for fields that cannot change what is trained (`RESUMABLE_FIELDS`); anything else is refused
with the list of differing fields, before anything is compiled or written. The config that pins
a rerun is the one each checkpoint records (config.json is its copy, rewritten from it if
deleted); a run that saved no checkpoint pins nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from absl import logging
import jax
import ml_collections

from seg_jax import checkpoint as checkpoint_lib
from seg_jax import errors
from seg_jax import storage
from seg_jax import writers
from seg_jax.data import palettes
from seg_jax.data import sources

CONFIG_FILE = "config.json"
DATA_INFO_FILE = "dataset.json"
METRICS_FILE = "metrics.jsonl"
FINAL_METRICS = "final_metrics.json"
CURVES = "curves.png"
CONFUSION_MATRIX = "confusion_matrix.png"
PREDICTIONS_DIR = "predictions"
CHECKPOINTS = "checkpoints"
UNREADABLE = "checkpoints_unreadable"
LOCK_FILE = "lock.json"
# A lock whose holder cannot be asked (another host, or a pid the system may have reused) is
# taken over once its file has not been refreshed for this long; its holder refreshes it every
# LOCK_REFRESH_SECONDS while it lives.
LOCK_LEASE_SECONDS = 600
LOCK_REFRESH_SECONDS = 60
_PREDICTION_GRID = re.compile(r"^step_(\d+)\.png$")

# Fields a training rerun may change: logging, evaluation cadence, checkpoint retention, the
# compilation and data caches (also how replicas are computed), and eval-only settings. None of
# them changes what a training step computes, so a resumed run still matches an uninterrupted
# one. train.num_steps extends (or shortens) the run; the schedule keeps the length stored at
# the first launch (optim.schedule_steps, see `RunDir.resolve_schedule`) unless
# optim.schedule_steps is set to another length.
RESUMABLE_FIELDS = (
    "train.mode", "train.num_steps", "train.log_every", "train.eval_every",
    "train.checkpoint_every", "train.keep_checkpoints", "train.compilation_cache_dir",
    "train.xla_cpu_ynnpack", "train.replica_mode", "optim.schedule_steps",
    "eval.global_batch_size", "eval.num_images", "eval.checkpoint", "eval.output_dir",
    "eval.resolution", "eval.predict.mode", "eval.predict.window", "eval.predict.overlap",
    "eval.predict.blend", "eval.predict.tta", "eval.predict.scales", "eval.predict.batch_size",
    "eval.exclude_classes", "data.keep_on_device", "data.cache_dir",
)
# An eval-only run may also score another split, or read the data from where it now lives.
EVAL_FIELDS = RESUMABLE_FIELDS + ("eval.split", "data.root")


_RGB = sources.Bands()


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """What prediction needs from a model's training data: classes and colours, the input bands,
  mean/std, size.

  dataset.json files written before bands were recorded are read with an 8-bit RGB
  photograph's bands (`seg_jax.data.Bands()`), which is what those runs trained on; those written
  before the training scale was recorded with `training_scale` 1 (as stored).
  """

  palette: palettes.Palette
  mean: tuple[float, ...]  # per band, in the units of scaled values, as normalised in training
  std: tuple[float, ...]
  image_size: tuple[int, int]  # (H, W) the model was trained on
  # The files' band numbers the model reads, in input order; the band numbers of red, green and
  # blue (() for none); the factor of stored values (mean and std describe scaled values).
  bands: tuple[int, ...] = _RGB.numbers
  rgb_bands: tuple[int, ...] = _RGB.rgb
  scale: float = _RGB.scale
  # The scale of objects in the training examples relative to the files they were read from
  # (`seg_jax.data.Dataset.training_scale`, e.g. 0.25 for tiles shrunk 4 times per side): the
  # scale at which slide-mode prediction shows a whole file to the model.
  training_scale: float = 1.0

  def __post_init__(self):
    if not len(self.bands) == len(self.mean) == len(self.std):
      raise ValueError(f"bands {self.bands}, mean {self.mean} and std {self.std} must hold one "
                       "value per band")

  @property
  def class_names(self) -> tuple[str, ...]:
    """Class names in class-index order."""
    return self.palette.names

  @classmethod
  def from_dataset(cls, dataset) -> DataInfo:
    """The info of a `seg_jax.data.Dataset`."""
    return cls(palette=dataset.palette, mean=tuple(float(v) for v in dataset.mean),
               std=tuple(float(v) for v in dataset.std),
               image_size=tuple(int(v) for v in dataset.image_size),
               bands=tuple(dataset.bands.numbers), rgb_bands=tuple(dataset.bands.rgb),
               scale=float(dataset.bands.scale),
               training_scale=float(dataset.training_scale))

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready fields."""
    return {"class_names": list(self.palette.names),
            "colors": [list(c) for c in self.palette.colors],
            "ignore_color": list(self.palette.ignore_color),
            "mean": list(self.mean), "std": list(self.std), "image_size": list(self.image_size),
            "bands": list(self.bands), "rgb_bands": list(self.rgb_bands), "scale": self.scale,
            "training_scale": self.training_scale}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> DataInfo:
    """Inverse of `to_dict`."""
    palette = palettes.Palette(names=tuple(d["class_names"]),
                               colors=tuple(tuple(c) for c in d["colors"]),
                               ignore_color=tuple(d["ignore_color"]))
    bands = {}
    if "bands" in d:  # else written before bands were recorded: an RGB photograph
      bands = dict(bands=tuple(int(b) for b in d["bands"]),
                   rgb_bands=tuple(int(b) for b in d["rgb_bands"]), scale=float(d["scale"]))
    # Written before the training scale was recorded: the files' own scale.
    training_scale = float(d.get("training_scale", 1.0))
    return cls(palette=palette, mean=tuple(d["mean"]), std=tuple(d["std"]),
               image_size=tuple(d["image_size"]), training_scale=training_scale, **bands)


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


def _upgrade(stored: dict[str, Any]) -> dict[str, Any]:
  """A config.json written before a field existed, with the value that says what its run did.

  optim.schedule_steps: its schedule lasted its train.num_steps. eval.exclude_classes: every
  class counted. train.xla_cpu_ynnpack: XLA's default, YNNPACK fusions on.
  """
  optim, evaluation = stored.get("optim"), stored.get("eval")
  if isinstance(stored.get("train"), dict) and "xla_cpu_ynnpack" not in stored["train"]:
    stored["train"]["xla_cpu_ynnpack"] = True
  if isinstance(optim, dict) and "schedule_steps" not in optim:
    optim["schedule_steps"] = stored["train"]["num_steps"]
  if isinstance(evaluation, dict) and "exclude_classes" not in evaluation:
    evaluation["exclude_classes"] = []
  return stored


# How each option of full-resolution prediction that differs from its default is named in an
# eval-only output's name (`eval_name`), in this order.
_OPTION_NAMES = (("window", "w"), ("overlap", "o"), ("blend", "blend-"), ("scales", "s"),
                 ("tta", "tta-"))


def _option_text(value: Any, sep: str = "-") -> str:
  """0.5 -> '0.5', (0.25, 0.5) -> '0.25-0.5', 'flips' -> 'flips'; with sep "x",
  (144, 256) -> '144x256'."""
  if isinstance(value, (list, tuple)):
    return sep.join(_option_text(v) for v in value)
  return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def eval_name(split: str, *, checkpoint: str = "best",
              full: Mapping[str, Any] | None = None) -> str:
  """The name of an eval-only output: every setting that changes its scores.

  `<split>` scores the best checkpoint at the training resolution. At full resolution `full`
  holds the prediction `mode` and the options that differ from their defaults: they follow as
  `_full_<mode>`, then `_w<H>x<W>`, `_o<overlap>`, `_blend-<blend>`, `_s<scale>-<scale>...`
  and `_tta-<tta>`, e.g. "val_full_slide_s0.5_tta-flips". The latest checkpoint adds
  `_latest`. Raises ValueError for an option without a name here (it would overwrite).
  """
  parts = [split]
  if full is not None:
    unknown = set(full) - {"mode"} - {key for key, _ in _OPTION_NAMES}
    if unknown:
      raise ValueError(f"no name for the prediction options {sorted(unknown)}")
    parts.append(f"full_{full['mode']}")
    parts += [prefix + _option_text(full[key], "x" if key == "window" else "-")
              for key, prefix in _OPTION_NAMES if key in full]
  if checkpoint != "best":
    parts.append(checkpoint)
  return "_".join(parts)


def read_json(path: str) -> Any | None:
  """The JSON object in `path`, or None if the file is missing or cut short."""
  try:
    return json.loads(storage.read_text(path))
  except (OSError, ValueError):
    return None


def read_jsonl(path: str, key: str | None = None) -> list[dict[str, Any]]:
  """The records of a JSON-lines file ([] if it does not exist); WorkdirError naming the file
  and line of one that is not a JSON object (or, with `key`, that lacks that field)."""
  if not storage.exists(path):
    return []
  records = []
  for number, line in enumerate(storage.read_text(path).splitlines(), 1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except ValueError as e:
      raise errors.WorkdirError(
          f"{path}, line {number}, is not a JSON record ({e}): the file is damaged; rerun "
          "the run's training command, which drops a line cut short, or remove the line")
    if not isinstance(records[-1], dict) or (key is not None and key not in records[-1]):
      raise errors.WorkdirError(f"{path}, line {number}, is not a record"
                                + (f" with a {key!r} field" if key else ""))
  return records


def _alive(pid: int) -> bool:
  """Whether process `pid` exists on this host."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _not_writable(folder: str, e: OSError) -> errors.WorkdirError:
  """The error of run folder `folder`, whose write failed with `e`."""
  fix = ("give the account the run uses (on a VM, its service account) the role "
         "roles/storage.objectUser on the bucket" if storage.is_url(folder)
         else "make it (or the folder it is created in) writable")
  return errors.WorkdirError(
      f"{folder} is not writable ({e.strerror or e}): a run writes its checkpoints and logs "
      f"there; {fix}, or pass another --workdir (eval-only: set --config.eval.output_dir)")


class _Lock:
  """A lock file {host, pid, since}, created exclusively and refreshed (its mtime) by a
  daemon thread while held."""

  def __init__(self, path: str):
    self.path = path
    self._stop = threading.Event()
    self._thread = None

  def acquire(self, folder: str) -> None:
    """Creates the lock file; takes over a stale one (with a warning); WorkdirError if a live
    process holds it or the folder is not writable."""
    body = {"host": socket.gethostname(), "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    for _ in range(2):
      try:
        storage.create(self.path, json.dumps(body).encode())
      except FileExistsError:
        holder = read_json(self.path)
        stale = self._stale(holder)
        holder = holder if isinstance(holder, dict) else {}
        if stale is None:
          raise errors.WorkdirError(
              f"{folder} is in use by process {holder.get('pid')} on host "
              f"{holder.get('host')} since {holder.get('since')} ({self.path}): one process "
              "writes a run folder at a time; wait for it to end or stop it. A lock of a "
              f"process that is gone is taken over (at once on its own host, after "
              f"{LOCK_LEASE_SECONDS} s elsewhere)")
        logging.warning("taking over %s: %s", self.path, stale)
        with contextlib.suppress(FileNotFoundError):
          storage.remove(self.path)
        continue
      except OSError as e:
        raise _not_writable(folder, e) from e
      self._thread = threading.Thread(target=self._refresh, daemon=True)
      self._thread.start()
      return
    raise errors.WorkdirError(f"{folder} is in use: {self.path} was taken meanwhile")

  def _stale(self, holder: Any) -> str | None:
    """Why the lock of `holder` may be taken over, or None if its holder may be alive."""
    try:
      age = time.time() - storage.mtime(self.path)
    except FileNotFoundError:
      return "released meanwhile"
    if not isinstance(holder, dict):
      holder = {}
      if age < 10:  # being written by its holder now
        return None
    if age > LOCK_LEASE_SECONDS:
      return f"not refreshed for {age:.0f} s (lease {LOCK_LEASE_SECONDS} s): {holder}"
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
      if not _alive(holder["pid"]):
        return f"its process {holder['pid']} (since {holder.get('since')}) is gone"
    elif not holder:
      return "an unreadable lock file"
    return None

  def _refresh(self) -> None:
    while not self._stop.wait(LOCK_REFRESH_SECONDS):
      with contextlib.suppress(OSError):
        storage.touch(self.path)

  def release(self) -> None:
    """Stops refreshing and removes the lock file."""
    self._stop.set()
    with contextlib.suppress(OSError):
      storage.remove(self.path)


class RunDir:
  """One run folder (a workdir): its files, stored config, data info, records and checkpoints."""

  def __init__(self, path: str):
    self.path = path

  def __repr__(self) -> str:
    return f"RunDir({self.path!r})"

  def file(self, name: str) -> str:
    """The path of file `name` of the run folder."""
    return storage.join(self.path, name)

  def replica(self, seed: int) -> RunDir:
    """The run folder of seed `seed` among replicas trained together into this one."""
    return RunDir(storage.join(self.path, f"seed{seed}"))

  def makedirs(self) -> None:
    """Creates the run folder if it does not exist."""
    storage.makedirs(self.path)

  # Who writes the run folder.

  @contextlib.contextmanager
  def lock(self, name: str = LOCK_FILE) -> Iterator[None]:
    """Holds the run folder's lock file `name` (one writer per folder) while the block runs.

    Creates the folder; then removes the temporary files of writes that a killed process cut
    short. On several hosts only process 0 holds the lock (the others write nothing here).
    Raises:
      WorkdirError: the path is a file or is not writable (before anything is compiled), or
        another live process holds the lock (named: host, pid and since when).
    """
    if jax.process_index() != 0:
      yield
      return
    self._check_folder()
    held = _Lock(self.file(name))
    held.acquire(self.path)
    try:
      self.remove_temporaries()
      yield
    finally:
      held.release()

  def _check_folder(self) -> None:
    """Creates the run folder; WorkdirError if it is a file or cannot be created, or (in a
    bucket) if the bucket does not exist or refuses a write."""
    if storage.isfile(self.path):
      raise errors.WorkdirError(f"--workdir {self.path} is a file: it must be a folder (a new "
                                "one, or one holding a run)")
    try:
      if storage.is_url(self.path):
        storage.check_writable(self.path)
      storage.makedirs(self.path)
    except PermissionError as e:
      raise _not_writable(self.path, e) from e
    except OSError as e:
      raise errors.WorkdirError(f"cannot create the workdir {self.path}: {e.strerror}; it must "
                                "be a folder under a writable one, in a bucket that exists") from e

  def remove_temporaries(self) -> list[str]:
    """Removes the temporary files (`*.tmp`) of writes cut short, in the run folder, its
    predictions/ and its replicas' folders; returns their paths."""
    found = []
    for folder in ("", PREDICTIONS_DIR, "seed*", f"seed*/{PREDICTIONS_DIR}"):
      found += [p for p in storage.glob(f"{folder}/*.tmp".lstrip("/"), self.path)
                if storage.isfile(p)]
    for path in found:
      storage.remove(path)
    if found:
      logging.info("removed %d temporary files of writes cut short: %s", len(found),
                   ", ".join(found))
    return found

  # The stored config.

  def has_config(self) -> bool:
    """Whether the run folder holds a config.json, or a checkpoint that recorded its config."""
    return storage.exists(self.file(CONFIG_FILE)) or self._checkpoint_config() is not None

  def _checkpoint_config(self) -> tuple[int, dict[str, Any]] | None:
    """(step, config) recorded with the newest checkpoint that holds one, or None."""
    if not storage.isdir(self.file(CHECKPOINTS)):
      return None
    with self.reading() as ckpt:
      return ckpt.stored_config()

  def _read_stored(self) -> dict[str, Any]:
    """The parsed config.json (the newest checkpoint's config if it was deleted); WorkdirError
    if there is neither or it is unreadable."""
    path = self.file(CONFIG_FILE)
    if not storage.exists(path):
      recorded = self._checkpoint_config()
      if recorded is None:
        raise errors.WorkdirError(f"{path} does not exist: {self.path} holds no training run")
      return _upgrade(recorded[1])
    try:
      return _upgrade(json.loads(storage.read_text(path)))
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise errors.WorkdirError(f"{path} is unreadable ({e!r}); restore it from a backup, or "
                                f"move {self.path} away to start afresh") from e

  def pinned_config(self) -> tuple[str, dict[str, Any]] | None:
    """(where it is stored, config) that a rerun must match: the config recorded with the
    newest checkpoint, else config.json; None when there is neither (training writes
    config.json with its first checkpoint, so a run that stopped before pins nothing)."""
    recorded = self._checkpoint_config()
    if recorded is not None:
      step, config = recorded
      return f"checkpoint {step} in {self.file(CHECKPOINTS)}", _upgrade(config)
    if storage.exists(self.file(CONFIG_FILE)):
      return self.file(CONFIG_FILE), self._read_stored()
    return None

  def load_config(self) -> ml_collections.ConfigDict:
    """The config the run was trained with (tuples restored), locked.

    Raises WorkdirError if the run folder has no readable config.json (nor a checkpoint that
    recorded its config).
    """
    config = ml_collections.ConfigDict(_tuples(self._read_stored()))
    config.lock()
    return config

  def resolve_schedule(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with `optim.schedule_steps` = 0 resolved, locked: the stored run's own length
    (an extension keeps its schedule), or `train.num_steps` for a run not started yet."""
    if config.optim.schedule_steps:
      return config
    pinned = self.pinned_config()
    config = config.copy_and_resolve_references()
    config.optim.schedule_steps = (pinned[1]["optim"]["schedule_steps"] if pinned
                                   else config.train.num_steps)
    config.lock()
    return config

  def save_config(self, config: ml_collections.ConfigDict) -> None:
    """Writes config.json (atomically), creating the run folder if needed."""
    self.makedirs()
    writers.write_json(self.file(CONFIG_FILE), config.to_dict())

  def check_config(self, config: ml_collections.ConfigDict) -> bool:
    """Refuses a config that differs from the one the run's checkpoints were trained with
    (`pinned_config`) outside the allowed fields.

    Training reruns may change `RESUMABLE_FIELDS`, eval-only runs `EVAL_FIELDS`.
    Returns:
      Whether the run folder holds a stored config (that was compared).
    Raises:
      WorkdirError: listing the differing fields, their stored and new values.
    """
    pinned = self.pinned_config()
    return pinned is not None and self._check_against(*pinned, config)

  def _check_against(self, where: str, stored: dict[str, Any],
                     config: ml_collections.ConfigDict) -> bool:
    allowed = EVAL_FIELDS if config.train.mode == "eval" else RESUMABLE_FIELDS
    diff = differences(stored, config, allowed)
    if diff:
      shown = ", ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in diff)
      raise errors.WorkdirError(
          f"{self.path} holds a run with another config ({where}): {shown}. "
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
      return DataInfo.from_dict(json.loads(storage.read_text(path)))
    except FileNotFoundError as e:
      raise errors.WorkdirError(f"{path} does not exist: {self.path} holds no trained run") from e
    except (OSError, KeyError, TypeError, ValueError) as e:
      raise errors.WorkdirError(f"{path}: not a valid dataset info file ({e!r})") from e

  # Records of the training run.

  def metrics(self) -> list[dict[str, Any]]:
    """The evaluation records of metrics.jsonl ([] if it does not exist)."""
    return read_jsonl(self.file(METRICS_FILE), key="step")

  def scalars(self, tag: str) -> list[tuple[int, float]]:
    """(step, value) of TensorBoard scalar `tag` over the run's event files, by step."""
    return writers.read_scalars(self.event_files(), tag)

  def event_files(self) -> list[str]:
    """The run's TensorBoard event files (complete ones; `.tmp` rewrites left out)."""
    return [p for p in storage.glob(writers.EVENT_FILES, self.path) if not p.endswith(".tmp")]

  def metric_writer(self) -> writers.MetricWriter:
    """A writer of this run's TensorBoard events and metrics.jsonl records."""
    return writers.MetricWriter(self.path, self.file(METRICS_FILE))

  def prediction_grid(self, step: int) -> str:
    """Where the prediction grid of the evaluation after `step` goes."""
    return storage.join(self.path, PREDICTIONS_DIR, f"step_{step}.png")

  def discard_after(self, step: int) -> None:
    """Drops the metrics.jsonl records, TensorBoard events and prediction grids of steps after
    `step`.

    A run killed after its last checkpoint logged steps it will replay when resumed from that
    checkpoint; dropping them first keeps each step logged once. A line or event cut short by
    the kill goes too.
    """
    predictions = self.file(PREDICTIONS_DIR)
    for name in storage.listdir(predictions) if storage.isdir(predictions) else ():
      match = _PREDICTION_GRID.match(name)
      if name.endswith(".tmp") or (match and int(match.group(1)) > step):
        storage.remove(storage.join(predictions, name))
    writers.discard_jsonl_after(self.file(METRICS_FILE), step)
    writers.discard_events_after(storage.glob(writers.EVENT_FILES, self.path), step)

  def lost_evaluations(self, step: int, split: str) -> list[int]:
    """Steps up to `step` whose evaluation the TensorBoard events hold (`<split>/miou`) but
    metrics.jsonl lacks: records lost with a line cut short or a damaged file."""
    logged = {r["step"] for r in self.metrics()}
    return sorted(s for s, _ in self.scalars(f"{split}/miou") if s <= step and s not in logged)

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
    return storage.join(directory or self.path, f"{stem}_{name}{ext}" if name else
                        CONFUSION_MATRIX)

  def eval_file(self, name: str, directory: str = "") -> str:
    """eval_<name>.json of an eval-only run (in `directory`, default the run folder)."""
    return storage.join(directory or self.path, f"eval_{name}.json")

  def eval_table(self, name: str, directory: str = "") -> str:
    """eval_<name>_table.txt: the per-class table of eval-only run `name`."""
    return storage.join(directory or self.path, f"eval_{name}_table.txt")

  def eval_record(self, name: str) -> dict[str, Any] | None:
    """eval_<name>.json (e.g. "test"), or None if missing or unreadable."""
    return read_json(self.eval_file(name))

  def write_final(self, record: dict[str, Any]) -> None:
    """final_metrics.json: the record that marks the run finished (written last)."""
    writers.write_json(self.file(FINAL_METRICS), record)

  def listing(self) -> str:
    """What the run folder holds, one line per output that exists: its path and what it is."""
    what = ((CONFIG_FILE, "the config the run trains with"),
            (DATA_INFO_FILE, "classes, colours, mean/std and image size, for prediction"),
            (METRICS_FILE, "one record per evaluation"),
            (writers.EVENT_FILES, "TensorBoard scalars and images (tensorboard --logdir)"),
            (PREDICTIONS_DIR, "prediction grids of the evaluations"),
            (CHECKPOINTS, "checkpoints"), (CURVES, "loss and mIoU against step"),
            (CONFUSION_MATRIX, "confusion matrix of the last evaluation"),
            (FINAL_METRICS, "the scores of the last step (the run is finished)"))
    lines = [f"{self.path} holds:"]
    for name, description in what:
      found = [p for p in storage.glob(name, self.path) if not p.endswith(".tmp")]
      shown = name if len(found) == 1 else f"{name} ({len(found)} files)"
      if len(found) == 1 and storage.isdir(found[0]):
        shown, description = name + "/", f"{description} ({len(storage.listdir(found[0]))})"
      if found:
        lines.append(f"  {shown:<24} {description}")
    return "\n".join(lines)

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
