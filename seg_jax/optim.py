"""Optimisers, learning-rate schedules and parameter masks built from the config's `optim` group."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("warmup_cosine", "poly", "constant")
OPTIMIZERS = ("adamw", "adam", "sgd", "lamb", "lion", "rmsprop")
BACKBONE_MODES = ("train", "freeze", "scale")


def num_updates(optim_config, num_steps: int) -> int:
  """Optimizer updates in a run of `num_steps` micro-steps (gradient accumulation divides them)."""
  return max(1, num_steps // optim_config.accumulation_steps)


def schedule_length(optim_config, num_steps: int) -> int:
  """Steps the learning-rate schedule lasts: `optim.schedule_steps`, or `num_steps` (the run's
  `train.num_steps`) where it is 0."""
  if optim_config.schedule_steps < 0:
    raise ValueError(f"optim.schedule_steps must be >= 0, got {optim_config.schedule_steps}")
  return optim_config.schedule_steps or num_steps


def warmup_updates(optim_config, num_steps: int) -> int:
  """Warmup length in updates: `warmup_steps`, or half the schedule when it is not longer.

  A short run (a smoke test with a small `train.num_steps`) keeps a warmup and a decay instead
  of failing; `Trainer` logs the shortening.
  """
  warmup = optim_config.warmup_steps
  if warmup < 0:
    raise ValueError(f"optim.warmup_steps must be >= 0, got {warmup}")
  total = num_updates(optim_config, schedule_length(optim_config, num_steps))
  return warmup if warmup < total else total // 2


def create_schedule(optim_config, num_steps: int) -> optax.Schedule:
  """Learning rate per optimizer update: linear warmup, then cosine, poly or constant.

  The schedule lasts `schedule_length` steps (`num_steps`, the run's length, unless
  `optim.schedule_steps` sets it); past its end the rate stays at its final value.
  `poly` is DeepLab's lr * (1 - t / T) ** power; cosine and poly decay to
  lr * end_lr_factor at the last update. The warmup lasts `warmup_updates`.
  """
  lr = optim_config.learning_rate
  total = num_updates(optim_config, schedule_length(optim_config, num_steps))
  warmup = warmup_updates(optim_config, num_steps)
  decay_steps = total - warmup
  end = lr * optim_config.end_lr_factor
  name = optim_config.schedule
  if name == "warmup_cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps, alpha=optim_config.end_lr_factor)
  elif name == "poly":
    main = optax.polynomial_schedule(lr, end, optim_config.poly_power, decay_steps)
  elif name == "constant":
    main = optax.constant_schedule(lr)
  else:
    raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {name!r}")
  if not warmup:
    return main
  ramp = optax.linear_schedule(0.0, lr, warmup)
  return optax.join_schedules([ramp, main], [warmup])


def weight_decay_mask(params: Any) -> Any:
  """True for parameters that get weight decay: kernels (ndim > 1), not biases or norm scales."""
  return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def backbone_mask(params: Any, module_names: Sequence[str]) -> Any:
  """True for parameters inside a top-level module whose name is one of `module_names`."""
  names = set(module_names)
  return {name: jax.tree.map(lambda _: name in names, subtree) for name, subtree in params.items()}


def frozen_modules(optim_config) -> tuple[str, ...]:
  """The top-level modules `optim.backbone="freeze"` freezes (none for "train" and "scale")."""
  return tuple(optim_config.backbone_modules) if optim_config.backbone == "freeze" else ()


def check_backbone_modules(optim_config, modules: Sequence[str]) -> None:
  """Raises ValueError unless every name in `optim.backbone_modules` is one of `modules`.

  Nothing is checked when `optim.backbone` is "train" (the list is not used then).
  """
  if optim_config.backbone not in BACKBONE_MODES:
    raise ValueError(f"optim.backbone must be one of {BACKBONE_MODES}, got "
                     f"{optim_config.backbone!r}")
  if optim_config.backbone == "train":
    return
  names = tuple(optim_config.backbone_modules)
  unknown = [n for n in names if n not in modules]
  if unknown or not names:
    raise ValueError(
        f"optim.backbone={optim_config.backbone!r}: optim.backbone_modules={names} must name "
        f"top-level modules of the model, and {unknown or 'nothing'} is not one; the model's "
        f"are {sorted(modules)}")


def _base_optimizer(optim_config, learning_rate) -> optax.GradientTransformation:
  """The named optax optimizer; weight decay (masked) is added for every optimizer."""
  c = optim_config
  name = c.name
  if name == "adamw":
    return optax.adamw(learning_rate, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay,
                       mask=weight_decay_mask)
  if name == "adam":
    inner = optax.adam(learning_rate, b1=c.b1, b2=c.b2, eps=c.eps)
  elif name == "sgd":
    inner = optax.sgd(learning_rate, momentum=c.momentum or None, nesterov=c.nesterov)
  elif name == "lamb":
    return optax.lamb(learning_rate, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay,
                      mask=weight_decay_mask)
  elif name == "lion":
    return optax.lion(learning_rate, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay,
                      mask=weight_decay_mask)
  elif name == "rmsprop":
    inner = optax.rmsprop(learning_rate, eps=c.eps, momentum=c.momentum or None,
                          nesterov=c.nesterov)
  else:
    raise ValueError(f"optim.name must be one of {OPTIMIZERS}, got {name!r}")
  # Coupled L2 (added to the gradient before the update) is what SGD users expect.
  decay = optax.add_decayed_weights(c.weight_decay, mask=weight_decay_mask)
  return optax.chain(decay, inner) if c.weight_decay else inner


def create_optimizer(optim_config, num_steps: int, params: Any) -> optax.GradientTransformation:
  """Optimizer (clipping, masked decay, backbone freeze/scale, accumulation) on `create_schedule`.

  Args:
    optim_config: the config's `optim` group.
    num_steps: training micro-steps of the run (each consumes one global batch).
    params: the model parameters; `optim.backbone_modules` names top-level modules of it.
  Returns:
    The gradient transformation (its learning rate follows `create_schedule` per update).
  """
  c = optim_config
  schedule = create_schedule(c, num_steps)
  tx = _base_optimizer(c, schedule)
  check_backbone_modules(c, list(params))
  labels = jax.tree.map(lambda b: "backbone" if b else "rest",
                        backbone_mask(params, c.backbone_modules))
  clip = optax.clip_by_global_norm(c.grad_clip_norm) if c.grad_clip_norm else None
  if c.backbone == "freeze":
    # The frozen modules' gradients are dropped before clipping, so the rest is clipped by the
    # norm of the gradients that are applied.
    rest = tx if clip is None else optax.chain(clip, tx)
    tx = optax.multi_transform({"rest": rest, "backbone": optax.set_to_zero()}, labels)
  else:
    if c.backbone == "scale":
      backbone_tx = _base_optimizer(c, lambda s: c.backbone_lr_factor * schedule(s))
      tx = optax.multi_transform({"rest": tx, "backbone": backbone_tx}, labels)
    if clip is not None:
      tx = optax.chain(clip, tx)
  if c.accumulation_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=c.accumulation_steps)
  elif c.accumulation_steps < 1:
    raise ValueError(f"optim.accumulation_steps must be >= 1, got {c.accumulation_steps}")
  return tx

