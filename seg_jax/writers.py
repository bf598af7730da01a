"""File formats of run outputs: TensorBoard events (tensorboardX, no TensorFlow), JSON lines,
JSON, PNGs, written atomically through `seg_jax.storage` (local or in a bucket); where they go in
a run folder is `seg_jax.workdir`'s to say."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO

import jax
import numpy as np
from PIL import Image
from tensorboardX import summary as tb_summary
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from seg_jax import errors
from seg_jax import storage

# TensorBoard's own file naming: events.out.tfevents.<time>.<host>.<pid>.
EVENT_FILES = "events.out.tfevents.*"


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


@contextlib.contextmanager
def writing(path: str, tmp: str | None = None) -> Iterator[None]:
  """Turns an OSError while writing `path` (a full disk, an I/O error) into a `WriteError`
  naming the path and its cause; the temporary file `tmp` of the write is removed."""
  try:
    yield
  except OSError as e:
    if isinstance(e, errors.RunError):
      raise
    if tmp is not None and not storage.is_url(path):
      with contextlib.suppress(OSError):
        os.remove(tmp)
    raise errors.WriteError(
        f"cannot write {path}: {e.strerror or e}; the last complete checkpoint is kept: "
        f"{storage.failed_write_hint(path)} and rerun the same command to resume") from e



def makedirs_for(path: str) -> None:
  """Creates the folder that `path` goes into, if it does not exist."""
  storage.makedirs(storage.dirname(path) or ".")


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` atomically (also when several processes write the same file)."""
  tmp = f"{path}.{os.getpid()}.tmp"
  with writing(path, tmp):
    storage.write_bytes(path, text.encode(), tmp)


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` (converted by `to_jsonable`) as indented JSON, atomically."""
  write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n")


def write_atomic(path: str, write: Callable[[BinaryIO], Any]) -> None:
  """Calls `write(file)` on a temporary binary file, then renames it to `path`.

  A process killed meanwhile leaves the previous `path` (or none), never a file cut short.
  """
  buffer = io.BytesIO()
  write(buffer)
  with writing(path, path + ".tmp"):
    storage.write_bytes(path, buffer.getvalue())


def write_png(path: str, picture: np.ndarray) -> None:
  """Writes a uint8 (H, W, 3) picture as a PNG, atomically."""
  write_atomic(path, lambda f: Image.fromarray(picture).save(f, format="PNG"))


def read_scalars(event_files: list[str], tag: str) -> list[tuple[int, float]]:
  """(step, value) of TensorBoard scalar `tag` over the given event files, by step."""
  values = {}
  for path in event_files:
    for event in read_events(path):
      for value in event.summary.value:
        if value.tag == tag:
          values[event.step] = value.simple_value
  return sorted(values.items())


class MetricWriter:
  """Writes scalars and images to a TensorBoard event file and evaluation records to a JSON-lines
  file.

  Events are written by this process (no background queue), so after `flush()` everything
  logged so far is in the files: a checkpoint saved after a flush never runs ahead of the logs.
  Only process 0 writes, so a multi-host run leaves one set of files.
  """

  def __init__(self, events_dir: str, jsonl_path: str):
    """Opens a new event file (one per process start) in `events_dir`."""
    self.jsonl_path = jsonl_path
    self.enabled = jax.process_index() == 0
    self._events = None
    if self.enabled:
      storage.makedirs(events_dir)
      name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
      self.events_path = storage.join(events_dir, name)
      with writing(self.events_path):
        self._events = storage.Appender(self.events_path)
      self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def _write(self, event: event_pb2.Event) -> None:
    with writing(self.events_path):
      self._events.write(_record_bytes(event.SerializeToString()))

  def _summary(self, step: int, summary) -> None:
    self._write(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

  def scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """One TensorBoard scalar per entry (non-finite values are skipped)."""
    if not self.enabled:
      return
    for name, value in scalars.items():
      value = float(value)
      if math.isfinite(value):
        self._summary(step, tb_summary.scalar(name, value))

  def images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """One TensorBoard image per entry, each uint8 (H, W, 3)."""
    if not self.enabled:
      return
    for name, image in images.items():
      self._summary(step, tb_summary.image(name, np.asarray(image), dataformats="HWC"))

  def jsonl(self, record: Mapping[str, Any]) -> None:
    """Appends one JSON object (one line) to the JSON-lines file."""
    if not self.enabled:
      return
    with writing(self.jsonl_path):
      storage.append(self.jsonl_path,
                     (json.dumps(to_jsonable(record), sort_keys=True) + "\n").encode())

  def flush(self) -> None:
    """Hands every event written so far to the storage (the operating system, or the bucket)."""
    if self._events is not None:
      with writing(self.events_path):
        self._events.flush()

  def close(self) -> None:
    """Flushes and closes the event file (a write that fails as it closes is dropped: the
    error that stopped the run has been raised already, or the next flush raises it)."""
    if self._events is not None:
      events, self._events = self._events, None
      with contextlib.suppress(OSError):
        events.close()


def read_events(path: str) -> list[event_pb2.Event]:
  """The events of a TensorBoard event file, up to a record cut short (a killed writer)."""
  data = storage.read_bytes(path)
  events, i = [], 0
  while i + 12 <= len(data):  # TFRecord: length, its crc, payload, payload crc
    n = struct.unpack("<Q", data[i:i + 8])[0]
    if i + 12 + n + 4 > len(data):
      break
    events.append(event_pb2.Event.FromString(data[i + 12:i + 12 + n]))
    i += 12 + n + 4
  return events


def _record_bytes(payload: bytes) -> bytes:
  """One TFRecord: length, masked CRC of the length, payload, masked CRC of the payload."""
  header = struct.pack("<Q", len(payload))
  return (header + struct.pack("<I", masked_crc32c(header)) + payload +
          struct.pack("<I", masked_crc32c(payload)))


def _write_events(path: str, events: list[event_pb2.Event]) -> None:
  """Writes `events` as a TensorBoard event file, atomically."""
  tmp = path + ".tmp"
  with writing(path, tmp):
    storage.write_bytes(path, b"".join(_record_bytes(e.SerializeToString()) for e in events))


def discard_jsonl_after(path: str, step: int) -> None:
  """Drops the records of a JSON-lines log whose "step" is after `step`, and lines cut short."""
  if not storage.exists(path):
    return
  lines = storage.read_text(path).splitlines()
  kept = []
  for line in lines:
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if record["step"] <= step:
      kept.append(line)
  if kept != lines:
    write_text(path, "".join(line + "\n" for line in kept))


def discard_events_after(event_files: list[str], step: int) -> None:
  """Drops the events of steps after `step` from TensorBoard event files, and events cut short.

  A `.tmp` file is a rewrite cut short by a kill (the original is intact): it is removed.
  """
  for path in event_files:
    if path.endswith(".tmp"):
      storage.remove(path)
      continue
    events = read_events(path)
    kept = [e for e in events if e.step <= step]
    if len(kept) != len(events) or storage.size(path) != sum(
        16 + e.ByteSize() for e in events):
      _write_events(path, kept)


def section_markers(name: str = "") -> tuple[str, str]:
  """The HTML comments that open and close generated Markdown section `name`."""
  tag = f"generated:{name}:" if name else "generated:"
  return f"<!-- {tag}begin -->", f"<!-- {tag}end -->"


def write_section(path: str, text: str, name: str = "") -> None:
  """Replaces the generated section `name` of the Markdown file `path` with `text`.

  The section lies between the `section_markers(name)` comments; a file without them gets the
  section appended (a missing file is created), so a run into a fresh folder still leaves its
  tables next to its figures. Everything outside the markers is kept as it is.
  """
  begin, end = section_markers(name)
  block = f"{begin}\n{text.strip()}\n{end}"
  old = ""
  if os.path.exists(path):
    with open(path) as f:
      old = f.read()
  head, found, rest = old.partition(begin)
  if found and end in rest:
    new = head + block + rest.split(end, 1)[1]
  elif found or end in old:
    raise ValueError(f"{path} lacks {end} after {begin}, or {begin} before {end}")
  else:
    new = old + ("\n" if old and not old.endswith("\n") else "") + block + "\n"
  with open(path, "w") as f:
    f.write(new)


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
  """A Markdown table; cells are written with `str`, their `|` escaped."""
  def line(cells):
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
  return "\n".join([line(header), "|" + "---|" * len(header)] + [line(r) for r in rows])


# Warnings libraries log that a seg_jax user cannot act on: (library, start of the message as
# logged, before its arguments). Orbax warns on every read-only restore (eval-only runs,
# prediction, weight import); jax names each backend it could not start (a TPU on a machine
# without one).
LIBRARY_CHATTER = (
    ("orbax", "CheckpointManagerOptions.read_only=True, setting"),
    ("orbax", "Given directory is read only"),
    ("jax", "Unable to initialize backend"),
)


class _LibraryInfoFilter:
  """Drops INFO-and-below records logged from inside the named libraries' source trees, and
  their `LIBRARY_CHATTER`, unless the verbosity asks for debug output (--verbosity=1)."""

  def __init__(self, libraries: tuple[str, ...]):
    self._parts = {lib: f"{os.sep}{lib}{os.sep}" for lib in libraries}

  def filter(self, record) -> bool:
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    if absl_logging.get_verbosity() >= 1:
      return True
    library = next((lib for lib, part in self._parts.items() if part in record.pathname), None)
    if library is None:
      return True
    if record.levelno <= 20:
      return False
    message = str(record.msg)
    return not any(library == lib and message.startswith(start)
                   for lib, start in LIBRARY_CHATTER)


def quiet_library_logs(libraries: tuple[str, ...] = ("orbax", "jax", "grain")) -> None:
  """Keeps the console readable: from these libraries, only warnings and errors that say
  something (not `LIBRARY_CHATTER`) pass; with --verbosity=1 everything does."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.get_absl_handler().addFilter(_LibraryInfoFilter(libraries))
