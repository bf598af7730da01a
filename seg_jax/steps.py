"""The pure train and eval steps, and the `Trainer` that jits them on a device mesh.

One jitted `train_step(state, batch, rng)` runs on a 1-axis "data" mesh over all devices (batch
sharded, parameters replicated, state donated); augmentation runs inside it. `eval_step` gives a
batch's confusion matrix, loss sums and predictions, and `Trainer.evaluate` sums them over a
whole split, so a split's scores come from one confusion matrix, never a mean of batch scores.
Several seeds trained in one program are a layer over this (`seg_jax.replicas`).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax

from seg_jax import checks
from seg_jax import data as data_lib
from seg_jax import errors
from seg_jax import losses
from seg_jax import metrics as metrics_lib
from seg_jax import optim
from seg_jax import state as state_lib
from seg_jax.data import augment as augment_lib
from seg_jax.data import pipeline as pipeline_lib
from seg_jax.state import TrainState

CLASS_WEIGHTINGS = ("none", "inverse", "median", "given")
# Initialisation runs once, so it is compiled for compile time: at LLVM's default level (3) the
# per-parameter random-number kernels of `model.init` took longer to compile than the train
# step; level 1 compiles them several times faster and gives the same bits (tests/test_train.py).
INIT_OPTIMIZATION_LEVEL = 1


def init_compiler_options() -> dict[str, int]:
  """XLA options of the initialisation's compile: `INIT_OPTIMIZATION_LEVEL`, or the level of
  $XLA_FLAGS where that is lower (a program's own options override the flags)."""
  levels = re.findall(r"--xla_backend_optimization_level=(\d+)", os.environ.get("XLA_FLAGS", ""))
  return {"xla_backend_optimization_level": min([INIT_OPTIMIZATION_LEVEL, *map(int, levels)])}


def step_compiler_options(config: ml_collections.ConfigDict) -> dict[str, str]:
  """XLA options of the train and eval steps' compiles: YNNPACK fusions off on the CPU unless
  `train.xla_cpu_ynnpack` (or $XLA_FLAGS naming them) says otherwise."""
  if (config.train.xla_cpu_ynnpack or jax.devices()[0].platform != "cpu"
      or "--xla_cpu_experimental_ynn_fusion_type" in os.environ.get("XLA_FLAGS", "")):
    return {}
  return {"xla_cpu_experimental_ynn_fusion_type": ""}


class Evaluation(NamedTuple):
  """Scores of a split, its confusion matrix and (image, label, prediction) samples."""

  scores: dict[str, Any]
  matrix: np.ndarray
  samples: list[tuple[np.ndarray, ...]]


def create_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """1-axis "data" mesh over all (or the given) devices of all processes."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("data",))


def seed_key(seed: int, index: int) -> jax.Array:
  """Key number `index` derived from the config's seed (0: initialisation, 1: train steps)."""
  return jax.random.fold_in(jax.random.key(seed), index)


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
  counts = data_lib.class_pixel_counts(dataset.train, num_classes)
  weights = losses.class_weights_from_counts(counts, mode)
  logging.info("class weights (%s frequency): %s", mode, np.round(weights, 3).tolist())
  return weights



def prepare_batch(batch, rng, data_config, mean, std, train: bool, dtype,
                  bands: data_lib.Bands):
  """Stored batch -> normalised images (compute dtype) and int32 labels; augments in training.

  Images come as stored (uint8 RGB, or a raster's bands), times `bands.scale` when it is not 1.
  """
  images = batch["image"]
  if bands.scale != 1.0:
    images = images.astype(jnp.float32) * bands.scale
  if train:
    images, labels = augment_lib.augment_batch(
        images, batch["label"], rng, data_config.augment,
        ignore_index=data_config.ignore_index, rgb=bands.rgb_channels,
        value_range=bands.value_range)
  else:
    images = images.astype(jnp.float32)
    labels = batch["label"]
  images = augment_lib.normalize(images, mean, std).astype(dtype)
  return images, labels.astype(jnp.int32)


def make_train_step(config, loss_fn, num_classes: int, mean, std,
                    bands: data_lib.Bands) -> Callable:
  """Pure `train_step(state, batch, rng) -> (state, metrics)`; the key is folded with the step."""
  dtype = state_lib.dtype_from_name(config.model.dtype)
  ignore_index = config.data.ignore_index

  def train_step(state: TrainState, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    aug_rng, dropout_rng = jax.random.split(rng)
    images, labels = prepare_batch(batch, aug_rng, config.data, mean, std, True, dtype, bands)
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


def make_eval_step(config, loss_fn: losses.Loss, num_classes: int, mean, std,
                   bands: data_lib.Bands) -> Callable:
  """Pure `eval_step(state, batch) -> (confusion matrix, loss sums, predictions)`.

  The loss sums are the batch's `loss_fn.sums`: added up over a split and reduced once, they
  give the split's exact loss.
  """
  dtype = state_lib.dtype_from_name(config.model.dtype)
  ignore_index = config.data.ignore_index

  def eval_step(state: TrainState, batch):
    images, labels = prepare_batch(batch, None, config.data, mean, std, False, dtype, bands)
    mask = losses.valid_mask(labels, num_classes, ignore_index, batch["valid"])
    logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, images,
                            train=False).astype(jnp.float32)
    preds = jnp.argmax(logits, axis=-1).astype(jnp.uint8)
    cm = metrics_lib.ConfusionMatrix.from_model_output(
        labels=labels, preds=preds, num_classes=num_classes, ignore_index=ignore_index,
        mask=mask)
    return cm, loss_fn.sums(logits, labels, mask), preds

  return eval_step



class Trainer:
  """What one run needs: mesh, dataset, model, loss, the jitted steps and the initial state.

  `seeds`, `next_batch`, `replica`, `stack` and `evaluate_all` treat the run as a group of one;
  `seg_jax.replicas.Replicas` trains several seeds in one program through the same methods.
  """

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
    self.mesh = create_mesh(devices)
    self.replicated = NamedSharding(self.mesh, P())
    self.data_sharding = NamedSharding(self.mesh, P("data"))
    if dataset is None:
      logging.info("reading data %s%s ...", config.data.name,
                   f" from {config.data.root}" if config.data.root else "")
      try:
        dataset = data_lib.get_dataset(config.data)
      except (ValueError, OSError) as e:
        raise errors.DataError(str(e)) from e
    self.dataset = dataset
    logging.info("data %s: %s examples of %s", config.data.name,
                 " / ".join(f"{len(getattr(dataset, s))} {s}" for s in ("train", "val", "test")),
                 "x".join(str(v) for v in dataset.image_size))
    for path, reason in self.dataset.skipped:
      logging.warning("skipped %s: %s", path, reason)
    try:
      self._build(config)
    except errors.RunError:
      raise
    except (ValueError, TypeError) as e:  # raised by optim, losses or a model from the config
      raise errors.ConfigError(str(e)) from e

  @property
  def seeds(self) -> tuple[int, ...]:
    """The seed of every run this trainer trains (one here)."""
    return (self.config.seed,)

  def _build(self, config: ml_collections.ConfigDict) -> None:
    self.num_classes = checks.check_setup(config, self.dataset, self.mesh.size)
    self.model = state_lib.build_model(config, self.num_classes)
    self.schedule = optim.create_schedule(config.optim, config.train.num_steps)
    warmup = optim.warmup_updates(config.optim, config.train.num_steps)
    if warmup != config.optim.warmup_steps:
      length = optim.schedule_length(config.optim, config.train.num_steps)
      logging.warning("optim.warmup_steps=%d is not shorter than the schedule (%d updates): "
                      "warming up over %d updates instead", config.optim.warmup_steps,
                      optim.num_updates(config.optim, length), warmup)
    mean = jnp.asarray(self.dataset.mean, jnp.float32)
    std = jnp.asarray(self.dataset.std, jnp.float32)
    self.loss_fn = losses.make_loss(config.loss,
                                    class_weights(config.loss, self.dataset, self.num_classes))
    bands = self.dataset.bands
    init_fn = functools.partial(state_lib.init_state, config, self.model,
                                tuple(self.dataset.image_size), num_bands=len(bands))
    # The state of one run, as its checkpoints hold it.
    self.abstract_state = jax.jit(lambda: init_fn(seed_key(config.seed, 0)),
                                  out_shardings=self.replicated).eval_shape()
    self._jit(*self._steps(init_fn, make_train_step(config, self.loss_fn, self.num_classes,
                                                    mean, std, bands),
                           make_eval_step(config, self.loss_fn, self.num_classes, mean, std,
                                          bands)))

  def _steps(self, init_fn: Callable, train_step: Callable, eval_step: Callable
             ) -> tuple[Callable, ...]:
    """(init, step key, train step, eval step, predictions' sharding) of this run, unjitted.

    Keys are made inside jitted functions, so every process holds the same replicated value.
    Eval results get a leading run axis (of 1), as `evaluate_all` reads them for any group.
    """
    seed = self.config.seed
    return (lambda: init_fn(seed_key(seed, 0)), lambda: seed_key(seed, 1), train_step,
            lambda state, batch: jax.tree.map(lambda x: x[None], eval_step(state, batch)),
            NamedSharding(self.mesh, P(None, "data")))

  def _jit(self, init_fn: Callable, key_fn: Callable, train_fn: Callable, eval_fn: Callable,
           preds_sharding: NamedSharding) -> None:
    # Named functions: compiles are logged (and counted) under these names.
    def init():
      return init_fn()

    def step_key():
      return key_fn()

    def train_step(state, batch, rng):
      return train_fn(state, batch, rng)

    def eval_step(state, batch):
      return eval_fn(state, batch)

    self._init = jax.jit(init, out_shardings=self.replicated,
                         compiler_options=init_compiler_options())
    self._step_key = jax.jit(step_key, out_shardings=self.replicated)
    options = step_compiler_options(self.config)
    self.train_step = jax.jit(
        train_step, in_shardings=(self.replicated, self.data_sharding, self.replicated),
        out_shardings=(self.replicated, self.replicated), donate_argnums=0,
        compiler_options=options)
    self.eval_step = jax.jit(
        eval_step, in_shardings=(self.replicated, self.data_sharding),
        out_shardings=(self.replicated, self.replicated, preds_sharding),
        compiler_options=options)

  def initial_state(self) -> TrainState:
    """Freshly initialised state (parameters from the seed)."""
    return self._init()

  def step_key(self) -> jax.Array:
    """The key every train step folds its step number into."""
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
    """The `train_step` input from the run's pipeline (one per seed)."""
    return next(pipelines[0])

  def replica(self, state: TrainState, k: int) -> TrainState:
    """The state of run k of the group (the state itself here)."""
    del k
    return state

  def stack(self, states: list[TrainState]) -> TrainState:
    """The group's state from each run's own (inverse of `replica`)."""
    return states[0]

  def evaluate(self, state: TrainState, split: str | None = None) -> Evaluation:
    """Scores over a whole split (default `eval.split`), its confusion matrix and samples.

    The samples are the first `eval.num_images` valid examples of the split (the same ones at
    every evaluation). The loss is the configured loss of the whole split at once
    (`losses.Loss.reduce` of the summed batch sums), not a mean of batch losses.
    """
    if len(self.seeds) > 1:
      raise ValueError(f"evaluate() scores one run, this trainer has {len(self.seeds)} "
                       "replicas: use evaluate_all()")
    return self.evaluate_all(state, split)[0]

  def evaluate_all(self, state: TrainState, split: str | None = None) -> list[Evaluation]:
    """`evaluate` of every run of the group, in seed order, from one pass over the split."""
    split = self.config.eval.split if split is None else split
    batches = pipeline_lib.InputPipeline(
        getattr(self.dataset, split), global_batch_size=self.config.eval.global_batch_size,
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
        preds = local_rows(preds, axis=1)
        for k in range(num):
          samples[k].extend(self._samples(batch, preds[k], wanted))
    cms, loss_sums = jax.device_get((cms, loss_sums))
    out = []
    for k in range(num):
      scores, matrix = self.scores(
          [metrics_lib.ConfusionMatrix(matrix=cm.matrix[k]) for cm in cms],
          [jax.tree.map(lambda x, k=k: x[k], sums) for sums in loss_sums])
      out.append(Evaluation(scores, matrix, samples[k]))
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
    result.update(metrics_lib.excluding(result, self.dataset.class_names,
                                        self.config.eval.exclude_classes))
    summed = jax.tree.map(lambda *xs: np.sum(np.asarray(xs, np.float64), axis=0), *loss_sums)
    result["loss"] = float(self.loss_fn.reduce(summed))
    return result, total.matrix

  def _samples(self, batch, preds: np.ndarray, limit: int) -> list[tuple[np.ndarray, ...]]:
    """(image, label, prediction) of up to `limit` valid examples of this process's shard of a
    batch; `preds` holds this process's rows of the batch's predictions."""
    images, labels, valid = (local_rows(x) for x in (
        batch["image"], batch["label"], batch["valid"]))
    preview = self.dataset.bands.preview
    return [(preview(images[i]), labels[i], preds[i]) for i in np.flatnonzero(valid)[:limit]]


def local_rows(x: jax.Array, axis: int = 0) -> np.ndarray:
  """The rows (along the sharded `axis`) of an array that live on this process, in NumPy."""
  return np.concatenate([np.asarray(s.data) for s in x.addressable_shards], axis=axis)
