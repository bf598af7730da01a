"""Training and evaluation of a segmentation model from a config: state, steps, loop, eval-only.

One jitted `train_step(state, batch, rng)` runs on a 1-axis "data" mesh over all devices (batch
sharded, parameters replicated, state donated); augmentation runs inside it. The loop logs to
TensorBoard and metrics.jsonl, evaluates with a confusion matrix summed over the whole split, and
checkpoints with Orbax (`seg_jax.checkpoint`).

A run survives being killed at any point: every output of a step (its log lines, its evaluation
record and prediction grid) is written before the checkpoint of that step, and a rerun resumes
from the newest intact checkpoint after dropping what was logged past it, so a resumed run logs
each step once and ends with the same scores as an uninterrupted one. A rerun of a run whose
last checkpoint is saved completes whatever is missing (final evaluation, curves.png,
final_metrics.json, confusion matrix).

Eval-only mode scores a checkpoint at the training resolution, or at each image's original
resolution through `seg_jax.inference` (`evaluate_full_resolution`).
"""

from __future__ import annotations

import collections
import functools
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from absl import logging
import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax

from seg_jax import checkpoint as checkpoint_lib
from seg_jax import compilation
from seg_jax import data as data_lib
from seg_jax import errors
from seg_jax import inference
from seg_jax import init_from
from seg_jax import losses
from seg_jax import metrics as metrics_lib
from seg_jax import models
from seg_jax import optim
from seg_jax import preemption
from seg_jax import viz
from seg_jax import workdir as workdir_lib
from seg_jax import writers
from seg_jax.data import augment as augment_lib
from seg_jax.data import palettes
from seg_jax.data import pipeline as pipeline_lib
from seg_jax.errors import NonFiniteLossError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
CLASS_WEIGHTINGS = ("none", "inverse", "median", "given")
SPLITS = ("val", "test", "train")
REPLICA_MODES = ("auto", "vmap", "unroll")
RESOLUTIONS = ("training", "full")
FINAL_METRICS = "final_metrics.json"
CURVES = "curves.png"
# Initialisation runs once, so it is compiled for compile time: at LLVM's default level (3) the
# per-parameter random-number kernels of `model.init` took longer to compile than the train
# step; level 1 compiles them several times faster and gives the same bits (tests/test_train.py).
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


class TrainState(train_state.TrainState):
  """Parameters, optimizer state and step, plus BatchNorm statistics."""

  batch_stats: Any = None


def create_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """1-axis "data" mesh over all (or the given) devices of all processes."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("data",))


def dtype_from_name(name: str) -> Any:
  """JAX dtype for a config dtype string."""
  if name not in DTYPES:
    raise errors.ConfigError(f"dtype must be one of {tuple(DTYPES)}, got {name!r}")
  return DTYPES[name]


def check_setup(config: ml_collections.ConfigDict, dataset: data_lib.Dataset,
                num_devices: int) -> int:
  """Checks the config against the dataset and devices before anything compiles.

  Returns:
    The number of classes.
  Raises:
    ConfigError: unknown model, a classifier without data.labels="majority", num_classes not
      matching the dataset's palette, images smaller than the model's minimum, a batch not
      divisible by the devices, an unknown eval split.
    DataError: an empty train split or an empty split to evaluate.
  """
  name = config.model.name
  if name not in models.available():
    raise errors.ConfigError(f"model.name must be one of {models.available()}, got {name!r}")
  if not models.is_segmentation(name) and config.data.labels != "majority":
    raise errors.ConfigError(
        f"model.name {name!r} is a classifier: it predicts one class per image, so it trains on "
        f"data.labels='majority' (one class per example), not {config.data.labels!r}")
  num_classes = len(dataset.class_names)
  palette_size = len(palettes.palette_colors(dataset.palette))
  if palette_size != num_classes:
    raise errors.ConfigError(f"dataset {config.data.name!r} has {num_classes} class names but "
                             f"{palette_size} palette colours")
  if config.model.num_classes not in (0, num_classes):
    raise errors.ConfigError(
        f"model.num_classes={config.model.num_classes} but dataset {config.data.name!r} has "
        f"{num_classes} classes {tuple(dataset.class_names)} (0 means: take the dataset's)")
  min_size = models.min_input_size(name)
  if min(dataset.image_size) < min_size:
    raise errors.ConfigError(
        f"images are {tuple(dataset.image_size)} but model {name!r} needs at least "
        f"{min_size}x{min_size} (data.image_size / data.patch_size)")
  for field in ("train.global_batch_size", "eval.global_batch_size"):
    group, key = field.split(".")
    batch = config[group][key]
    if batch < 1 or batch % num_devices:
      raise errors.ConfigError(f"{field}={batch} must be a positive multiple of the device "
                               f"count {num_devices}")
  dtype_from_name(config.model.dtype)
  dtype_from_name(config.model.param_dtype)
  for field in ("train.num_steps", "train.log_every", "train.eval_every",
                "train.checkpoint_every", "train.num_replicas"):
    group, key = field.split(".")
    if config[group][key] < 1:
      raise errors.ConfigError(f"{field} must be >= 1, got {config[group][key]}")
  if config.train.replica_mode not in REPLICA_MODES:
    raise errors.ConfigError(f"train.replica_mode must be one of {REPLICA_MODES}, got "
                             f"{config.train.replica_mode!r}")
  if config.train.mode == "eval" and config.train.num_replicas != 1:
    raise errors.ConfigError(
        f"train.mode='eval' evaluates one run folder, but train.num_replicas="
        f"{config.train.num_replicas}: evaluate each replica's folder <workdir>/seed<k> with "
        "train.num_replicas=1 and seed=k")
  split = config.eval.split
  if split not in SPLITS:
    raise errors.ConfigError(f"eval.split must be one of {SPLITS}, got {split!r}")
  if config.eval.resolution not in RESOLUTIONS:
    raise errors.ConfigError(f"eval.resolution must be one of {RESOLUTIONS}, got "
                             f"{config.eval.resolution!r}")
  if config.eval.resolution == "full" and config.train.mode != "eval":
    raise errors.ConfigError("eval.resolution='full' scores a checkpoint in train.mode='eval'; "
                             "training evaluates at the training resolution")
  where = f" (data.root {config.data.root!r})" if config.data.root else ""
  needed = {split: "evaluation"}
  if config.train.mode == "train":
    needed["train"] = "training"
  for part, needed_by in needed.items():
    if len(getattr(dataset, part)) == 0:
      raise errors.DataError(
          f"the {part!r} split of dataset {config.data.name!r}{where} is empty, so {needed_by} "
          f"has nothing to read; give it examples (data.split, data.num_{part} or more files) "
          "or evaluate another split (eval.split)")
  return num_classes


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


def class_pixel_counts(source, num_classes: int) -> np.ndarray:
  """(C,) pixel count per class over a random-access split (ignored pixels not counted)."""
  counts = np.zeros(num_classes, np.int64)
  for i in range(len(source)):
    label = np.asarray(source[i]["label"]).ravel()
    counts += np.bincount(label[label < num_classes], minlength=num_classes)[:num_classes]
  return counts


def class_weights(loss_config, dataset: data_lib.Dataset, num_classes: int) -> np.ndarray | None:
  """Class weights for the loss, or None: given, or from class frequencies of the train split."""
  mode = loss_config.class_weighting
  if mode not in CLASS_WEIGHTINGS:
    raise errors.ConfigError(
        f"loss.class_weighting must be one of {CLASS_WEIGHTINGS}, got {mode!r}")
  if mode == "none":
    return None
  if mode == "given":
    weights = np.asarray(loss_config.class_weights, np.float32)
    if weights.shape != (num_classes,):
      raise errors.ConfigError(f"loss.class_weights has {weights.size} entries, expected one "
                               f"per class ({num_classes})")
    return weights
  weights = losses.class_weights_from_counts(class_pixel_counts(dataset.train, num_classes), mode)
  logging.info("class weights (%s frequency): %s", mode, np.round(weights, 3).tolist())
  return weights


def init_state(config: ml_collections.ConfigDict, model: nn.Module,
               image_size: tuple[int, int], rng: jax.Array) -> TrainState:
  """Fresh train state; call under `jax.jit` (or `jax.eval_shape` for its structure)."""
  dummy = jnp.zeros((1, *image_size, 3), dtype_from_name(config.model.dtype))
  variables = model.init({"params": rng, "dropout": rng}, dummy, train=False)
  params = variables["params"]
  tx = optim.create_optimizer(config.optim, config.train.num_steps, params)
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                           batch_stats=variables.get("batch_stats", {}))


def abstract_state(config: ml_collections.ConfigDict, num_classes: int,
                   image_size: tuple[int, int]) -> TrainState:
  """Shapes of the train state of a run of `config` (what its checkpoints restore into)."""
  model = build_model(config, num_classes)
  return jax.eval_shape(functools.partial(init_state, config, model, tuple(image_size)),
                        jax.random.key(0))


def _prepare_batch(batch, rng, data_config, mean, std, train: bool, dtype):
  """uint8 batch -> normalised images (compute dtype) and int32 labels; augments in training."""
  if train:
    images, labels = augment_lib.augment_batch(
        batch["image"], batch["label"], rng, data_config.augment,
        ignore_index=data_config.ignore_index)
  else:
    images = batch["image"].astype(jnp.float32)
    labels = batch["label"]
  images = augment_lib.normalize(images, mean, std).astype(dtype)
  return images, labels.astype(jnp.int32)


def make_train_step(config, loss_fn, num_classes: int, mean, std) -> Callable:
  """Pure `train_step(state, batch, rng) -> (state, metrics)`; the key is folded with the step."""
  dtype = dtype_from_name(config.model.dtype)
  ignore_index = config.data.ignore_index

  def train_step(state: TrainState, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    aug_rng, dropout_rng = jax.random.split(rng)
    images, labels = _prepare_batch(batch, aug_rng, config.data, mean, std, True, dtype)
    mask = losses.valid_mask(labels, num_classes, ignore_index, batch["valid"])

    def compute_loss(params):
      logits, updates = state.apply_fn(
          {"params": params, "batch_stats": state.batch_stats}, images, train=True,
          rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
      return loss_fn(logits.astype(jnp.float32), labels, mask), updates

    (loss, updates), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads,
                                  batch_stats=updates.get("batch_stats", state.batch_stats))
    return state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

  return train_step


def make_eval_step(config, loss_fn: losses.Loss, num_classes: int, mean, std) -> Callable:
  """Pure `eval_step(state, batch) -> (confusion matrix, loss sums, predictions)`.

  The loss sums are the batch's `loss_fn.sums`: added up over a split and reduced once, they
  give the split's exact loss.
  """
  dtype = dtype_from_name(config.model.dtype)
  ignore_index = config.data.ignore_index

  def eval_step(state: TrainState, batch):
    images, labels = _prepare_batch(batch, None, config.data, mean, std, False, dtype)
    mask = losses.valid_mask(labels, num_classes, ignore_index, batch["valid"])
    logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, images,
                            train=False).astype(jnp.float32)
    preds = jnp.argmax(logits, axis=-1).astype(jnp.uint8)
    cm = metrics_lib.ConfusionMatrix.from_model_output(
        labels=labels, preds=preds, num_classes=num_classes, ignore_index=ignore_index,
        mask=mask)
    return cm, loss_fn.sums(logits, labels, mask), preds

  return eval_step


def _seed_key(seed: int, index: int) -> jax.Array:
  """Key number `index` derived from the config's seed (0: initialisation, 1: train steps)."""
  return jax.random.fold_in(jax.random.key(seed), index)


def over_replicas(fn: Callable, mode: str, in_axes: tuple[int | None, ...]) -> Callable:
  """`fn` applied to each slice of a leading replica axis of the arguments whose `in_axes` is 0
  (the others are shared), results stacked on that axis.

  mode "vmap": one batched computation (`jax.vmap`); "unroll": one copy of `fn` per replica in
  the same program, each computing exactly what `fn` computes for that replica alone. (Not
  `jax.lax.map`: XLA's CPU backend runs convolutions inside a loop body tens of times slower.)
  """
  if mode == "vmap":
    return jax.vmap(fn, in_axes=in_axes)

  def unrolled(*args):
    size = next(jax.tree.leaves(a)[0].shape[0] for a, axis in zip(args, in_axes) if axis == 0)
    return stack_trees([fn(*(jax.tree.map(lambda x: x[k], a) if axis == 0 else a
                             for a, axis in zip(args, in_axes))) for k in range(size)])

  return unrolled


def stack_trees(trees: list[Any]) -> Any:
  """The leaves of equally shaped pytrees stacked on a new leading axis, in the first's structure
  (static fields, such as a TrainState's optimizer, are taken from the first)."""
  leaves = [jax.tree.leaves(tree) for tree in trees]
  return jax.tree.unflatten(jax.tree.structure(trees[0]),
                            [jnp.stack(xs) for xs in zip(*leaves)])


def make_replicas_train_step(train_step: Callable, batch_sharding: NamedSharding,
                             mode: str) -> Callable:
  """`train_step` over a leading replica axis of the state, the keys and the metrics.

  The returned step takes one batch per replica (a tuple) and stacks them inside the jitted
  program; every replica has its own parameters, BatchNorm statistics, optimizer state, key and
  metrics, so replica k computes what `train_step` computes for it alone (`over_replicas`).
  """

  def replicas_step(state: TrainState, batches, rngs):
    batch = jax.tree.map(lambda *xs: jnp.stack(xs), *batches)
    batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    return over_replicas(train_step, mode, (0, 0, 0))(state, batch, rngs)

  return replicas_step


class Trainer:
  """Holds what a run needs: mesh, dataset, model, jitted steps and the initial state."""

  def __init__(self, config: ml_collections.ConfigDict,
               dataset: data_lib.Dataset | None = None,
               devices: list[jax.Device] | None = None):
    """Builds everything up to (not including) compilation; guards run first.

    `dataset` defaults to `get_dataset(config.data)`; `devices` (default: all) form the mesh.
    Raises:
      DataError: the dataset cannot be read or lacks a split the run needs.
      ConfigError: a config field that cannot work with this model, data or devices.
    """
    self.config = config
    compilation.use_persistent_cache(config.train.compilation_cache_dir)
    self.mesh = create_mesh(devices)
    self.replicated = NamedSharding(self.mesh, P())
    self.data_sharding = NamedSharding(self.mesh, P("data"))
    if dataset is None:
      try:
        dataset = data_lib.get_dataset(config.data)
      except (ValueError, OSError) as e:
        raise errors.DataError(str(e)) from e
    self.dataset = dataset
    for path, reason in self.dataset.skipped:
      logging.warning("skipped %s: %s", path, reason)
    try:
      self._build(config)
    except errors.RunError:
      raise
    except (ValueError, TypeError) as e:  # raised by optim, losses or a model from the config
      raise errors.ConfigError(str(e)) from e

  def _build(self, config: ml_collections.ConfigDict) -> None:
    self.num_classes = check_setup(config, self.dataset, self.mesh.size)
    self.model = build_model(config, self.num_classes)
    self.schedule = optim.create_schedule(config.optim, config.train.num_steps)
    warmup = optim.warmup_updates(config.optim, config.train.num_steps)
    if warmup != config.optim.warmup_steps:
      logging.warning("optim.warmup_steps=%d is not shorter than the run (%d updates): warming "
                      "up over %d updates instead", config.optim.warmup_steps,
                      optim.num_updates(config.optim, config.train.num_steps), warmup)
    mean = jnp.asarray(self.dataset.mean, jnp.float32)
    std = jnp.asarray(self.dataset.std, jnp.float32)
    self.loss_fn = losses.make_loss(config.loss,
                                    class_weights(config.loss, self.dataset, self.num_classes))
    init_fn = functools.partial(init_state, config, self.model, tuple(self.dataset.image_size))
    train_step = make_train_step(config, self.loss_fn, self.num_classes, mean, std)
    eval_step = make_eval_step(config, self.loss_fn, self.num_classes, mean, std)
    self.seeds = tuple(config.seed + k for k in range(config.train.num_replicas))
    self.batched = len(self.seeds) > 1
    # Keys are made inside jitted functions, so every process holds the same replicated value.
    if self.batched:  # a leading replica axis on the state, the keys and the metrics
      mode = config.train.replica_mode
      if mode == "auto":
        mode = "unroll" if self.mesh.devices.flat[0].platform == "cpu" else "vmap"
      keys = lambda index: jnp.stack([_seed_key(seed, index) for seed in self.seeds])
      init_fn = over_replicas(init_fn, mode, (0,))
      train_step = make_replicas_train_step(
          train_step, NamedSharding(self.mesh, P(None, "data")), mode)
      eval_step = over_replicas(eval_step, mode, (0, None))
      preds_sharding = NamedSharding(self.mesh, P(None, "data"))
    else:
      keys = lambda index: _seed_key(config.seed, index)
      preds_sharding = self.data_sharding

    def init():
      return init_fn(keys(0))

    self._init = jax.jit(init, out_shardings=self.replicated,
                         compiler_options=INIT_COMPILER_OPTIONS)
    self._step_key = jax.jit(lambda: keys(1), out_shardings=self.replicated)
    # The state of one run, as its checkpoints hold it.
    self.abstract_state = jax.jit(
        lambda: init_state(config, self.model, tuple(self.dataset.image_size),
                           _seed_key(config.seed, 0)),
        out_shardings=self.replicated).eval_shape()
    self._take = jax.jit(lambda state, k: jax.tree.map(lambda x: x[k], state),
                         out_shardings=self.replicated)
    self._stack = jax.jit(stack_trees, out_shardings=self.replicated)
    self.train_step = jax.jit(
        train_step, in_shardings=(self.replicated, self.data_sharding, self.replicated),
        out_shardings=(self.replicated, self.replicated), donate_argnums=0)
    self.eval_step = jax.jit(
        eval_step, in_shardings=(self.replicated, self.data_sharding),
        out_shardings=(self.replicated, self.replicated, preds_sharding))

  def initial_state(self) -> TrainState:
    """Freshly initialised state (parameters from each replica's seed)."""
    return self._init()

  def step_key(self) -> jax.Array:
    """The key (one per replica) every train step folds its step number into."""
    return self._step_key()

  def train_pipeline(self, seed: int | None = None) -> Iterator[dict[str, jax.Array]]:
    """Endless training batches shuffled by `seed` (default: the config's), sharded.

    Their position is saved with checkpoints.
    """
    return pipeline_lib.InputPipeline(
        self.dataset.train, global_batch_size=self.config.train.global_batch_size,
        sharding=self.data_sharding, seed=self.config.seed if seed is None else seed,
        shuffle=True, num_epochs=None, drop_remainder=True,
        keep_on_device=self.config.data.keep_on_device)

  def next_batch(self, pipelines: list[Iterator[dict[str, jax.Array]]]) -> Any:
    """The `train_step` input from each replica's pipeline: a batch, or a tuple of them."""
    batches = tuple(next(p) for p in pipelines)
    return batches if self.batched else batches[0]

  def replica(self, state: TrainState, k: int) -> TrainState:
    """The state of replica k alone (the state itself when there is one run)."""
    return self._take(state, np.int32(k)) if self.batched else state

  def stack(self, states: list[TrainState]) -> TrainState:
    """The state of all replicas from each one's own (inverse of `replica`)."""
    return self._stack(states) if self.batched else states[0]

  def evaluate(self, state: TrainState, split: str | None = None
               ) -> tuple[dict[str, Any], np.ndarray, list[tuple[np.ndarray, ...]]]:
    """Scores over a whole split, its confusion matrix and (image, label, prediction) samples.

    The samples are the first `eval.num_images` valid examples of the split (the same ones at
    every evaluation).

    The loss is the configured loss of the whole split at once (`losses.Loss.reduce` of the
    summed batch sums), not a mean of batch losses. One run only; `evaluate_replicas` scores
    each replica.
    """
    if self.batched:
      raise ValueError(f"evaluate() scores one run, this trainer has {len(self.seeds)} "
                       "replicas: use evaluate_replicas()")
    return self.evaluate_replicas(state, split)[0]

  def evaluate_replicas(self, state: TrainState, split: str | None = None
                        ) -> list[tuple[dict[str, Any], np.ndarray, list[np.ndarray]]]:
    """`evaluate` of every replica, in seed order, from one pass over the split."""
    split = self.config.eval.split if split is None else split
    source = getattr(self.dataset, split)
    batches = pipeline_lib.InputPipeline(
        source, global_batch_size=self.config.eval.global_batch_size,
        sharding=self.data_sharding, seed=self.config.seed, shuffle=False, num_epochs=1,
        drop_remainder=False)
    num = len(self.seeds)
    cms, loss_sums, samples = [], [], [[] for _ in range(num)]
    for batch in batches:  # per-batch results stay on the device until the split is done
      cm, sums, preds = self.eval_step(state, batch)
      cms.append(cm)
      loss_sums.append(sums)
      wanted = self.config.eval.num_images - len(samples[0])
      if wanted > 0 and jax.process_index() == 0:
        preds = _local_rows(preds, axis=1 if self.batched else 0).reshape(
            num, -1, *preds.shape[-2:])
        for k in range(num):
          samples[k].extend(self._samples(batch, preds[k], wanted))
    # One leading replica axis on every result, also for one run.
    cms, loss_sums = jax.tree.map(lambda x: np.reshape(x, (num, *np.shape(x)[self.batched:])),
                                  jax.device_get((cms, loss_sums)))
    out = []
    for k in range(num):
      result, matrix = self.scores(
          [metrics_lib.ConfusionMatrix(matrix=cm.matrix[k]) for cm in cms],
          [jax.tree.map(lambda x: x[k], sums) for sums in loss_sums])
      out.append((result, matrix, samples[k]))
    return out

  def scores(self, cms: list[Any], loss_sums: list[Any]) -> tuple[dict[str, Any], np.ndarray]:
    """Scores and confusion matrix of a split from its per-batch (or per-image) results.

    `cms` are `ConfusionMatrix` metrics and `loss_sums` `loss_fn.sums` outputs of one run:
    summed over the split and reduced once, they give the loss of the whole split.
    """
    cms, loss_sums = jax.device_get((cms, loss_sums))
    total = functools.reduce(metrics_lib.ConfusionMatrix.merge, cms,
                             metrics_lib.ConfusionMatrix.empty(self.num_classes))
    result = total.compute()
    summed = jax.tree.map(lambda *xs: np.sum(np.asarray(xs, np.float64), axis=0), *loss_sums)
    result["loss"] = float(self.loss_fn.reduce(summed))
    return result, total.matrix

  def _samples(self, batch, preds: np.ndarray, limit: int) -> list[tuple[np.ndarray, ...]]:
    """(image, label, prediction) of up to `limit` valid examples of this process's shard of a
    batch; `preds` holds this process's rows of the batch's predictions."""
    images, labels, valid = (_local_rows(x) for x in (
        batch["image"], batch["label"], batch["valid"]))
    return [(images[i], labels[i], preds[i]) for i in np.flatnonzero(valid)[:limit]]


def _local_rows(x: jax.Array, axis: int = 0) -> np.ndarray:
  """The rows (along the sharded `axis`) of an array that live on this process, in NumPy."""
  return np.concatenate([np.asarray(s.data) for s in x.addressable_shards], axis=axis)


def _record(step: int, split: str, result: dict[str, Any], class_names) -> dict[str, Any]:
  """metrics.jsonl record: scalar scores plus per-class scores keyed by class name."""
  record = {"step": step, "split": split}
  for key, value in result.items():
    if np.ndim(value) == 1:
      record[key] = dict(zip(class_names, np.asarray(value).tolist()))
    else:
      record[key] = float(value)
  return record


def _format_duration(seconds: float) -> str:
  """'1h02m03s' / '2m03s' / '4s'."""
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class _StepMetrics:
  """Per-step train metrics still on the device, checked for NaN/Inf a fixed lag behind.

  Each step's metrics start an asynchronous copy to the host, and after step N the metrics of
  step N - `lag` are checked: the host waits only for a step that finished while later ones
  keep the device busy, so the check costs no device time. A non-finite loss (of any replica)
  stops the run `lag` steps after it happened (on every process at the same step), naming that
  step. Checked metrics hold one value per replica.
  """

  def __init__(self, describe_stop: Callable[[int, int, dict[str, np.ndarray]], str],
               lag: int = 2):
    self._describe_stop = describe_stop
    self._lag = lag
    self._unchecked: collections.deque = collections.deque()
    self._checked: list[tuple[int, dict[str, np.ndarray]]] = []
    self._step = 0

  def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
    """Queues the metrics of `step` and checks those of step - lag."""
    for value in metrics.values():
      value.copy_to_host_async()
    self._unchecked.append((step, metrics))
    self._step = step
    while len(self._unchecked) > self._lag:
      self._check_oldest()

  def _check_oldest(self) -> None:
    step, metrics = self._unchecked.popleft()
    values = {k: np.asarray(v, np.float64).reshape(-1) for k, v in metrics.items()}
    if not all(np.isfinite(v).all() for v in values.values()):
      raise NonFiniteLossError(self._describe_stop(self._step, step, values))
    self._checked.append((step, values))

  def drain(self) -> list[tuple[int, dict[str, np.ndarray]]]:
    """Checks every queued step; returns (step, {name: value per replica}) since the last drain."""
    while self._unchecked:
      self._check_oldest()
    out, self._checked = self._checked, []
    return out


def _non_finite_message(config: ml_collections.ConfigDict, workdirs: list[str],
                        last_checkpoint: Callable[[], int | None]
                        ) -> Callable[[int, int, dict[str, np.ndarray]], str]:
  """Builds the message of a NaN/Inf stop: where it happened, what was kept, what to change.

  `workdirs` are the run folders of the replicas (one for one run); the message names the first
  replica whose values are not finite.
  """
  o = config.optim

  def describe(now: int, step: int, values: dict[str, np.ndarray]) -> str:
    bad = next(k for k in range(len(workdirs))
               if not all(np.isfinite(v[k]) for v in values.values()))
    saved = last_checkpoint()
    kept = (f"the last checkpoint is step {saved} in {workdirs[bad]}" if saved is not None
            else "no checkpoint was saved")
    replica = (f" in replica seed {config.seed + bad} ({workdirs[bad]})" if len(workdirs) > 1
               else "")
    if o.grad_clip_norm:
      advice = (f"lower optim.learning_rate (now {o.learning_rate:g}) or optim.grad_clip_norm "
                f"(now {o.grad_clip_norm:g}), lengthen optim.warmup_steps (now "
                f"{o.warmup_steps}), or check the data")
    else:
      advice = (f"lower optim.learning_rate (now {o.learning_rate:g}) or enable "
                "optim.grad_clip_norm (e.g. 1.0)")
    return (f"training stopped at step {now}: loss {values['loss'][bad]} / gradient norm "
            f"{values['grad_norm'][bad]} at step {step}{replica} is not finite; {kept}. "
            f"To fix: {advice}")

  return describe


class _RunLog:
  """What a run writes as it goes: console lines, TensorBoard, metrics.jsonl.

  `label` starts its console lines (which replica they belong to; "" for one run).
  """

  def __init__(self, trainer: Trainer, workdir: str, label: str = ""):
    self.trainer = trainer
    self.config = trainer.config
    self.workdir = workdir
    self.label = label
    self.writer = writers.MetricWriter(workdir)
    self._time, self._step = time.time(), 0

  def restart_clock(self, step: int) -> None:
    """Images/s and ETA count from here (after a resume or an evaluation)."""
    self._time, self._step = time.time(), step

  def train(self, step: int, logged: list[tuple[int, dict[str, float]]]) -> None:
    """Console line and TensorBoard scalars of the steps since the last train log."""
    c = self.config.train
    rate = (step - self._step) / max(time.time() - self._time, 1e-9)
    loss = float(np.mean([m["loss"] for _, m in logged]))
    lr = float(self.trainer.schedule(optim.num_updates(self.config.optim, step) - 1))
    self.writer.scalars(step, {"train/loss": loss, "train/lr": lr,
                               "train/grad_norm": logged[-1][1]["grad_norm"],
                               "train/images_per_second": rate * c.global_batch_size})
    self.writer.flush()  # TensorBoard shows the run as it goes
    logging.info("%sstep %d/%d  loss %.4f  lr %.2e  %.1f img/s  ETA %s", self.label, step,
                 c.num_steps, loss, lr, rate * c.global_batch_size,
                 _format_duration((c.num_steps - step) / max(rate, 1e-9)))
    self.restart_clock(step)

  def evaluation(self, step: int, result: dict[str, Any],
                 samples: list[tuple[np.ndarray, ...]], seconds: float) -> None:
    """metrics.jsonl record (with the training time so far), TensorBoard scores and panels, the
    prediction grid, and a console line."""
    split = self.config.eval.split
    palette = self.trainer.dataset.palette
    names = palette.names
    self.writer.jsonl({**_record(step, split, result, names), "train_seconds": seconds})
    self.writer.scalars(step, {f"{split}/{k}": v for k, v in result.items() if np.ndim(v) == 0})
    self.writer.scalars(step, {f"{split}/iou/{n}": v for n, v in zip(names, result["iou"])})
    self.writer.images(step, {f"{split}/prediction_{i}": viz.prediction_panel(*s, palette)
                              for i, s in enumerate(samples)})
    self.writer.flush()
    self.save_prediction_grid(step, samples)
    logging.info("%seval %s at step %d: mIoU %.4f  pixel acc %.4f  loss %.4f", self.label,
                 split, step, result["miou"], result["pixel_accuracy"], result["loss"])

  def save_prediction_grid(self, step: int, samples: list[tuple[np.ndarray, ...]]) -> None:
    """predictions/step_<step>.png: image | truth | prediction | errors rows, class legend.

    Written atomically and before the step's checkpoint, like the other logs: a rerun that
    replays the step writes the same picture again.
    """
    if not samples or jax.process_index() != 0:
      return
    path = writers.prediction_grid_path(self.workdir, step)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    writers.write_png(path, viz.prediction_grid(*zip(*samples), self.trainer.dataset.palette))

  def has_evaluation(self, step: int) -> bool:
    """Whether metrics.jsonl already holds the evaluation of `step`."""
    return any(r["step"] == step for r in writers.read_metrics(self.workdir))

  def close(self) -> None:
    self.writer.close()


def _run_logs(trainer: Trainer, workdirs: list[str]) -> list[_RunLog]:
  """One `_RunLog` per replica; console lines name the replica's seed when there are several."""
  return [_RunLog(trainer, workdir, f"seed {seed}: " if trainer.batched else "")
          for seed, workdir in zip(trainer.seeds, workdirs)]


def _write_result(directory: str, name: str, record: dict[str, Any], cm: np.ndarray,
                  trainer: Trainer, png: str) -> None:
  """Writes `record` as <directory>/<name> and the confusion matrix as <directory>/<png>."""
  writers.write_json(os.path.join(directory, name), record)
  resolution = f", {record['resolution']} resolution" if "resolution" in record else ""
  viz.save_confusion_matrix(
      cm, trainer.dataset.class_names, os.path.join(directory, png),
      title=f"{trainer.config.model.name} {record['split']} step {record['step']}{resolution}")


def _finish(trainer: Trainer, state: TrainState, step: int, workdirs: list[str],
            evaluations: list[tuple[dict[str, Any], np.ndarray]] | None,
            logs: list[_RunLog], seconds: list[float]) -> list[dict[str, Any]]:
  """Writes curves.png, confusion_matrix.png and final_metrics.json of each replica's last step.

  `evaluations` are the last step's (scores, confusion matrix) of each replica if this process
  just computed them. Otherwise (a rerun of runs killed after their last checkpoint) the state
  is evaluated again and its record (with training time `seconds`) is added to metrics.jsonl
  where the killed run did not write it. A replica that already wrote final_metrics.json (a
  replica resumed behind its own end) keeps it.
  """
  if evaluations is None:
    evaluated = trainer.evaluate_replicas(state)
  finals = []
  for k, (workdir, log) in enumerate(zip(workdirs, logs)):
    done = _finished_record(workdir, step)
    if done is not None:
      finals.append(done)
      continue
    if evaluations is None:
      result, cm, samples = evaluated[k]
      if not log.has_evaluation(step):
        log.evaluation(step, result, samples, seconds[k])
    else:
      result, cm = evaluations[k]
    final = _record(step, trainer.config.eval.split, result, trainer.dataset.class_names)
    if jax.process_index() == 0:
      write_curves(workdir, trainer.config.model.name)  # before the file that marks the end
      _write_result(workdir, FINAL_METRICS, final, cm, trainer, "confusion_matrix.png")
    finals.append(final)
  return finals


def write_curves(workdir: str, title: str) -> None:
  """curves.png: train loss (TensorBoard events), val loss and mIoU (metrics.jsonl) vs step."""
  records = [{"step": step, "split": "train", "loss": loss}
             for step, loss in writers.read_scalars(workdir, "train/loss")]
  viz.save_run_curves(records + writers.read_metrics(workdir), os.path.join(workdir, CURVES),
                      title=title)


def _finished_record(workdir: str, step: int) -> dict[str, Any] | None:
  """final_metrics.json of a run finished at `step`, or None if it is missing or stale."""
  try:
    with open(os.path.join(workdir, FINAL_METRICS)) as f:
      final = json.load(f)
  except (OSError, ValueError):
    return None
  return final if final.get("step") == step else None


def _restore_together(ckpts: list[checkpoint_lib.Checkpointer], abstract_state: Any
                      ) -> list[checkpoint_lib.Restored | None]:
  """The newest checkpoint of each replica at one common step (None each: start afresh).

  A run killed between the saves of its replicas leaves some a checkpoint ahead; those resume
  from the common step too and keep the checkpoints they already hold.
  Raises:
    WorkdirError: a replica holds no intact checkpoint at the common step.
  """
  restored = [ckpt.restore_latest(abstract_state) for ckpt in ckpts]
  steps = [0 if r is None else r.step for r in restored]
  common = min(steps)
  for k, ckpt in enumerate(ckpts):
    if steps[k] == common:
      continue
    restored[k] = ckpt.restore_latest(abstract_state, at_most=common) if common else None
    if common and (restored[k] is None or restored[k].step != common):
      at = ", ".join(f"step {s} in {c.workdir}" for s, c in zip(steps, ckpts))
      raise errors.WorkdirError(
          f"the replicas to train together have no common checkpoint ({at}); train each one on "
          "its own: --workdir=<its folder> --config.seed=<its seed> "
          "--config.train.num_replicas=1")
    logging.warning("%s resumes from step %d with the other replicas (it holds step %d)",
                    ckpt.workdir, common, steps[k])
  return restored


def _result(finals: list[dict[str, Any]]) -> dict[str, Any]:
  """What `train_and_evaluate` returns for the final records of its replicas."""
  return finals[0] if len(finals) == 1 else {"replicas": finals}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       dataset: data_lib.Dataset | None = None) -> dict[str, Any]:
  """Trains (resuming from `workdir` if it holds a checkpoint) and evaluates; returns final scores.

  Writes TensorBoard events, metrics.jsonl, config.json, dataset.json, checkpoints/,
  predictions/step_<N>.png, curves.png, confusion_matrix.png and final_metrics.json into
  `workdir`. With `train.num_replicas` = S > 1 it trains S replicas in one program, replica k
  into `<workdir>/seed<seed + k>` with the files and config that seed trained alone would write
  (`workdir.replica_runs`), and returns {"replicas": [final scores of each]}. On a preemption
  notice it saves a checkpoint and returns
  {"preempted": True, "step": step}.
  Raises:
    RunError: the config, data or workdir cannot give this run (before anything is compiled
      or written), or the loss became NaN/Inf.
  """
  runs = workdir_lib.replica_runs(config, workdir)
  for run_config, run_dir in runs:
    workdir_lib.check_config(run_config, run_dir)
  workdirs = [run_dir for _, run_dir in runs]
  trainer = Trainer(config, dataset)
  c = config.train
  ckpts = [checkpoint_lib.Checkpointer(run_dir, c.keep_checkpoints) for run_dir in workdirs]
  try:
    restored = _restore_together(ckpts, trainer.abstract_state)
    step = 0 if restored[0] is None else restored[0].step
    if step > c.num_steps:
      raise errors.WorkdirError(
          f"{workdir} holds a run trained to step {step}, past train.num_steps={c.num_steps}; "
          f"pass --config.train.num_steps={step} or more, or use a new --workdir")
    if step:
      logging.info("resumed from step %d in %s", step, workdir)
    done = [_finished_record(run_dir, step) if step == c.num_steps else None
            for run_dir in workdirs]
    if all(final is not None for final in done):
      logging.info("%s already holds a finished run of %d steps", workdir, step)
      return _result(done)
    if jax.process_index() == 0:
      for run_dir in workdirs:
        writers.discard_after(run_dir, step)
    if step < c.num_steps:
      initial = None if restored[0] is not None else _initial_weights(trainer)
      if jax.process_index() == 0:
        for run_config, run_dir in runs:
          workdir_lib.save_config(run_config, run_dir)
          inference.save_data_info(run_dir, trainer.dataset)
      return _train(trainer, ckpts, restored, workdirs, initial)
    logs = _run_logs(trainer, workdirs)  # killed after its last checkpoint: complete the outputs
    try:
      state = trainer.stack([r.state for r in restored])
      return _result(_finish(trainer, state, step, workdirs, None, logs,
                             [r.seconds for r in restored]))
    finally:
      for log in logs:
        log.close()
  finally:
    for ckpt in ckpts:
      ckpt.close()


def _initial_weights(trainer: Trainer) -> init_from.Initial | None:
  """The variables `model.init_from` gives a fresh run (None: all from the seed), checked
  against the model and logged; a resumed run restores its own checkpoint instead."""
  initial = init_from.load(trainer.config.model, trainer.model, trainer.abstract_state,
                           abstract_state)
  if initial is not None:
    logging.info("%s", init_from.describe(initial))
  return initial


def _train(trainer: Trainer, ckpts: list[checkpoint_lib.Checkpointer],
           restored: list[checkpoint_lib.Restored | None], workdirs: list[str],
           initial: init_from.Initial | None = None) -> dict[str, Any]:
  """The training loop of every replica from `restored` (or a fresh state, with `initial`'s
  variables) to `train.num_steps`.

  Training time is counted per replica as its share of this program's wall time (1/S of it for
  S replicas), on top of the time saved with the restored checkpoint.
  """
  config = trainer.config
  c = config.train
  pipelines = [trainer.train_pipeline(seed) for seed in trainer.seeds]
  if restored[0] is None:
    state, step, seconds = trainer.initial_state(), 0, [0.0] * len(ckpts)
    if initial is not None:
      state = trainer.stack([init_from.apply(trainer.replica(state, k), initial)
                             for k in range(len(trainer.seeds))])
    logging.info("model %s: %d parameters", config.model.name,
                 models.count_params({"params": trainer.abstract_state.params}))
  else:
    state, step = trainer.stack([r.state for r in restored]), restored[0].step
    seconds = [r.seconds for r in restored]
    for pipeline, r in zip(pipelines, restored):
      pipeline.set_state(r.pipeline)
  saved = [step] if restored[0] is not None else []
  pending = _StepMetrics(_non_finite_message(config, workdirs,
                                             lambda: saved[-1] if saved else None))
  step_key = trainer.step_key()
  logs = _run_logs(trainer, workdirs)
  for log in logs:
    log.restart_clock(step)
  start, elapsed = time.time(), seconds
  evaluations = None
  try:
    with preemption.PreemptionWatch() as preempt:
      while step < c.num_steps:
        state, step_metrics = trainer.train_step(state, trainer.next_batch(pipelines),
                                                 step_key)
        step += 1
        pending.add(step, step_metrics)
        last = step == c.num_steps
        eval_now = step % c.eval_every == 0 or last
        preempted = preempt.reached(step)
        save_now = step % c.checkpoint_every == 0 or eval_now or preempted
        if step % c.log_every == 0 or last:
          logged = pending.drain()
          for k, log in enumerate(logs):
            log.train(step, [(s, {name: v[k] for name, v in m.items()}) for s, m in logged])
        elif save_now:
          pending.drain()  # nothing non-finite may be saved
        if eval_now:
          evaluated = trainer.evaluate_replicas(state)
          evaluations = [(result, cm) for result, cm, _ in evaluated]
        if eval_now or save_now:
          share = (time.time() - start) / len(ckpts)
          elapsed = [s + share for s in seconds]
        if eval_now:
          for log, (result, _, samples), t in zip(logs, evaluated, elapsed):
            log.evaluation(step, result, samples, t)
        if save_now:
          for log in logs:
            log.writer.flush()  # everything logged up to a checkpoint is on disk before it
          for k, (ckpt, pipeline) in enumerate(zip(ckpts, pipelines)):
            ckpt.save(step, trainer.replica(state, k), pipeline.get_state(),
                      miou=evaluations[k][0]["miou"] if eval_now else None,
                      seconds=elapsed[k])
          saved.append(step)
          for log in logs:
            log.restart_clock(step)  # img/s and ETA leave evaluations and saves out
        if preempted and not last:
          for ckpt in ckpts:
            ckpt.wait()
          logging.warning("preempted: checkpoint saved at step %d in %s", step,
                          ", ".join(workdirs))
          return {"preempted": True, "step": step}
    for ckpt in ckpts:
      ckpt.wait()  # final outputs only once the last checkpoint is committed
    return _result(_finish(trainer, state, step, workdirs, evaluations, logs, elapsed))
  finally:
    for log in logs:
      log.close()


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        dataset: data_lib.Dataset | None = None) -> dict[str, Any]:
  """Evaluates the "best" or "latest" checkpoint in `workdir` on `config.eval.split`.

  At `eval.resolution="training"` the split is scored as training sees it; at "full" each of
  its images is predicted at its original size (`evaluate_full_resolution`).
  Reads the workdir only (it may be read-only): writes eval_<name>.json, eval_<name>_table.txt
  and confusion_matrix_<name>.png into `config.eval.output_dir` ("" = the workdir), where
  <name> is the split, followed by "_full_<eval.predict.mode>" at full resolution, and logs
  the per-class table.
  """
  if not workdir_lib.check_config(config, workdir):
    logging.warning("%s holds no config.json; evaluating with the given config", workdir)
  trainer = Trainer(config, dataset)
  split = config.eval.split
  full = config.eval.resolution == "full"
  if full:  # options and files are checked before anything is restored or compiled
    options = full_resolution_options(trainer)
    try:
      examples = data_lib.full_resolution_examples(config.data, split)
    except (ValueError, OSError) as e:
      raise errors.DataError(str(e)) from e
  output_dir = config.eval.output_dir or workdir
  ckpt = checkpoint_lib.Checkpointer(workdir, read_only=True)
  try:
    state, step = ckpt.restore_state(trainer.abstract_state, config.eval.checkpoint)
  finally:
    ckpt.close()
  if full:
    result, cm = evaluate_full_resolution(trainer, state, examples, options)
    name = f"{split}_full_{options['mode']}"
  else:
    result, cm, _ = trainer.evaluate(state, split)
    name = split
  record = _record(step, split, result, trainer.dataset.class_names)
  record["checkpoint"] = config.eval.checkpoint
  record["resolution"] = config.eval.resolution
  if full:
    record["predict"] = options
  else:
    record["image_size"] = trainer.dataset.image_size
  table = metrics_lib.format_table(result, trainer.dataset.class_names)
  logging.info("%s checkpoint (step %d) on %s at %s resolution:\n%s", config.eval.checkpoint,
               step, split, config.eval.resolution, table)
  if jax.process_index() == 0:
    os.makedirs(output_dir, exist_ok=True)
    _write_result(output_dir, f"eval_{name}.json", record, cm, trainer,
                  f"confusion_matrix_{name}.png")
    with open(os.path.join(output_dir, f"eval_{name}_table.txt"), "w") as f:
      f.write(table + "\n")
  return record


def full_resolution_options(trainer: Trainer) -> dict[str, Any]:
  """The `inference.predict` options of `eval.predict` (window () = the training size).

  Raises ConfigError naming the field out of range.
  """
  options = trainer.config.eval.predict.to_dict()
  options["window"] = tuple(options["window"]) or tuple(trainer.dataset.image_size)
  options["scales"] = tuple(options["scales"])
  try:
    inference.check_options(**options,
                            min_size=models.min_input_size(trainer.config.model.name))
  except ValueError as e:
    raise errors.ConfigError(f"eval.predict of {trainer.config.model.name!r}: {e}") from e
  return options


def evaluate_full_resolution(trainer: Trainer, state: TrainState, examples,
                             options: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
  """Scores and confusion matrix of full-resolution examples, each predicted at its own size.

  Every image of `examples` ({image, label, name}, from `data.full_resolution_examples`) is
  predicted by `inference.predict` with `options` and compared with its label at the label's
  own size. The loss is the configured loss of the predicted probabilities (their logarithms
  in place of logits).
  """
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  d, n = trainer.dataset, trainer.num_classes
  ignore_index = trainer.config.data.ignore_index
  cms, loss_sums = [], []
  for example in examples:
    start = time.time()
    probs = inference.predict(trainer.model, variables, example["image"], mean=d.mean, std=d.std,
                              dtype=dtype_from_name(trainer.config.model.dtype), **options)
    labels = np.asarray(example["label"], np.int32)[None]
    mask = losses.valid_mask(labels, n, ignore_index)
    cms.append(metrics_lib.ConfusionMatrix.from_model_output(
        labels=labels, preds=np.argmax(probs, axis=-1)[None], num_classes=n,
        ignore_index=ignore_index, mask=mask))
    log_probs = np.log(np.maximum(probs, np.finfo(np.float32).tiny))[None]
    loss_sums.append(trainer.loss_fn.sums(log_probs, labels, mask))
    logging.info("%s: %dx%d predicted and scored in %.1fs", example["name"],
                 labels.shape[2], labels.shape[1], time.time() - start)
  return trainer.scores(cms, loss_sums)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Dispatches on `config.train.mode`: "train" or "eval"."""
  if config.train.mode == "train":
    return train_and_evaluate(config, workdir)
  if config.train.mode == "eval":
    return evaluate_checkpoint(config, workdir)
  raise errors.ConfigError(f"train.mode must be 'train' or 'eval', got {config.train.mode!r}")
