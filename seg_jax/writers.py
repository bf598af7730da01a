"""Run outputs: TensorBoard events (tensorboardX, no TensorFlow), metrics.jsonl and JSON files."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np


def to_jsonable(value: Any) -> Any:
  """Converts NumPy/JAX scalars and arrays to JSON types; NaN and Inf become None."""
  if isinstance(value, Mapping):
    return {str(k): to_jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_jsonable(v) for v in value]
  if isinstance(value, (np.ndarray, jax.Array)):
    return to_jsonable(np.asarray(value).tolist())
  if isinstance(value, (np.floating, float)):
    value = float(value)
    return value if math.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  if isinstance(value, np.bool_):
    return bool(value)
  return value


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` (converted by `to_jsonable`) as indented JSON, atomically."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(to_jsonable(obj), f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


class MetricWriter:
  """Writes scalars and images to TensorBoard and evaluation records to metrics.jsonl.

  Only process 0 writes, so a multi-host run leaves one set of files.
  """

  def __init__(self, workdir: str):
    """Opens the event file and metrics.jsonl (appending, so a resumed run continues them)."""
    self.workdir = workdir
    self.enabled = jax.process_index() == 0
    self._tb = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      os.makedirs(workdir, exist_ok=True)
      self._tb = SummaryWriter(logdir=workdir, flush_secs=30)

  def scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """One TensorBoard scalar per entry (non-finite values are skipped)."""
    if not self.enabled:
      return
    for name, value in scalars.items():
      value = float(value)
      if math.isfinite(value):
        self._tb.add_scalar(name, value, step)

  def images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """One TensorBoard image per entry, each uint8 (H, W, 3)."""
    if not self.enabled:
      return
    for name, image in images.items():
      self._tb.add_image(name, np.asarray(image), step, dataformats="HWC")

  def jsonl(self, record: Mapping[str, Any]) -> None:
    """Appends one JSON object (one line) to metrics.jsonl in the workdir."""
    if not self.enabled:
      return
    with open(os.path.join(self.workdir, "metrics.jsonl"), "a") as f:
      f.write(json.dumps(to_jsonable(record), sort_keys=True) + "\n")

  def flush(self) -> None:
    """Flushes pending TensorBoard events."""
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    """Flushes and closes the event file."""
    if self._tb is not None:
      self._tb.close()
      self._tb = None


class _LibraryInfoFilter:
  """Drops INFO-and-below records logged from inside the named libraries' source trees."""

  def __init__(self, libraries: tuple[str, ...]):
    self._parts = tuple(f"{os.sep}{lib}{os.sep}" for lib in libraries)

  def filter(self, record) -> bool:
    return record.levelno > 20 or not any(p in record.pathname for p in self._parts)


def quiet_library_logs(libraries: tuple[str, ...] = ("orbax", "jax", "grain")) -> None:
  """Keeps the console readable: only warnings and errors from these libraries pass."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.get_absl_handler().addFilter(_LibraryInfoFilter(libraries))
