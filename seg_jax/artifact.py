"""A deployment artifact read back: its sidecar and the model as a callable, without a workdir.

`seg_jax.export` writes FILE (serialized StableHLO or ONNX) and its sidecar FILE.json. An
`Artifact` reads both, checks that they belong together (the sidecar holds the artifact's SHA-256)
and calls the model on raw pixel windows, through `jax.export.deserialize` or onnxruntime (the
`[export]` extra, imported only for ONNX), so `seg_jax.inference.predict` runs it as it runs a Flax
model. Every error is an `errors.ArtifactError` naming the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import jax
from jax import export as jax_export
import jax.numpy as jnp
import numpy as np

from seg_jax import errors
from seg_jax import storage
from seg_jax import workdir as workdir_lib

FORMATS = ("stablehlo", "onnx")
OUTPUTS = ("logits", "probs", "classes")
SIDECAR_SUFFIX = ".json"
RGB = ("R", "G", "B")


def sidecar_path(path: str) -> str:
  """The sidecar of artifact `path` (e.g. model.onnx -> model.onnx.json)."""
  return path + SIDECAR_SUFFIX


def band_names(count: int) -> tuple[str, ...]:
  """Names of the input bands of a model trained on `count` of them (R, G, B for 3)."""
  return RGB if count == len(RGB) else tuple(f"band{i + 1}" for i in range(count))


def sha256(data: bytes) -> str:
  """Hex SHA-256 of `data`."""
  return hashlib.sha256(data).hexdigest()


@dataclasses.dataclass(frozen=True)
class Sidecar:
  """What a consumer of an artifact needs besides it: input, outputs, classes, provenance.

  `data` holds the classes, colours, mean/std and training size (`image_size`) of the run.
  `input_size` is None where height and width are symbolic (any size >= `min_input_size`).
  """

  format: str
  model: str
  outputs: str
  dtype: str
  bands: tuple[str, ...]
  input_size: tuple[int, int] | None
  min_input_size: int
  data: workdir_lib.DataInfo
  seg_jax_version: str
  config_hash: str
  checkpoint: str
  step: int
  sha256: str

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready fields; the data info's keys sit at the top level."""
    return {"format": self.format, "model": self.model, "outputs": self.outputs,
            "dtype": self.dtype,
            "input": {"dtype": "uint8", "layout": "NHWC", "bands": list(self.bands),
                      "size": None if self.input_size is None else list(self.input_size),
                      "min_size": self.min_input_size},
            **self.data.to_dict(), "seg_jax_version": self.seg_jax_version,
            "config_hash": self.config_hash, "checkpoint": self.checkpoint, "step": self.step,
            "sha256": self.sha256}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> Sidecar:
    """Inverse of `to_dict`."""
    size = d["input"]["size"]
    return cls(format=d["format"], model=d["model"], outputs=d["outputs"], dtype=d["dtype"],
               bands=tuple(d["input"]["bands"]), input_size=None if size is None else tuple(size),
               min_input_size=int(d["input"]["min_size"]),
               data=workdir_lib.DataInfo.from_dict(d), seg_jax_version=d["seg_jax_version"],
               config_hash=d["config_hash"], checkpoint=d["checkpoint"], step=int(d["step"]),
               sha256=d["sha256"])


def read_sidecar(path: str) -> Sidecar:
  """The sidecar of artifact `path`; ArtifactError naming the file if missing or invalid."""
  side = sidecar_path(path)
  try:
    sidecar = Sidecar.from_dict(json.loads(storage.read_text(side)))
  except FileNotFoundError as e:
    raise errors.ArtifactError(f"{side} does not exist: seg_jax.export writes it beside {path}; "
                               "export again or copy it along") from e
  except (OSError, KeyError, TypeError, ValueError) as e:
    raise errors.ArtifactError(f"{side}: not a valid artifact sidecar ({e!r})") from e
  if sidecar.format not in FORMATS or sidecar.outputs not in OUTPUTS:
    raise errors.ArtifactError(f"{side}: format {sidecar.format!r} / outputs "
                               f"{sidecar.outputs!r} must be one of {FORMATS} / {OUTPUTS}")
  return sidecar


def _load_stablehlo(path: str, data: bytes):
  try:
    exported = jax_export.deserialize(bytearray(data))
  except Exception as e:  # pylint: disable=broad-except (any flatbuffer or MLIR parse error)
    raise errors.ArtifactError(f"{path}: not a readable StableHLO artifact "
                               f"({type(e).__name__}: {e})") from e
  return exported.call, tuple(exported.in_avals[0].shape)


def onnx_session(path: str, data: bytes):
  """An onnxruntime CPU session of ONNX model `data` (read from `path`, named in errors)."""
  try:
    import onnxruntime  # pylint: disable=g-import-not-at-top (the optional [export] extra)
  except ImportError as e:
    raise errors.ArtifactError(f"{path}: ONNX artifacts run on onnxruntime; install it with "
                               "pip install -e '.[export]'") from e
  options = onnxruntime.SessionOptions()
  options.log_severity_level = 3  # errors only: jax2onnx's shape hints draw merge warnings
  try:
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
  except Exception as e:  # pylint: disable=broad-except (onnxruntime raises its own types)
    raise errors.ArtifactError(f"{path}: not a readable ONNX model ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''})") from e


def _load_onnx(path: str, data: bytes):
  session = onnx_session(path, data)
  (model_input,) = session.get_inputs()

  def call(windows):
    return session.run(None, {model_input.name: np.asarray(windows, np.uint8)})[0]

  return call, tuple(d if isinstance(d, int) else None for d in model_input.shape)


class Artifact:
  """An exported model: `artifact(windows)` maps uint8 windows (B, h, w, bands) to its outputs.

  Its logits (`logits`) make it a model for `seg_jax.inference.predict`, which runs it with
  `variables=None`; an artifact of probabilities gives their logarithm, whose softmax is them.
  """

  def __init__(self, path: str):
    self.path = path
    self.sidecar = read_sidecar(path)
    try:
      data = storage.read_bytes(path)
    except OSError as e:
      raise errors.ArtifactError(f"{path}: cannot read the artifact ({e})") from e
    if sha256(data) != self.sidecar.sha256:
      raise errors.ArtifactError(
          f"{path} is not the artifact that {sidecar_path(path)} describes (its SHA-256 "
          "differs): the file was replaced, cut short or belongs to another export")
    load = _load_onnx if self.sidecar.format == "onnx" else _load_stablehlo
    self._call, shape = load(path, data)
    if len(shape) != 4 or shape[-1] != len(self.sidecar.bands):
      raise errors.ArtifactError(f"{path}: its input shape {shape} is not NHWC with the "
                                 f"{len(self.sidecar.bands)} bands its sidecar lists")

  def __repr__(self) -> str:
    return f"Artifact({self.path!r})"

  def check_windows(self, shape: tuple[int, ...]) -> None:
    """ArtifactError naming the file unless windows of `shape` (B, h, w, bands) fit it."""
    bands, size = self.sidecar.bands, self.sidecar.input_size
    if len(shape) != 4 or shape[-1] != len(bands):
      raise errors.ArtifactError(f"{self.path}: takes NHWC windows of {len(bands)} bands "
                                 f"({','.join(bands)}), got shape {tuple(shape)}")
    if size is not None and tuple(shape[1:3]) != tuple(size):
      raise errors.ArtifactError(
          f"{self.path}: takes {size[0]}x{size[1]} windows only (exported at a fixed size), got "
          f"{shape[1]}x{shape[2]}; predict with --mode=slide --window={size[0]},{size[1]}, "
          "scales only in slide mode and no quarter turns of non-square windows")
    if min(shape[1:3]) < self.sidecar.min_input_size:
      raise errors.ArtifactError(f"{self.path}: windows must be at least "
                                 f"{self.sidecar.min_input_size} pixels high and wide, got "
                                 f"{shape[1]}x{shape[2]}")

  def __call__(self, windows) -> jax.Array:
    """Logits (B, h, w, classes) of uint8 windows (B, h, w, bands); outputs as exported."""
    self.check_windows(tuple(windows.shape))
    out = self._call(windows)
    if self.sidecar.outputs == "probs":
      return jnp.log(jnp.asarray(out))
    return out
