"""Training and evaluation of a segmentation model from a config: state, steps, loop, eval-only.

One jitted `train_step(state, batch, rng)` runs on a 1-axis "data" mesh over all devices (batch
sharded, parameters replicated, state donated); augmentation runs inside it. The loop logs to
TensorBoard and metrics.jsonl, evaluates with a confusion matrix summed over the whole split,
checkpoints with Orbax (periodic + best val mIoU), resumes from the workdir, and saves and exits
on SIGTERM.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
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
from seg_jax import data as data_lib
from seg_jax import losses
from seg_jax import metrics as metrics_lib
from seg_jax import models
from seg_jax import optim
from seg_jax import viz
from seg_jax import writers
from seg_jax.data import augment as augment_lib
from seg_jax.data import palettes
from seg_jax.data import pipeline as pipeline_lib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
CLASS_WEIGHTINGS = ("none", "inverse", "median", "given")


class TrainState(train_state.TrainState):
  """Parameters, optimizer state and step, plus BatchNorm statistics."""

  batch_stats: Any = None


class NonFiniteLossError(RuntimeError):
  """Raised when the training loss or gradient norm becomes NaN or Inf."""


def create_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """1-axis "data" mesh over all (or the given) devices of all processes."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), ("data",))


def dtype_from_name(name: str) -> Any:
  """JAX dtype for a config dtype string."""
  if name not in DTYPES:
    raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {name!r}")
  return DTYPES[name]


def check_setup(config: ml_collections.ConfigDict, dataset: data_lib.Dataset,
                num_devices: int) -> int:
  """Checks the config against the dataset and devices before anything compiles.

  Returns:
    The number of classes.
  Raises:
    ValueError: unknown or non-segmentation model, num_classes not matching the dataset's
      palette, images smaller than the model's minimum, a batch not divisible by the devices.
  """
  name = config.model.name
  if name not in models.available():
    raise ValueError(f"model.name must be one of {models.available()}, got {name!r}")
  if not models.is_segmentation(name):
    raise ValueError(f"model.name {name!r} is a classifier, not a segmentation model")
  num_classes = len(dataset.class_names)
  palette_size = len(palettes.palette_colors(dataset.palette))
  if palette_size != num_classes:
    raise ValueError(f"dataset {config.data.name!r} has {num_classes} class names but "
                     f"{palette_size} palette colours")
  if config.model.num_classes not in (0, num_classes):
    raise ValueError(
        f"model.num_classes={config.model.num_classes} but dataset {config.data.name!r} has "
        f"{num_classes} classes {tuple(dataset.class_names)} (0 means: take the dataset's)")
  min_size = models.min_input_size(name)
  if min(dataset.image_size) < min_size:
    raise ValueError(f"images are {tuple(dataset.image_size)} but model {name!r} needs at "
                     f"least {min_size}x{min_size} (data.image_size / data.patch_size)")
  for field in ("train.global_batch_size", "eval.global_batch_size"):
    group, key = field.split(".")
    batch = config[group][key]
    if batch < 1 or batch % num_devices:
      raise ValueError(f"{field}={batch} must be a positive multiple of the device count "
                       f"{num_devices}")
  dtype_from_name(config.model.dtype)
  dtype_from_name(config.model.param_dtype)
  return num_classes


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """The configured model from the registry, with ``model.ablation`` applied by the registry."""
  return models.create(config.model.name, num_classes=num_classes,
                       dtype=dtype_from_name(config.model.dtype),
                       param_dtype=dtype_from_name(config.model.param_dtype),
                       ablation=config.model.ablation, **config.model.kwargs.to_dict())


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
    raise ValueError(f"loss.class_weighting must be one of {CLASS_WEIGHTINGS}, got {mode!r}")
  if mode == "none":
    return None
  if mode == "given":
    weights = np.asarray(loss_config.class_weights, np.float32)
    if weights.shape != (num_classes,):
      raise ValueError(f"loss.class_weights has {weights.size} entries, expected one per class "
                       f"({num_classes})")
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


def make_eval_step(config, loss_fn, num_classes: int, mean, std) -> Callable:
  """Pure `eval_step(state, batch) -> (confusion matrix, loss sum, predictions)`.

  The loss sum is the batch's mean loss times its counted pixels (the confusion matrix's sum).
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
    return cm, loss_fn(logits, labels, mask) * jnp.sum(mask), preds

  return eval_step


class Trainer:
  """Holds what a run needs: mesh, dataset, model, jitted steps and the initial state."""

  def __init__(self, config: ml_collections.ConfigDict,
               dataset: data_lib.Dataset | None = None,
               devices: list[jax.Device] | None = None):
    """Builds everything up to (not including) compilation; guards run first.

    `dataset` defaults to `get_dataset(config.data)`; `devices` (default: all) form the mesh.
    """
    self.config = config
    if config.train.compilation_cache_dir:
      jax.config.update("jax_compilation_cache_dir", config.train.compilation_cache_dir)
    self.mesh = create_mesh(devices)
    self.replicated = NamedSharding(self.mesh, P())
    self.data_sharding = NamedSharding(self.mesh, P("data"))
    self.dataset = data_lib.get_dataset(config.data) if dataset is None else dataset
    for path, reason in self.dataset.skipped:
      logging.warning("skipped %s: %s", path, reason)
    self.num_classes = check_setup(config, self.dataset, self.mesh.size)
    self.model = build_model(config, self.num_classes)
    self.schedule = optim.create_schedule(config.optim, config.train.num_steps)
    mean = jnp.asarray(self.dataset.mean, jnp.float32)
    std = jnp.asarray(self.dataset.std, jnp.float32)
    loss_fn = losses.make_loss(config.loss,
                               class_weights(config.loss, self.dataset, self.num_classes))
    self.root_rng = jax.random.key(config.seed)
    init_fn = functools.partial(init_state, config, self.model, tuple(self.dataset.image_size))
    self._init = jax.jit(init_fn, out_shardings=self.replicated)
    self.abstract_state = self._init.eval_shape(self.root_rng)
    self.train_step = jax.jit(
        make_train_step(config, loss_fn, self.num_classes, mean, std),
        in_shardings=(self.replicated, self.data_sharding, self.replicated),
        out_shardings=(self.replicated, self.replicated), donate_argnums=0)
    self.eval_step = jax.jit(
        make_eval_step(config, loss_fn, self.num_classes, mean, std),
        in_shardings=(self.replicated, self.data_sharding),
        out_shardings=(self.replicated, self.replicated, self.data_sharding))

  def initial_state(self) -> TrainState:
    """Freshly initialised state (parameters from the root key)."""
    return self._init(jax.random.fold_in(self.root_rng, 0))

  def train_pipeline(self) -> Iterator[dict[str, jax.Array]]:
    """Endless, shuffled, sharded training batches (state saved with checkpoints)."""
    return pipeline_lib.InputPipeline(
        self.dataset.train, global_batch_size=self.config.train.global_batch_size,
        sharding=self.data_sharding, seed=self.config.seed, shuffle=True, num_epochs=None,
        drop_remainder=True, keep_on_device=self.config.data.keep_on_device)

  def evaluate(self, state: TrainState, split: str | None = None
               ) -> tuple[dict[str, Any], np.ndarray, list[np.ndarray]]:
    """Scores over a whole split, its confusion matrix and image | truth | prediction panels."""
    split = self.config.eval.split if split is None else split
    if split not in ("val", "test"):
      raise ValueError(f"eval.split must be 'val' or 'test', got {split!r}")
    source = getattr(self.dataset, split)
    if len(source) == 0:
      raise ValueError(f"the {split!r} split of dataset {self.config.data.name!r} is empty")
    batches = pipeline_lib.InputPipeline(
        source, global_batch_size=self.config.eval.global_batch_size,
        sharding=self.data_sharding, seed=self.config.seed, shuffle=False, num_epochs=1,
        drop_remainder=False)
    cms, loss_sums, panels = [], [], []
    for batch in batches:  # per-batch results stay on the device until the split is done
      cm, loss_sum, preds = self.eval_step(state, batch)
      cms.append(cm)
      loss_sums.append(loss_sum)
      if len(panels) < self.config.eval.num_images and jax.process_index() == 0:
        panels.extend(self._panels(batch, preds, self.config.eval.num_images - len(panels)))
    cms, loss_sums = jax.device_get((cms, loss_sums))
    total = functools.reduce(metrics_lib.ConfusionMatrix.merge, cms,
                             metrics_lib.ConfusionMatrix.empty(self.num_classes))
    result = total.compute()
    result["loss"] = sum(float(x) for x in loss_sums) / max(int(total.matrix.sum()), 1)
    return result, total.matrix, panels

  def _panels(self, batch, preds, limit: int) -> list[np.ndarray]:
    """Prediction panels of up to `limit` valid examples of this process's shard of a batch."""
    preds, images, labels, valid = (_local_rows(x) for x in (
        preds, batch["image"], batch["label"], batch["valid"]))
    return [viz.prediction_panel(images[i], labels[i], preds[i], self.dataset.palette)
            for i in np.flatnonzero(valid)[:limit]]


def _local_rows(x: jax.Array) -> np.ndarray:
  """The rows of a batch-sharded array that live on this process, as one NumPy array."""
  return np.concatenate([np.asarray(s.data) for s in x.addressable_shards])


def _record(step: int, split: str, result: dict[str, Any], class_names) -> dict[str, Any]:
  """metrics.jsonl record: scalar scores plus per-class scores keyed by class name."""
  record = {"step": step, "split": split}
  for key, value in result.items():
    if np.ndim(value) == 1:
      record[key] = dict(zip(class_names, np.asarray(value).tolist()))
    else:
      record[key] = float(value)
  return record


class _SigtermFlag:
  """Remembers a SIGTERM (preemption notice) until the loop can save and exit."""

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: preemption is then left to the caller
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint and exiting after this step")
    self.received = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _format_duration(seconds: float) -> str:
  """'1h02m03s' / '2m03s' / '4s'."""
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _check_finite(pending: list[tuple[int, dict]], last_good: int | None, workdir: str) -> None:
  """Raises NonFiniteLossError naming the first step whose loss or gradient norm is not finite."""
  for step, m in pending:
    if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])):
      where = (f"last good checkpoint: step {last_good} in {workdir}" if last_good is not None
               else "no checkpoint was saved")
      raise NonFiniteLossError(
          f"training stopped: loss {m['loss']} / gradient norm {m['grad_norm']} at step {step} "
          f"is not finite; {where}. Lower optim.learning_rate or enable optim.grad_clip_norm.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       dataset: data_lib.Dataset | None = None) -> dict[str, Any]:
  """Trains (resuming from `workdir` if it holds a checkpoint) and evaluates; returns final scores.

  Writes TensorBoard events, metrics.jsonl, config.json, checkpoints/, best/,
  confusion_matrix.png and final_metrics.json into `workdir`. On SIGTERM it saves a checkpoint
  and returns {"preempted": True, "step": step}.
  """
  os.makedirs(workdir, exist_ok=True)
  trainer = Trainer(config, dataset)
  c = config.train
  is_main = jax.process_index() == 0
  if is_main:
    writers.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  ckpt = checkpoint_lib.Checkpointer(workdir, c.keep_checkpoints)
  pipeline = trainer.train_pipeline()
  restored = ckpt.restore_latest(trainer.abstract_state)
  if restored is None:
    state = trainer.initial_state()
    last_good = None
  else:
    state, pipeline_state = restored
    pipeline.set_state(pipeline_state)
    last_good = int(state.step)
    logging.info("resumed from step %d in %s", last_good, workdir)
  step = int(state.step)
  final_path = os.path.join(workdir, "final_metrics.json")
  if step >= c.num_steps and os.path.exists(final_path):
    ckpt.close()
    logging.info("%s already holds a finished run of %d steps", workdir, step)
    with open(final_path) as f:
      return json.load(f)
  writer = writers.MetricWriter(workdir)
  if step == 0:
    logging.info("model %s: %d parameters", config.model.name,
                 models.count_params({"params": state.params}))
  step_rng = jax.device_put(jax.random.fold_in(trainer.root_rng, 1), trainer.replicated)
  pending: list[tuple[int, Any]] = []
  result: dict[str, Any] = {}
  cm = None
  t_log, step_log = time.time(), step
  try:
    with _SigtermFlag() as sigterm:
      while step < c.num_steps:
        batch = next(pipeline)
        state, step_metrics = trainer.train_step(state, batch, step_rng)
        step += 1
        pending.append((step, step_metrics))
        last = step == c.num_steps
        eval_now = step % c.eval_every == 0 or last
        save_now = step % c.checkpoint_every == 0 or last or sigterm.received
        if step % c.log_every == 0 or last or eval_now or save_now:
          pending = jax.device_get(pending)
          _check_finite(pending, last_good, workdir)
          if step % c.log_every == 0 or last:
            elapsed = time.time() - t_log
            rate = (step - step_log) / max(elapsed, 1e-9)
            loss = float(np.mean([m["loss"] for _, m in pending]))
            lr = float(trainer.schedule(optim.num_updates(config.optim, step) - 1))
            writer.scalars(step, {"train/loss": loss, "train/lr": lr,
                                  "train/grad_norm": float(pending[-1][1]["grad_norm"]),
                                  "train/images_per_second": rate * c.global_batch_size})
            logging.info("step %d/%d  loss %.4f  lr %.2e  %.1f img/s  ETA %s", step, c.num_steps,
                         loss, lr, rate * c.global_batch_size,
                         _format_duration((c.num_steps - step) / max(rate, 1e-9)))
            t_log, step_log = time.time(), step
            pending = []
        if eval_now:
          result, cm, panels = trainer.evaluate(state)
          split = config.eval.split
          writer.jsonl(_record(step, split, result, trainer.dataset.class_names))
          writer.scalars(step, {f"{split}/{k}": v for k, v in result.items() if np.ndim(v) == 0})
          writer.scalars(step, {f"{split}/iou/{n}": v
                                for n, v in zip(trainer.dataset.class_names, result["iou"])})
          writer.images(step, {f"{split}/prediction_{i}": p for i, p in enumerate(panels)})
          writer.flush()
          logging.info("eval %s at step %d: mIoU %.4f  pixel acc %.4f  loss %.4f", split, step,
                       result["miou"], result["pixel_accuracy"], result["loss"])
          ckpt.save_best(step, state, result["miou"])
          t_log, step_log = time.time(), step  # img/s and ETA leave the evaluation out
        if save_now:
          ckpt.save(step, state, pipeline.get_state())
          last_good = step
        if sigterm.received and not last:
          logging.warning("preempted: checkpoint saved at step %d in %s", step, workdir)
          return {"preempted": True, "step": step}
  finally:
    ckpt.close()
    writer.close()
  if not is_main or cm is None:
    return result
  final = _record(step, config.eval.split, result, trainer.dataset.class_names)
  writers.write_json(final_path, final)
  viz.save_confusion_matrix(cm, trainer.dataset.class_names,
                            os.path.join(workdir, "confusion_matrix.png"),
                            title=f"{config.model.name} {config.eval.split} step {step}")
  return final


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        dataset: data_lib.Dataset | None = None) -> dict[str, Any]:
  """Evaluates the "best" or "latest" checkpoint in `workdir` on `config.eval.split`.

  Writes eval_<split>.json, eval_<split>_table.txt and confusion_matrix_<split>.png into
  `workdir` and logs the per-class table.
  """
  trainer = Trainer(config, dataset)
  ckpt = checkpoint_lib.Checkpointer(workdir, config.train.keep_checkpoints)
  state, step = ckpt.restore_state(trainer.abstract_state, config.eval.checkpoint)
  ckpt.close()
  split = config.eval.split
  result, cm, _ = trainer.evaluate(state, split)
  record = _record(step, split, result, trainer.dataset.class_names)
  record["checkpoint"] = config.eval.checkpoint
  table = metrics_lib.format_table(result, trainer.dataset.class_names)
  logging.info("%s checkpoint (step %d) on %s:\n%s", config.eval.checkpoint, step, split, table)
  if jax.process_index() == 0:
    writers.write_json(os.path.join(workdir, f"eval_{split}.json"), record)
    with open(os.path.join(workdir, f"eval_{split}_table.txt"), "w") as f:
      f.write(table + "\n")
    viz.save_confusion_matrix(cm, trainer.dataset.class_names,
                              os.path.join(workdir, f"confusion_matrix_{split}.png"),
                              title=f"{config.model.name} {split} step {step}")
  return record


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Dispatches on `config.train.mode`: "train" or "eval"."""
  if config.train.mode == "train":
    return train_and_evaluate(config, workdir)
  if config.train.mode == "eval":
    return evaluate_checkpoint(config, workdir)
  raise ValueError(f"train.mode must be 'train' or 'eval', got {config.train.mode!r}")
