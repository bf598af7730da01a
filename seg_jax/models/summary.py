"""Parameters per stage, total parameters and forward GFLOPs of a registered model.

    python -m seg_jax.models.summary --model=deeplabv3 --height=144 --width=256 --num_classes=6
    python -m seg_jax.models.summary --config=configs/dubai.py:unet [--config.model.x=y ...]
    python -m seg_jax.models.summary --workdir=/tmp/seg_dubai

With `--config`, the model is the config's `model.name` with its `model.kwargs` and
`model.ablation` at `data.image_size`, with `model.num_classes` classes (`--num_classes` where
that is 0, the dataset's count) and as many input bands as `data.bands` names (`--bands` where
it names none: the files' own bands, e.g. 4 for configs/naip.py). With `--workdir`, it is the
model a training run trains: its stored config (`--config` may be left out, `seg_jax.cli`), at
the image size and with the classes and bands of its dataset.json.

Stages are the parts of a segmentation model (backbone, neck, decoder, head) and the top-level
children of a classifier. FLOPs come from XLA's cost analysis of the compiled,
jitted eval-mode forward pass at batch 1 (``jax.jit(f).lower(...).compile().cost_analysis()``):
a multiply-add counts as 2 FLOPs and taps that fall in a convolution's zero padding are not
counted. Shapes are traced abstractly, so no parameters are allocated.

`matmul_flops` counts the convolutions and matrix products of any function (a whole train step
included) from its jaxpr instead, the same on every backend: the figure a model FLOPs
utilisation is computed from.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend import core as jax_core
from absl import flags

from seg_jax import cli
from seg_jax import errors
from seg_jax import models
from seg_jax.models import segmentation

FLAGS = flags.FLAGS
# The flags that --config sets instead.
_MODEL_FLAGS = ("model", "kwargs", "height", "width")
DEFAULT_MODEL = "asym_unet"  # --model without --config or --workdir: the proposal


@functools.cache
def define_flags() -> None:
  """Defines this command's flags besides --config, --workdir and --model (once per process)."""
  flags.DEFINE_integer("height", 144, "Input height.")
  flags.DEFINE_integer("width", 256, "Input width.")
  flags.DEFINE_integer("num_classes", 6, "Number of output classes.")
  flags.DEFINE_integer("bands", 3, "Input bands (channels); with --config, where data.bands "
                       "names none.")
  flags.DEFINE_string("kwargs", "{}", "JSON object of extra model fields.")


def abstract_variables(model: nn.Module, input_shape: Sequence[int]) -> Any:
  """Variable shapes of ``model`` for NHWC ``input_shape``, traced without allocating."""
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def forward_flops(model: nn.Module, variables: Any, input_shape: Sequence[int]) -> float:
  """FLOPs of one eval-mode forward pass, from XLA's cost analysis of the compiled function."""
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).compile()
  return float(compiled.cost_analysis()["flops"])


def _eqn_flops(eqn) -> float:
  """2 x multiply-adds of a convolution or matrix product, else 0."""
  out = eqn.outvars[0].aval
  if eqn.primitive.name == "conv_general_dilated":
    rhs = eqn.invars[1].aval
    out_features = rhs.shape[eqn.params["dimension_numbers"].rhs_spec[0]]
    return 2.0 * math.prod(out.shape) * math.prod(rhs.shape) / out_features
  if eqn.primitive.name == "dot_general":
    (contracting, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval
    return 2.0 * math.prod(out.shape) * math.prod(lhs.shape[d] for d in contracting)
  return 0.0


def _jaxpr_flops(jaxpr) -> float:
  """Convolution and matrix-product FLOPs of a jaxpr, inner jaxprs included."""
  total = 0.0
  for eqn in jaxpr.eqns:
    total += _eqn_flops(eqn)
    inner = [_jaxpr_flops(sub) for sub in jax_core.jaxprs_in_params(eqn.params)]
    if eqn.primitive.name == "cond":
      total += max(inner, default=0.0)  # one branch runs
    else:
      total += sum(inner) * eqn.params.get("length", 1)  # a scan runs its body `length` times
  return total


def matmul_flops(fn: Callable[..., Any], *args: Any) -> float:
  """FLOPs of the convolutions and matrix products of ``fn(*args)`` (multiply-add = 2).

  Counted from the jaxpr, so taps in a convolution's zero padding count as in the usual
  analytic formula, nothing is compiled, and ``args`` may be ``jax.ShapeDtypeStruct``s. A
  ``while`` loop's body counts once; of a ``cond``, the costliest branch.
  """
  if hasattr(fn, "trace"):  # a jitted function: its own jaxpr (its compiler options stay its)
    return _jaxpr_flops(fn.trace(*args).jaxpr.jaxpr)
  return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def params_per_stage(variables: Any) -> dict[str, int]:
  """Parameter count of each top-level child, by child name, parts in composition order."""
  order = {part: i for i, part in enumerate(segmentation.PARTS)}
  children = sorted(variables["params"].items(), key=lambda item: order.get(item[0], len(order)))
  return {name: models.count_params({"params": tree}) for name, tree in children}


def summarize(name: str, *, height: int, width: int, num_classes: int, bands: int = 3,
              **kwargs: Any) -> dict[str, Any]:
  """``{"stages": {child: params}, "total_params": int, "gflops": float}`` at batch 1."""
  model = models.create(name, num_classes=num_classes, **kwargs)
  shape = (1, height, width, bands)
  variables = abstract_variables(model, shape)
  return {"stages": params_per_stage(variables), "total_params": models.count_params(variables),
          "gflops": forward_flops(model, variables, shape) / 1e9}


def format_summary(name: str, summary: dict[str, Any], height: int, width: int,
                   bands: int = 3) -> str:
  """Human-readable table of ``summarize``'s result."""
  stages = summary["stages"]
  col = max([len("total")] + [len(k) for k in stages])
  lines = [f"{name} at 1x{height}x{width}x{bands}", f"{'stage':<{col}}  {'params':>13}"]
  lines += [f"{k:<{col}}  {v:>13,}" for k, v in stages.items()]
  lines.append(f"{'total':<{col}}  {summary['total_params']:>13,}")
  lines.append(f"forward GFLOPs (XLA cost analysis, multiply-add = 2): {summary['gflops']:.2f}")
  return "\n".join(lines)


def as_tuples(value: Any) -> Any:
  """``value`` with every JSON list turned into a tuple (module fields such as rates are tuples)."""
  if isinstance(value, dict):
    return {k: as_tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(as_tuples(v) for v in value)
  return value


def _model_from_flags() -> tuple[str, tuple[int, int, int], int, dict[str, Any]]:
  """(name, (height, width, bands), num_classes, model fields) of the model the flags name."""
  config = FLAGS.config
  if config is None and FLAGS.workdir is not None:
    raise errors.WorkdirError(f"--workdir={FLAGS.workdir} holds no training run (no stored "
                              "config): give a run folder, or the config as --config")
  if config is None:
    try:
      kwargs = json.loads(FLAGS.kwargs)
    except json.JSONDecodeError as e:
      raise errors.FlagError(f"--kwargs must be a JSON object, got {FLAGS.kwargs!r}") from e
    if not isinstance(kwargs, dict):
      raise errors.FlagError(f"--kwargs must be a JSON object, got {FLAGS.kwargs!r}")
    return (FLAGS.model or DEFAULT_MODEL, (FLAGS.height, FLAGS.width, FLAGS.bands),
            FLAGS.num_classes, as_tuples(kwargs))
  given = [f"--{name}" for name in _MODEL_FLAGS if FLAGS[name].present]
  if given:
    raise errors.FlagError(f"{', '.join(given)} and --config: the config sets the model; "
                           "override it with --config.model.name=... instead")
  if FLAGS.workdir is not None:  # the run's classes, bands and image size
    num_classes, (height, width), bands = cli.workdir_data(FLAGS.workdir)
  else:
    (height, width), num_classes = config.data.image_size, config.model.num_classes
    bands = len(config.data.bands) or FLAGS.bands
  return (config.model.name, (height, width, bands), num_classes or FLAGS.num_classes,
          {"ablation": config.model.ablation, **as_tuples(config.model.kwargs.to_dict())})


def main(argv: Sequence[str]) -> None:
  """Prints the summary of the model of ``--model`` (or of ``--config``, or ``--workdir``'s)."""
  del argv
  name, (height, width, bands), num_classes, kwargs = _model_from_flags()
  try:
    summary = summarize(name, height=height, width=width, num_classes=num_classes, bands=bands,
                        **kwargs)
  except ValueError as e:  # a model name or field the registry does not take
    error = errors.FlagError if FLAGS.config is None else errors.ConfigError
    raise error(str(e)) from e
  print(format_summary(name, summary, height, width, bands))


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, shared=("config", "workdir", "model"),
          config_from_workdir=True)
