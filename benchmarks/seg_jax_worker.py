"""The seg_jax side of `benchmarks.cpu_vs_torch`: a case's real train step, in a worker process.

  python -m benchmarks.seg_jax_worker    # started by benchmarks.cpu_vs_torch (`step_protocol`)

The step is `seg_jax.steps.Trainer.train_step` (jitted, state donated) of the case's config with
the case's batch, image size and bands, on one batch of random pixels already on the device. Two
settings differ from the config so that both sides do the same work: augmentation is off (the
PyTorch side has none; images are still cast and normalised inside the step, on both sides) and
the learning rate is constant (no schedule on the PyTorch side). Loss (cross-entropy), AdamW
with weight decay on kernels only, and gradient clipping are the config's, and the PyTorch side
is given them. The reply carries the model's settings (`seg_jax.models.settings`), from which
`benchmarks.torch_models` builds the twin.
"""

from __future__ import annotations

from typing import Any

import jax
import jaxlib

from benchmarks import common
from benchmarks import step_protocol
from seg_jax import compilation
from seg_jax import models
from seg_jax import steps

# The case's settings that differ from its config (see the module docstring).
LIKE_FOR_LIKE = {"data.augment.enabled": False, "optim.schedule": "constant",
                 "optim.warmup_steps": 0}


def case_config(case: dict[str, Any]):
  """The config of a case of `benchmarks.cpu_vs_torch.CASES`, at toy size with `case["toy"]`,
  with XLA:CPU's YNNPACK fusions on with `case["ynnpack"]` (default: the config's setting)."""
  overrides = {"data.image_size": tuple(case["size"]), "train.global_batch_size": case["batch"],
               "eval.global_batch_size": case["batch"], **LIKE_FOR_LIKE}
  if case.get("ynnpack") is not None:
    overrides["train.xla_cpu_ynnpack"] = case["ynnpack"]
  config = common.load_config(case["config"], overrides)
  if case["toy"]:
    config = common.load_config(case["config"], {**overrides, **common.toy_overrides(config)})
  return config


def prepare(case: dict[str, Any]):
  """`(config, dataset, trainer, state, batch, key)`: what the train step of `case` is called on."""
  config = case_config(case)
  if config.optim.name != "adamw":
    raise ValueError(f"the comparison trains with AdamW, the config has {config.optim.name!r}")
  compilation.use_persistent_cache(config.train.compilation_cache_dir)
  dataset = common.random_dataset(config.data.image_size, config.train.global_batch_size, 1,
                                  case["bands"])
  trainer = steps.Trainer(config, dataset)
  return (config, dataset, trainer, trainer.initial_state(), next(trainer.train_pipeline()),
          trainer.step_key())


def build(spec: dict[str, Any]) -> tuple[step_protocol.Step, dict[str, Any]]:
  """The train step of `spec["case"]` and what the PyTorch side needs to build its twin."""
  config, dataset, trainer, state, batch, key = prepare(spec["case"])
  batch_size = config.train.global_batch_size

  def step():
    nonlocal state
    state, metrics = trainer.train_step(state, batch, key)
    jax.block_until_ready((state, metrics))

  o = config.optim
  info = {
      "batch": batch_size, "size": list(config.data.image_size),
      "params": models.count_params({"params": state.params}),
      "settings": models.settings(config.model.name, config.model.ablation,
                                  **config.model.kwargs.to_dict()),
      "num_classes": trainer.num_classes, "ignore_index": config.data.ignore_index,
      "mean": [float(v) for v in dataset.mean], "std": [float(v) for v in dataset.std],
      "optimizer": dict(learning_rate=o.learning_rate, b1=o.b1, b2=o.b2, eps=o.eps,
                        weight_decay=o.weight_decay, grad_clip_norm=o.grad_clip_norm),
      "version": f"jax {jax.__version__}, jaxlib {jaxlib.__version__}",
  }
  return step, info


if __name__ == "__main__":
  step_protocol.serve(build)
