"""The model and train state a config describes: model building, dtype names, the train state,
its variables, and restoring them from a run folder.

Everything that needs a model and its variables (training, prediction, weight import, sweeps,
experiments) builds them here, without the training loop.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections

from seg_jax import errors
from seg_jax import models
from seg_jax import optim
from seg_jax import workdir as workdir_lib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class TrainState(train_state.TrainState):
  """Parameters, optimizer state and step, plus BatchNorm statistics."""

  batch_stats: Any = None


def dtype_from_name(name: str) -> Any:
  """JAX dtype for a config dtype string."""
  if name not in DTYPES:
    raise errors.ConfigError(f"dtype must be one of {tuple(DTYPES)}, got {name!r}")
  return DTYPES[name]


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """The configured model from the registry, with ``model.ablation`` applied by the registry.

  A classifier comes as ``DenseFromClassifier`` (its logits at every pixel), so everything
  downstream (loss, confusion matrix, logs) treats it as a segmentation model. With
  ``optim.backbone="freeze"`` the frozen modules are the model's ``frozen_parts``.
  """
  try:
    model = models.create(config.model.name, num_classes=num_classes, dense=True,
                          dtype=dtype_from_name(config.model.dtype),
                          param_dtype=dtype_from_name(config.model.param_dtype),
                          ablation=config.model.ablation, **config.model.kwargs.to_dict())
  except ValueError as e:  # a keyword or ablation the model does not take
    raise errors.ConfigError(f"model.kwargs / model.ablation of {config.model.name!r}: {e}"
                             ) from e
  frozen = optim.frozen_modules(config.optim)
  if not frozen:
    return model
  try:
    optim.check_backbone_modules(config.optim, model.parts)
  except ValueError as e:
    raise errors.ConfigError(str(e)) from e
  return model.clone(frozen_parts=frozen)


def init_state(config: ml_collections.ConfigDict, model: nn.Module,
               image_size: tuple[int, int], rng: jax.Array, *, num_bands: int = 3
               ) -> TrainState:
  """Fresh train state of a model whose input has `num_bands` bands (channels); call under
  `jax.jit` (or `jax.eval_shape` for its structure)."""
  dummy = jnp.zeros((1, *image_size, num_bands), dtype_from_name(config.model.dtype))
  variables = model.init({"params": rng, "dropout": rng}, dummy, train=False)
  params = variables["params"]
  tx = optim.create_optimizer(config.optim, config.train.num_steps, params)
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                           batch_stats=variables.get("batch_stats", {}))


def abstract_state(config: ml_collections.ConfigDict, num_classes: int,
                   image_size: tuple[int, int], model: nn.Module | None = None, *,
                   num_bands: int = 3) -> TrainState:
  """Shapes of the train state of a run of `config` (what its checkpoints restore into)."""
  model = build_model(config, num_classes) if model is None else model
  return jax.eval_shape(functools.partial(init_state, config, model, tuple(image_size),
                                          num_bands=num_bands), jax.random.key(0))


def describe_parameters(config: ml_collections.ConfigDict, state: TrainState) -> str:
  """'model NAME: N parameters', with the frozen and trainable counts under
  `optim.backbone="freeze"`."""
  params = state.params
  text = f"model {config.model.name}: {models.count_params({'params': params}):,} parameters"
  frozen = optim.frozen_modules(config.optim)
  if frozen:
    counts = {name: models.count_params({"params": tree}) for name, tree in params.items()}
    held = sum(n for name, n in counts.items() if name in frozen)
    text += (f" ({held:,} frozen in {', '.join(frozen)} by optim.backbone=freeze, "
             f"{sum(counts.values()) - held:,} trainable)")
  return text


def variables(state: TrainState) -> dict[str, Any]:
  """The model variables of a train state (or of its shapes): params and BatchNorm statistics."""
  return {"params": state.params, "batch_stats": state.batch_stats}


def restore_variables(run_dir: workdir_lib.RunDir, config: ml_collections.ConfigDict,
                      info: workdir_lib.DataInfo, which: str = "best", model: nn.Module | None = None
                      ) -> tuple[dict[str, Any], int]:
  """(model variables, step) of the run folder's "best" or "latest" checkpoint, read-only.

  `config` and `info` are the run's own (its config.json and dataset.json); `model` the one
  built from them, if already built.
  """
  abstract = abstract_state(config, len(info.class_names), info.image_size, model,
                            num_bands=len(info.bands))
  restored, step = run_dir.restore(abstract, which)
  return variables(restored), step
