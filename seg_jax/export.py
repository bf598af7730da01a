r"""Exports a trained model as a deployment artifact: serialized StableHLO or ONNX, and a sidecar.

  python -m seg_jax.export --workdir=/tmp/seg_dubai --format=stablehlo --output=/tmp/dubai.stablehlo
  python -m seg_jax.export --workdir=/tmp/seg_dubai --format=onnx --output=/tmp/dubai.onnx
  python -m seg_jax.predict --model=/tmp/dubai.onnx --input=tile.jpg --output=/tmp/pred

The artifact is the run's model in inference mode (weights and BatchNorm statistics as constants,
dropout off) behind the training data's normalisation: it takes raw pixels, uint8 NHWC with the
training bands (R, G, B), and returns float32 logits (N, H, W, classes) at the input's size
(`--outputs=logits`, the default), their softmax (`probs`) or int32 class indices (N, H, W)
(`classes`). `--dtype` is the compute dtype (float32 by default; bfloat16 and float16 for
StableHLO).

Sizes: the batch is symbolic in both formats. A StableHLO artifact also takes any height and width
of at least the model's smallest input (`models.min_input_size`, 32 for every segmentation
model; the padding to a multiple of the model's stride happens inside, as in training), unless
`--size=H,W` fixes them; a model that cannot trace at a symbolic size (a classifier whose dense
layer reads the flattened image) is refused with the reason, and exports with `--size`. An ONNX
artifact has a fixed height and width, `--size` or the training size: jax2onnx (0.13, the
version that installs beside orbax-checkpoint 0.12) converts `jax.image.resize`, the last
upsampling of every segmentation model, at static sizes only.

Beside FILE goes FILE.json (`seg_jax.artifact.Sidecar`): the input (dtype, layout, bands, size),
the outputs, classes and colours, mean/std, the training size, the seg_jax version, a hash of the
run's config, the checkpoint and step, and the artifact's SHA-256.

ONNX conversion: three primitives are rewritten into equal computations before jax2onnx sees them
(`onnx_compatible`): `reduce_window_max` (max pooling, which jax2onnx makes a MaxPool over a 6-d
tensor that onnxruntime rejects) into -inf edges and flax's `max_pool` (a 2-d MaxPool);
`conv_general_dilated` with `lhs_dilation` (transposed convolutions, which jax2onnx 0.13 gives
stride 1) into a convolution of the input with zeros interleaved; and `pad` (whose ONNX lowering
needs a static batch) into concatenated edges.

Exit codes (`seg_jax.errors`): 0 when the artifact and sidecar were written; 2 when nothing could
be (bad flags, workdir or model; one line on stderr).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging as std_logging

from absl import flags
from absl import logging
import flax.linen as nn
import jax
from jax import export as jax_export
from jax.extend import core as jax_core
import jax.numpy as jnp
import ml_collections
import numpy as np

import seg_jax
from seg_jax import artifact as artifact_lib
from seg_jax import cli
from seg_jax import errors
from seg_jax import models
from seg_jax import predict
from seg_jax import state as state_lib
from seg_jax import storage
from seg_jax import writers
from seg_jax.data import augment

FLAGS = flags.FLAGS
# The compute dtypes (--dtype) each format takes: onnxruntime's CPU convolutions are float32 only.
FORMAT_DTYPES = {"stablehlo": ("float32", "bfloat16", "float16"), "onnx": ("float32",)}
# A StableHLO artifact runs on these platforms (jax.export lowers for each).
PLATFORMS = ("cpu", "cuda")


@functools.cache
def define_flags() -> None:
  """Defines this command's flags besides --workdir (once per process)."""
  flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                    "Checkpoint: best validation mIoU or latest.")
  flags.DEFINE_enum("format", None, list(artifact_lib.FORMATS), "Artifact format.")
  flags.DEFINE_string("output", None, "Artifact file; its sidecar goes to FILE.json.")
  flags.DEFINE_enum("outputs", "logits", list(artifact_lib.OUTPUTS),
                    "logits (N, H, W, C) float32, probs (their softmax) or classes (N, H, W) "
                    "int32.")
  flags.DEFINE_enum("dtype", "float32", list(state_lib.DTYPES), "Compute dtype.")
  flags.DEFINE_list("size", [], "H,W of a fixed-size artifact (default: symbolic for "
                    "stablehlo, the training size for onnx).")


def _head(logits: jax.Array, outputs: str) -> jax.Array:
  """The artifact's outputs of float32 logits (N, H, W, C)."""
  if outputs == "probs":
    return jax.nn.softmax(logits, axis=-1)
  if outputs == "classes":
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return logits


def serving_fn(model: nn.Module, variables, mean, std, outputs: str = "logits",
               dtype: str = "float32", value_scale: float = 1.0):
  """Raw uint8 NHWC pixels -> the model's `outputs`, in inference mode, normalised inside and
  fed in the model's compute `dtype`.

  `mean` and `std` are those of pixel values times `value_scale` (`seg_jax.data.Bands.scale`),
  as training normalised them and as `inference.window_predictor` takes them.
  """
  mean = np.asarray(mean, np.float32) / value_scale
  std = np.asarray(std, np.float32) / value_scale

  def serve(pixels: jax.Array) -> jax.Array:
    x = augment.normalize(pixels, mean, std).astype(state_lib.dtype_from_name(dtype))
    return _head(model.apply(variables, x, train=False).astype(jnp.float32), outputs)

  return serve


def input_spec(bands: int, size: tuple[int, int] | None, min_size: int) -> jax.ShapeDtypeStruct:
  """uint8 (batch, H, W, bands), the batch symbolic and H, W too when `size` is None."""
  if size is None:
    shape = jax_export.symbolic_shape(
        f"batch, height, width, {bands}",
        constraints=(f"height >= {min_size}", f"width >= {min_size}"))
  else:
    shape = (*jax_export.symbolic_shape("batch"), *size, bands)
  return jax.ShapeDtypeStruct(shape, jnp.uint8)


def export_stablehlo(fn, spec: jax.ShapeDtypeStruct) -> bytes:
  """`fn` at `spec` as serialized StableHLO (`jax.export`) for `PLATFORMS`."""
  return jax_export.export(jax.jit(fn), platforms=PLATFORMS)(spec).serialize()


def export_onnx(fn, spec: jax.ShapeDtypeStruct, name: str) -> bytes:
  """`fn` at `spec` (static H and W) as an ONNX model (jax2onnx, the `[export]` extra)."""
  try:
    import jax2onnx  # pylint: disable=g-import-not-at-top (the optional [export] extra)
  except ImportError as e:
    raise errors.ArtifactError("ONNX export needs jax2onnx: pip install -e '.[export]'") from e
  proto = jax2onnx.to_onnx(onnx_compatible(fn, spec), inputs=[spec], model_name=name,
                           input_names=["pixels"], output_names=["outputs"])
  return proto.SerializeToString()


def _edges(x: jax.Array, value, padding) -> jax.Array:
  """`x` padded by `padding` ((low, high) per axis) with `value`, as concatenated edges."""
  for axis, (low, high) in enumerate(padding):
    if low or high:
      edge = jnp.full_like(jax.lax.slice_in_dim(x, 0, 1, axis=axis), value)
      x = jnp.concatenate([edge] * low + [x] + [edge] * high, axis=axis)
  return x


def _pad(x, value, *, padding_config):
  if any(interior or low < 0 or high < 0 for low, high, interior in padding_config):
    return jax.lax.pad_p.bind(x, value, padding_config=padding_config)
  return _edges(x, value, [(low, high) for low, high, _ in padding_config])


def _max_pool(x, *, window_dimensions, window_strides, padding, base_dilation,
              window_dilation):
  if (set(base_dilation) | set(window_dilation) != {1} or window_dimensions[0] != 1
      or window_dimensions[-1] != 1):
    raise errors.ArtifactError(f"ONNX export: max pooling over {window_dimensions} with "
                               f"dilations {base_dilation}/{window_dilation} is not supported")
  x = _edges(x, -jnp.inf, padding)
  return nn.max_pool(x, window_shape=tuple(window_dimensions[1:-1]),
                     strides=tuple(window_strides[1:-1]), padding="VALID")


def _conv(lhs, rhs, *, lhs_dilation, **params):
  for axis, factor in zip(params["dimension_numbers"].lhs_spec[2:], lhs_dilation):
    if factor > 1:  # factor - 1 zeros after each row (column), none after the last
      size = lhs.shape[axis]
      zeros = [jnp.zeros_like(lhs)] * (factor - 1)
      shape = list(lhs.shape)
      shape[axis] = size * factor
      lhs = jnp.stack([lhs, *zeros], axis=axis + 1).reshape(shape)
      lhs = jax.lax.slice_in_dim(lhs, 0, (size - 1) * factor + 1, axis=axis)
  return jax.lax.conv_general_dilated_p.bind(lhs, rhs, lhs_dilation=(1,) * len(lhs_dilation),
                                             **params)


_ONNX_REWRITES = {"reduce_window_max": _max_pool, "conv_general_dilated": _conv, "pad": _pad}
_INLINED = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr",
            "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr"}


def _evaluate(jaxpr: jax_core.Jaxpr, consts, *args) -> list:
  """Evaluates `jaxpr` with the primitives of `_ONNX_REWRITES` rewritten, calls inlined."""
  env = {}

  def read(var):
    return var.val if isinstance(var, jax_core.Literal) else env[var]

  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    inputs = [read(v) for v in eqn.invars]
    name = eqn.primitive.name
    if name in _ONNX_REWRITES:
      outputs = [_ONNX_REWRITES[name](*inputs, **eqn.params)]
    elif name in _INLINED:
      inner = eqn.params[_INLINED[name]]
      outputs = _evaluate(inner.jaxpr, inner.consts, *inputs)
    else:
      outputs = eqn.primitive.bind(*inputs, **eqn.params)
      outputs = outputs if eqn.primitive.multiple_results else [outputs]
    env.update(zip(eqn.outvars, outputs))
  return [read(v) for v in jaxpr.outvars]


def onnx_compatible(fn, spec: jax.ShapeDtypeStruct):
  """`fn` traced at `spec` and replayed with the rewrites of the module docstring.

  Traced here, outside jax2onnx, so `jax.image.resize` stays the primitives it is made of
  (jax2onnx's own resize needs a static batch).
  """
  closed = jax.make_jaxpr(fn)(spec)

  def replay(pixels):
    (out,) = _evaluate(closed.jaxpr, closed.consts, pixels)
    return out

  return replay


def config_hash(config: ml_collections.ConfigDict) -> str:
  """The first 16 hex digits of the SHA-256 of the config as sorted JSON."""
  text = json.dumps(writers.to_jsonable(config.to_dict()), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _model(trained: predict.TrainedModel, dtype: str) -> nn.Module:
  """The run's model at compute dtype `dtype` (its own config's otherwise)."""
  if dtype == trained.config.model.dtype:
    return trained.model
  config = ml_collections.ConfigDict(trained.config.to_dict())
  config.model.dtype = dtype
  return state_lib.build_model(config, len(trained.info.class_names))


def export_model(model: nn.Module, variables, name: str, *, mean, std, fmt: str,
                 outputs: str = "logits", dtype: str = "float32",
                 size: tuple[int, int] | None = None, value_scale: float = 1.0) -> bytes:
  """The artifact (bytes) of `model` (registry name `name`, compute dtype `dtype`) with
  `variables`, normalising by `mean` and `std` (one per band, of pixel values times
  `value_scale`).

  `size` None: symbolic height and width (StableHLO only; an ONNX artifact needs a size).
  Raises errors.RunError (one line naming the model) when it cannot.
  """
  min_size = models.min_input_size(name)
  if size is not None and min(size) < min_size:
    raise errors.FlagError(f"--size {tuple(size)}: model {name!r} takes at least {min_size} "
                           "pixels")
  if fmt == "onnx" and size is None:
    raise errors.FlagError("an ONNX artifact needs a fixed --size=H,W")
  fn = serving_fn(model, variables, mean, std, outputs, dtype, value_scale)
  spec = input_spec(len(mean), size, min_size)
  try:
    return export_onnx(fn, spec, name) if fmt == "onnx" else export_stablehlo(fn, spec)
  except errors.RunError:
    raise
  except Exception as e:  # pylint: disable=broad-except (any failure to trace at this size)
    why = str(e).splitlines()[0]
    hint = "; export at a fixed size with --size=H,W" if size is None else ""
    raise errors.ArtifactError(f"model {name!r} cannot be exported to {fmt} at "
                               f"{'a symbolic size' if size is None else size} ({why}){hint}"
                               ) from e


def export_workdir(workdir: str, output: str, *, fmt: str, checkpoint: str = "best",
                   outputs: str = "logits", dtype: str = "float32",
                   size: tuple[int, int] | None = None) -> artifact_lib.Sidecar:
  """Writes the artifact of a workdir's model to `output` and its sidecar; returns the sidecar.

  `size` None: symbolic height and width for StableHLO, the training size for ONNX.
  """
  _check_options(fmt, outputs, dtype, size)
  trained = predict.load_workdir(workdir, checkpoint)
  info, name = trained.info, trained.config.model.name
  if fmt == "onnx" and size is None:
    size = tuple(info.image_size)
  data = export_model(_model(trained, dtype), trained.variables, name, mean=info.mean,
                      std=info.std, fmt=fmt, outputs=outputs, dtype=dtype, size=size,
                      value_scale=info.scale)
  sidecar = artifact_lib.Sidecar(
      format=fmt, model=name, outputs=outputs, dtype=dtype,
      bands=artifact_lib.band_names(len(info.mean)), input_size=size,
      min_input_size=models.min_input_size(name), data=info,
      seg_jax_version=seg_jax.__version__, config_hash=config_hash(trained.config),
      checkpoint=checkpoint, step=trained.step, sha256=artifact_lib.sha256(data))
  writers.makedirs_for(output)
  writers.write_atomic(output, lambda f: f.write(data))
  writers.write_json(artifact_lib.sidecar_path(output), sidecar.to_dict())
  return sidecar


def _check_options(fmt: str, outputs: str, dtype: str, size) -> None:
  """FlagError naming the first option out of range."""
  if fmt not in artifact_lib.FORMATS:
    raise errors.FlagError(f"--format must be one of {artifact_lib.FORMATS}, got {fmt!r}")
  if outputs not in artifact_lib.OUTPUTS:
    raise errors.FlagError(f"--outputs must be one of {artifact_lib.OUTPUTS}, got {outputs!r}")
  if dtype not in FORMAT_DTYPES[fmt]:
    raise errors.FlagError(f"--dtype={dtype}: {fmt} artifacts compute in "
                           f"{', '.join(FORMAT_DTYPES[fmt])}")
  if size is not None and (len(size) != 2 or min(size) < 1):
    raise errors.FlagError(f"--size must be H,W (positive), got {tuple(size)}")


def main(argv) -> int:
  """Exports with the parsed flags; returns the exit code."""
  del argv
  # jax2onnx logs, with a traceback, each optional plugin of its own it cannot import (dm_pix,
  # MaxText), and onnx_ir its serialisation notes: none concerns the artifact.
  for library in ("jax2onnx", "onnx_ir"):
    std_logging.getLogger(library).setLevel(std_logging.ERROR)
  try:
    size = tuple(int(v) for v in FLAGS.size) or None
  except ValueError as e:
    raise errors.FlagError(f"--size must be H,W integers ({e})") from e
  sidecar = export_workdir(FLAGS.workdir, FLAGS.output, fmt=FLAGS.format,
                           checkpoint=FLAGS.checkpoint, outputs=FLAGS.outputs,
                           dtype=FLAGS.dtype, size=size)
  size = "any size" if sidecar.input_size is None else "x".join(map(str, sidecar.input_size))
  logging.info("step %d of %s exported", sidecar.step, FLAGS.workdir)
  print(f"wrote {FLAGS.output} ({storage.size(FLAGS.output):,} bytes; {sidecar.model}, "
        f"{sidecar.outputs} at {size}) and {artifact_lib.sidecar_path(FLAGS.output)}")
  return errors.EXIT_OK


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, shared=["workdir"],
          required=["workdir", "format", "output"])
