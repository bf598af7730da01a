"""Parameters per stage, total parameters and forward GFLOPs of a registered model.

    python -m seg_jax.models.summary --model=deeplabv3 --height=144 --width=256 --num_classes=6

Stages are the parts of a segmentation model (backbone, neck, decoder, head) and the top-level
children of a classifier. FLOPs come from XLA's cost analysis of the compiled,
jitted eval-mode forward pass at batch 1 (``jax.jit(f).lower(...).compile().cost_analysis()``):
a multiply-add counts as 2 FLOPs and taps that fall in a convolution's zero padding are not
counted. Shapes are traced abstractly, so no parameters are allocated.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import app, flags

from seg_jax import models
from seg_jax.models import segmentation

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the command-line flags (only when run as a program, so importing stays clean)."""
  flags.DEFINE_string("model", "asym_unet", "Registered model name (default: the proposal).")
  flags.DEFINE_integer("height", 144, "Input height.")
  flags.DEFINE_integer("width", 256, "Input width.")
  flags.DEFINE_integer("num_classes", 6, "Number of output classes.")
  flags.DEFINE_string("kwargs", "{}", "JSON object of extra model fields.")


def abstract_variables(model: nn.Module, input_shape: Sequence[int]) -> Any:
  """Variable shapes of ``model`` for NHWC ``input_shape``, traced without allocating."""
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def forward_flops(model: nn.Module, variables: Any, input_shape: Sequence[int]) -> float:
  """FLOPs of one eval-mode forward pass, from XLA's cost analysis of the compiled function."""
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax returns one dict per device.
    cost = cost[0]
  return float(cost["flops"])


def params_per_stage(variables: Any) -> dict[str, int]:
  """Parameter count of each top-level child, by child name, parts in composition order."""
  order = {part: i for i, part in enumerate(segmentation.PARTS)}
  children = sorted(variables["params"].items(), key=lambda item: order.get(item[0], len(order)))
  return {name: models.count_params({"params": tree}) for name, tree in children}


def summarize(name: str, *, height: int, width: int, num_classes: int,
              **kwargs: Any) -> dict[str, Any]:
  """``{"stages": {child: params}, "total_params": int, "gflops": float}`` at batch 1."""
  model = models.create(name, num_classes=num_classes, **kwargs)
  shape = (1, height, width, 3)
  variables = abstract_variables(model, shape)
  return {"stages": params_per_stage(variables), "total_params": models.count_params(variables),
          "gflops": forward_flops(model, variables, shape) / 1e9}


def format_summary(name: str, summary: dict[str, Any], height: int, width: int) -> str:
  """Human-readable table of ``summarize``'s result."""
  stages = summary["stages"]
  col = max([len("total")] + [len(k) for k in stages])
  lines = [f"{name} at 1x{height}x{width}x3", f"{'stage':<{col}}  {'params':>13}"]
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


def main(argv: Sequence[str]) -> None:
  """Prints the summary of ``--model``."""
  del argv
  try:
    kwargs = json.loads(FLAGS.kwargs)
  except json.JSONDecodeError as e:
    raise ValueError(f"--kwargs must be a JSON object, got {FLAGS.kwargs!r}") from e
  if not isinstance(kwargs, dict):
    raise ValueError(f"--kwargs must be a JSON object, got {FLAGS.kwargs!r}")
  summary = summarize(FLAGS.model, height=FLAGS.height, width=FLAGS.width,
                      num_classes=FLAGS.num_classes, **as_tuples(kwargs))
  print(format_summary(FLAGS.model, summary, FLAGS.height, FLAGS.width))


if __name__ == "__main__":
  define_flags()
  app.run(main)
