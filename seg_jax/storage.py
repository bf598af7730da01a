"""Files and folders on the local disk or in cloud storage, named by one kind of path.

Every path seg_jax reads or writes (workdirs, checkpoints, data roots, prediction inputs and
outputs, sweep folders, export outputs) is a string: a local path, or a URL that fsspec resolves
(`gs://bucket/key`, also `s3://`, `az://`, ...; Orbax reaches the same URLs through etils.epath
and TensorStore). The functions here take either and behave alike:

- Local files are written to a temporary file and renamed; an object in a bucket is created by
  one upload, which the store makes visible whole or not at all. A kill never leaves half a file.
- A bucket has no folders: `makedirs` of a URL creates nothing, a "folder" exists while an object
  lies under it, and `move` of a folder copies its objects, then deletes them.
- A file that grows (TensorBoard events, metrics.jsonl) is rewritten whole into a bucket, since
  objects cannot be appended to (`Appender`).

`use_emulator` points every client at a Cloud Storage emulator named by STORAGE_EMULATOR_HOST.
"""

from __future__ import annotations

import errno
import glob as glob_lib
import io
import os
import posixpath
import shutil
import tempfile
from typing import IO, Any

EMULATOR_VARIABLE = "STORAGE_EMULATOR_HOST"
# TensorStore (Orbax's array storage) reads its Cloud Storage endpoint from this variable.
_TENSORSTORE_ENDPOINT = "TENSORSTORE_GCS_HTTP_URL"


def is_url(path: str) -> bool:
  """Whether `path` names cloud storage (`scheme://...`) rather than a local file."""
  return "://" in path and not path.startswith("file://")


def _fs(path: str):
  """(fsspec filesystem, path inside it) of a URL."""
  import fsspec  # pylint: disable=g-import-not-at-top (only URLs need it)
  return fsspec.core.url_to_fs(path)


def _url(path: str, inner: str) -> str:
  """The URL of `inner`, a path returned by the filesystem of URL `path` (without its scheme)."""
  return path.split("://", 1)[0] + "://" + inner.rstrip("/")


def absolute(path: str) -> str:
  """A local path made absolute (`~` expanded); a URL as it is."""
  return path if is_url(path) else os.path.abspath(os.path.expanduser(path))


def join(path: str, *names: str) -> str:
  """`path`/`names`..., with `/` in a URL."""
  return posixpath.join(path, *names) if is_url(path) else os.path.join(path, *names)


def dirname(path: str) -> str:
  """The folder `path` lies in."""
  return posixpath.dirname(path.rstrip("/")) if is_url(path) else os.path.dirname(path)


def exists(path: str) -> bool:
  """Whether a file or (non-empty, in a bucket) folder is at `path`."""
  if not is_url(path):
    return os.path.exists(path)
  fs, inner = _fs(path)
  return fs.exists(inner)


def isdir(path: str) -> bool:
  """Whether `path` is a folder (in a bucket: a bucket, or a prefix with objects under it)."""
  if not is_url(path):
    return os.path.isdir(path)
  fs, inner = _fs(path)
  return fs.isdir(inner)


def isfile(path: str) -> bool:
  """Whether `path` is a file (an object)."""
  if not is_url(path):
    return os.path.isfile(path)
  fs, inner = _fs(path)
  return fs.isfile(inner)


def listdir(path: str) -> list[str]:
  """The names in folder `path`, sorted; FileNotFoundError if there is no such folder."""
  if not is_url(path):
    return sorted(os.listdir(path))
  fs, inner = _fs(path)
  if not fs.isdir(inner):
    raise FileNotFoundError(f"no folder {path}")
  return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(inner, detail=False)
                if p.rstrip("/") != inner.rstrip("/"))


def has_magic(path: str) -> bool:
  """Whether `path` holds a glob pattern (`*`, `?` or `[`)."""
  return glob_lib.has_magic(path)


def glob(pattern: str, folder: str | None = None) -> list[str]:
  """The paths that match `pattern` (relative to `folder`, taken literally, if given), sorted."""
  if not is_url(folder or pattern):
    if folder is not None:
      pattern = os.path.join(glob_lib.escape(folder), pattern)
    return sorted(glob_lib.glob(pattern))
  if folder is not None:
    pattern = posixpath.join(folder, pattern)
  fs, inner = _fs(pattern)
  return sorted(_url(pattern, p) for p in fs.glob(inner))


def makedirs(path: str) -> None:
  """Creates folder `path` and its parents if missing (nothing to create in a bucket)."""
  if not is_url(path):
    os.makedirs(path, exist_ok=True)


def remove(path: str) -> None:
  """Deletes file `path`; FileNotFoundError if there is none."""
  if not is_url(path):
    os.remove(path)
    return
  fs, inner = _fs(path)
  if not fs.isfile(inner):
    raise FileNotFoundError(f"no file {path}")
  fs.rm_file(inner)


def move(source: str, target: str) -> None:
  """Moves file or folder `source` to `target` (same storage)."""
  if not is_url(source):
    shutil.move(source, target)
    return
  fs, inner = _fs(source)
  # Copied, then deleted: fsspec's mv tries a server-side move first, which not every server has.
  fs.copy(inner, _fs(target)[1], recursive=True)
  fs.rm(inner, recursive=True)


def put(local: str, path: str) -> None:
  """Moves local file `local` to `path`: renamed over it on the local disk, uploaded whole into a
  bucket (then deleted here)."""
  if not is_url(path):
    os.replace(local, path)
    return
  fs, inner = _fs(path)
  fs.put_file(local, inner)
  os.remove(local)


def mtime(path: str) -> float:
  """When file `path` was last written (seconds since the epoch); FileNotFoundError if none."""
  if not is_url(path):
    return os.path.getmtime(path)
  fs, inner = _fs(path)
  return fs.modified(inner).timestamp()


def size(path: str) -> int:
  """The size of file `path` in bytes."""
  if not is_url(path):
    return os.path.getsize(path)
  fs, inner = _fs(path)
  return int(fs.size(inner))


def open_file(path: str, mode: str = "r") -> IO[Any]:
  """Opens file `path` for reading (`r`, `rb`) or writing whole (`w`, `wb`; not atomic)."""
  if not is_url(path):
    return open(path, mode)  # pylint: disable=unspecified-encoding
  fs, inner = _fs(path)
  return fs.open(inner, mode)


def read_bytes(path: str) -> bytes:
  """The content of file `path`; FileNotFoundError if there is none."""
  with open_file(path, "rb") as f:
    return f.read()


def read_text(path: str) -> str:
  """The text of file `path`; FileNotFoundError if there is none."""
  return read_bytes(path).decode()


def write_bytes(path: str, data: bytes, tmp: str | None = None) -> None:
  """Writes `data` to `path` atomically: locally through the temporary file `tmp` (default
  `<path>.tmp`) renamed over `path`, in a bucket as one upload."""
  if not is_url(path):
    tmp = tmp or path + ".tmp"
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
    return
  fs, inner = _fs(path)
  fs.pipe_file(inner, data)


def create(path: str, data: bytes) -> None:
  """Creates file `path` holding `data`; FileExistsError if it exists (exclusive on every
  storage: a bucket is asked to create the object only if it has none)."""
  if not is_url(path):
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    return
  fs, inner = _fs(path)
  fs.pipe_file(inner, data, mode="create")  # gcsfs: FileExistsError when the object exists


def touch(path: str) -> None:
  """Marks file `path` as written now (its content unchanged)."""
  if not is_url(path):
    os.utime(path)
    return
  write_bytes(path, read_bytes(path))


class Appender:
  """A file that grows by `write` and is complete in storage after each `flush`.

  Local files are appended to. An object in a bucket cannot be: its bytes are kept here and
  uploaded whole at each flush (so a bucket holds what was flushed; a kill loses the rest).
  """

  def __init__(self, path: str):
    """Opens `path` for appending (created if missing; in a bucket, its old content kept)."""
    self.path = path
    if is_url(path):
      self._file = io.BytesIO(read_bytes(path) if exists(path) else b"")
      self._file.seek(0, io.SEEK_END)
    else:
      self._file = open(path, "ab")
    self._flushed = None

  def write(self, data: bytes) -> None:
    """Appends `data`."""
    self._file.write(data)

  def flush(self) -> None:
    """Hands everything written so far to the storage."""
    if not is_url(self.path):
      self._file.flush()
      return
    data = self._file.getvalue()
    if data != self._flushed:
      write_bytes(self.path, data)
      self._flushed = data

  def close(self) -> None:
    """Flushes, then closes."""
    try:
      self.flush()
    finally:
      self._file.close()


def append(path: str, data: bytes) -> None:
  """Appends `data` to file `path` (created if missing); in a bucket, rewrites the object."""
  appender = Appender(path)
  try:
    appender.write(data)
  finally:
    appender.close()


def check_writable(folder: str) -> None:
  """Creates `folder` and writes a file into it, then removes it; OSError if it cannot be (in
  a bucket: FileNotFoundError if the bucket does not exist, PermissionError with the storage's
  reason if it refuses the write)."""
  if not is_url(folder):
    makedirs(folder)
    with tempfile.TemporaryFile(dir=folder):
      return
  if not bucket_exists(folder):
    raise FileNotFoundError(errno.ENOENT, "its bucket does not exist", folder)
  probe = join(folder, f".write_check.{os.getpid()}.tmp")
  try:
    write_bytes(probe, b"")
  except Exception as e:  # pylint: disable=broad-except (each client words it its own way)
    # The storage's reason comes last (gcsfs puts `Forbidden: <request URL>` above it).
    reason = (str(e).strip().splitlines() or [repr(e)])[-1]
    raise PermissionError(errno.EACCES, reason, folder) from e
  remove(probe)


def mirror(url: str, local: str) -> str:
  """A local copy of folder `url` (a URL) in folder `local`, for readers of local files only:
  files missing there, or of another size, are downloaded (each atomically). Returns `local`."""
  fs, inner = _fs(url)
  for path, info in sorted(fs.find(inner, detail=True).items()):
    target = os.path.join(local, *posixpath.relpath(path, inner).split("/"))
    if os.path.isfile(target) and os.path.getsize(target) == info["size"]:
      continue
    os.makedirs(os.path.dirname(target), exist_ok=True)
    write_bytes(target, read_bytes(_url(url, path)), f"{target}.{os.getpid()}.tmp")
  return local


def bucket_exists(path: str) -> bool:
  """Whether the bucket of URL `path` exists (True for a local path)."""
  if not is_url(path):
    return True
  fs, inner = _fs(path)
  return fs.exists(inner.split("/", 1)[0])


def failed_write_hint(path: str) -> str:
  """What to do before rerunning after a write to `path` failed."""
  if is_url(path):
    return "once the storage answers again (check the bucket and the network)"
  return "free space (or fix the folder)"


def use_emulator() -> str | None:
  """Points every storage client at the emulator named by $STORAGE_EMULATOR_HOST, if set, with
  anonymous credentials; returns its URL (None: not set, nothing changed).

  gcsfs reads the variable itself; TensorStore reads `TENSORSTORE_GCS_HTTP_URL` (set here) and
  goes anonymous without credentials. gcsfs's default filesystem asks a gRPC control API for the
  bucket's layout, which an emulator lacks (each call waits for a timeout), so the plain HTTP
  filesystem is registered for gs:// instead. Commands call this once at start.
  """
  url = os.environ.get(EMULATOR_VARIABLE)
  if not url:
    return None
  import fsspec  # pylint: disable=g-import-not-at-top
  from gcsfs import core as gcsfs_core  # pylint: disable=g-import-not-at-top
  os.environ.setdefault(_TENSORSTORE_ENDPOINT, url)
  for protocol in ("gs", "gcs"):
    fsspec.register_implementation(protocol, gcsfs_core.GCSFileSystem, clobber=True)
    fsspec.config.conf[protocol] = {"token": "anon"}
  return url
