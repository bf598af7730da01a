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
from seg_jax import data as data_lib
from seg_jax import errors
from seg_jax import inference
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
SPLITS = ("val", "test")
RESOLUTIONS = ("training", "full")
FINAL_METRICS = "final_metrics.json"
CURVES = "curves.png"


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
    ConfigError: unknown or non-segmentation model, num_classes not matching the dataset's
      palette, images smaller than the model's minimum, a batch not divisible by the devices,
      an unknown eval split.
    DataError: an empty train split or an empty split to evaluate.
  """
  name = config.model.name
  if name not in models.available():
    raise errors.ConfigError(f"model.name must be one of {models.available()}, got {name!r}")
  if not models.is_segmentation(name):
    raise errors.ConfigError(f"model.name {name!r} is a classifier, not a segmentation model")
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
                "train.checkpoint_every"):
    group, key = field.split(".")
    if config[group][key] < 1:
      raise errors.ConfigError(f"{field} must be >= 1, got {config[group][key]}")
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
  """The configured model from the registry, with ``model.ablation`` applied by the registry."""
  try:
    return models.create(config.model.name, num_classes=num_classes,
                         dtype=dtype_from_name(config.model.dtype),
                         param_dtype=dtype_from_name(config.model.param_dtype),
                         ablation=config.model.ablation, **config.model.kwargs.to_dict())
  except ValueError as e:  # a keyword or ablation the model does not take
    raise errors.ConfigError(f"model.kwargs / model.ablation of {config.model.name!r}: {e}"
                             ) from e


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
    if config.train.compilation_cache_dir:
      jax.config.update("jax_compilation_cache_dir", config.train.compilation_cache_dir)
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
    # Keys are made inside jitted functions, so every process holds the same replicated value.
    self._init = jax.jit(lambda: init_fn(_seed_key(config.seed, 0)),
                         out_shardings=self.replicated)
    self._step_key = jax.jit(lambda: _seed_key(config.seed, 1), out_shardings=self.replicated)
    self.abstract_state = self._init.eval_shape()
    self.train_step = jax.jit(
        make_train_step(config, self.loss_fn, self.num_classes, mean, std),
        in_shardings=(self.replicated, self.data_sharding, self.replicated),
        out_shardings=(self.replicated, self.replicated), donate_argnums=0)
    self.eval_step = jax.jit(
        make_eval_step(config, self.loss_fn, self.num_classes, mean, std),
        in_shardings=(self.replicated, self.data_sharding),
        out_shardings=(self.replicated, self.replicated, self.data_sharding))

  def initial_state(self) -> TrainState:
    """Freshly initialised state (parameters from the config's seed)."""
    return self._init()

  def step_key(self) -> jax.Array:
    """The key every train step folds its step number into."""
    return self._step_key()

  def train_pipeline(self) -> Iterator[dict[str, jax.Array]]:
    """Endless, shuffled, sharded training batches (state saved with checkpoints)."""
    return pipeline_lib.InputPipeline(
        self.dataset.train, global_batch_size=self.config.train.global_batch_size,
        sharding=self.data_sharding, seed=self.config.seed, shuffle=True, num_epochs=None,
        drop_remainder=True, keep_on_device=self.config.data.keep_on_device)

  def evaluate(self, state: TrainState, split: str | None = None
               ) -> tuple[dict[str, Any], np.ndarray, list[tuple[np.ndarray, ...]]]:
    """Scores over a whole split, its confusion matrix and (image, label, prediction) samples.

    The samples are the first `eval.num_images` valid examples of the split (the same ones at
    every evaluation).

    The loss is the configured loss of the whole split at once (`losses.Loss.reduce` of the
    summed batch sums), not a mean of batch losses.
    """
    split = self.config.eval.split if split is None else split
    source = getattr(self.dataset, split)
    batches = pipeline_lib.InputPipeline(
        source, global_batch_size=self.config.eval.global_batch_size,
        sharding=self.data_sharding, seed=self.config.seed, shuffle=False, num_epochs=1,
        drop_remainder=False)
    cms, loss_sums, samples = [], [], []
    for batch in batches:  # per-batch results stay on the device until the split is done
      cm, sums, preds = self.eval_step(state, batch)
      cms.append(cm)
      loss_sums.append(sums)
      if len(samples) < self.config.eval.num_images and jax.process_index() == 0:
        samples.extend(self._samples(batch, preds, self.config.eval.num_images - len(samples)))
    result, matrix = self.scores(cms, loss_sums)
    return result, matrix, samples

  def scores(self, cms: list[Any], loss_sums: list[Any]) -> tuple[dict[str, Any], np.ndarray]:
    """Scores and confusion matrix of a split from its per-batch (or per-image) results.

    `cms` are `ConfusionMatrix` metrics and `loss_sums` `loss_fn.sums` outputs: summed over
    the split and reduced once, they give the loss of the whole split.
    """
    cms, loss_sums = jax.device_get((cms, loss_sums))
    total = functools.reduce(metrics_lib.ConfusionMatrix.merge, cms,
                             metrics_lib.ConfusionMatrix.empty(self.num_classes))
    result = total.compute()
    summed = jax.tree.map(lambda *xs: np.sum(np.asarray(xs, np.float64), axis=0), *loss_sums)
    result["loss"] = float(self.loss_fn.reduce(summed))
    return result, total.matrix

  def _samples(self, batch, preds, limit: int) -> list[tuple[np.ndarray, ...]]:
    """(image, label, prediction) of up to `limit` valid examples of this process's shard."""
    preds, images, labels, valid = (_local_rows(x) for x in (
        preds, batch["image"], batch["label"], batch["valid"]))
    return [(images[i], labels[i], preds[i]) for i in np.flatnonzero(valid)[:limit]]


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
  keep the device busy, so the check costs no device time. A non-finite loss stops the run
  `lag` steps after it happened (on every process at the same step), naming that step.
  """

  def __init__(self, describe_stop: Callable[[int, int, dict[str, float]], str], lag: int = 2):
    self._describe_stop = describe_stop
    self._lag = lag
    self._unchecked: collections.deque = collections.deque()
    self._checked: list[tuple[int, dict[str, float]]] = []
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
    values = {k: float(v) for k, v in metrics.items()}
    if not all(np.isfinite(v) for v in values.values()):
      raise NonFiniteLossError(self._describe_stop(self._step, step, values))
    self._checked.append((step, values))

  def drain(self) -> list[tuple[int, dict[str, float]]]:
    """Checks every queued step and returns (step, metrics) of all steps since the last drain."""
    while self._unchecked:
      self._check_oldest()
    out, self._checked = self._checked, []
    return out


def _non_finite_message(config: ml_collections.ConfigDict, workdir: str,
                        last_checkpoint: Callable[[], int | None]
                        ) -> Callable[[int, int, dict[str, float]], str]:
  """Builds the message of a NaN/Inf stop: where it happened, what was kept, what to change."""
  o = config.optim

  def describe(now: int, step: int, values: dict[str, float]) -> str:
    saved = last_checkpoint()
    kept = (f"the last checkpoint is step {saved} in {workdir}" if saved is not None
            else "no checkpoint was saved")
    if o.grad_clip_norm:
      advice = (f"lower optim.learning_rate (now {o.learning_rate:g}) or optim.grad_clip_norm "
                f"(now {o.grad_clip_norm:g}), lengthen optim.warmup_steps (now "
                f"{o.warmup_steps}), or check the data")
    else:
      advice = (f"lower optim.learning_rate (now {o.learning_rate:g}) or enable "
                "optim.grad_clip_norm (e.g. 1.0)")
    return (f"training stopped at step {now}: loss {values['loss']} / gradient norm "
            f"{values['grad_norm']} at step {step} is not finite; {kept}. To fix: {advice}")

  return describe


class _RunLog:
  """What a run writes as it goes: console lines, TensorBoard, metrics.jsonl."""

  def __init__(self, trainer: Trainer, workdir: str):
    self.trainer = trainer
    self.config = trainer.config
    self.workdir = workdir
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
    logging.info("step %d/%d  loss %.4f  lr %.2e  %.1f img/s  ETA %s", step, c.num_steps, loss,
                 lr, rate * c.global_batch_size,
                 _format_duration((c.num_steps - step) / max(rate, 1e-9)))
    self.restart_clock(step)

  def evaluation(self, step: int, result: dict[str, Any],
                 samples: list[tuple[np.ndarray, ...]]) -> None:
    """metrics.jsonl record, TensorBoard scores and panels, the prediction grid, a console line."""
    split = self.config.eval.split
    palette = self.trainer.dataset.palette
    names = palette.names
    self.writer.jsonl(_record(step, split, result, names))
    self.writer.scalars(step, {f"{split}/{k}": v for k, v in result.items() if np.ndim(v) == 0})
    self.writer.scalars(step, {f"{split}/iou/{n}": v for n, v in zip(names, result["iou"])})
    self.writer.images(step, {f"{split}/prediction_{i}": viz.prediction_panel(*s, palette)
                              for i, s in enumerate(samples)})
    self.writer.flush()
    self.save_prediction_grid(step, samples)
    logging.info("eval %s at step %d: mIoU %.4f  pixel acc %.4f  loss %.4f", split, step,
                 result["miou"], result["pixel_accuracy"], result["loss"])

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


def _write_result(directory: str, name: str, record: dict[str, Any], cm: np.ndarray,
                  trainer: Trainer, png: str) -> None:
  """Writes `record` as <directory>/<name> and the confusion matrix as <directory>/<png>."""
  writers.write_json(os.path.join(directory, name), record)
  resolution = f", {record['resolution']} resolution" if "resolution" in record else ""
  viz.save_confusion_matrix(
      cm, trainer.dataset.class_names, os.path.join(directory, png),
      title=f"{trainer.config.model.name} {record['split']} step {record['step']}{resolution}")


def _finish(trainer: Trainer, state: TrainState, step: int, workdir: str,
            evaluation: tuple[dict[str, Any], np.ndarray] | None, log: _RunLog
            ) -> dict[str, Any]:
  """Writes curves.png, confusion_matrix.png and final_metrics.json of the run's last step.

  `evaluation` is the last step's (scores, confusion matrix) if this process just computed it;
  otherwise (a rerun of a run killed after its last checkpoint) the state is evaluated again,
  and its record is added to metrics.jsonl if the killed run did not write it.
  """
  if evaluation is None:
    result, cm, samples = trainer.evaluate(state)
    if not log.has_evaluation(step):
      log.evaluation(step, result, samples)
  else:
    result, cm = evaluation
  final = _record(step, trainer.config.eval.split, result, trainer.dataset.class_names)
  if jax.process_index() == 0:
    write_curves(workdir, trainer.config.model.name)  # before the file that marks the end
    _write_result(workdir, FINAL_METRICS, final, cm, trainer, "confusion_matrix.png")
  return final


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       dataset: data_lib.Dataset | None = None) -> dict[str, Any]:
  """Trains (resuming from `workdir` if it holds a checkpoint) and evaluates; returns final scores.

  Writes TensorBoard events, metrics.jsonl, config.json, dataset.json, checkpoints/,
  predictions/step_<N>.png, curves.png, confusion_matrix.png and final_metrics.json into
  `workdir`. On a preemption notice it saves a checkpoint and returns
  {"preempted": True, "step": step}.
  Raises:
    RunError: the config, data or workdir cannot give this run (before anything is compiled
      or written), or the loss became NaN/Inf.
  """
  workdir_lib.check_config(config, workdir)
  trainer = Trainer(config, dataset)
  c = config.train
  ckpt = checkpoint_lib.Checkpointer(workdir, c.keep_checkpoints)
  try:
    restored = ckpt.restore_latest(trainer.abstract_state)
    step = 0 if restored is None else restored.step
    if step > c.num_steps:
      raise errors.WorkdirError(
          f"{workdir} holds a run trained to step {step}, past train.num_steps={c.num_steps}; "
          f"pass --config.train.num_steps={step} or more, or use a new --workdir")
    if restored is not None:
      logging.info("resumed from step %d in %s", step, workdir)
    done = _finished_record(workdir, step) if step == c.num_steps else None
    if done is not None:
      logging.info("%s already holds a finished run of %d steps", workdir, step)
      return done
    if jax.process_index() == 0:
      writers.discard_after(workdir, step)
    if step < c.num_steps:
      if jax.process_index() == 0:
        workdir_lib.save_config(config, workdir)
        inference.save_data_info(workdir, trainer.dataset)
      return _train(trainer, ckpt, restored, workdir)
    log = _RunLog(trainer, workdir)  # killed after its last checkpoint: complete the outputs
    try:
      return _finish(trainer, restored.state, step, workdir, None, log)
    finally:
      log.close()
  finally:
    ckpt.close()


def _train(trainer: Trainer, ckpt: checkpoint_lib.Checkpointer,
           restored: checkpoint_lib.Restored | None, workdir: str) -> dict[str, Any]:
  """The training loop from `restored` (or a fresh state) to `train.num_steps`."""
  config = trainer.config
  c = config.train
  pipeline = trainer.train_pipeline()
  if restored is None:
    state, step = trainer.initial_state(), 0
    logging.info("model %s: %d parameters", config.model.name,
                 models.count_params({"params": state.params}))
  else:
    state, step = restored.state, restored.step
    pipeline.set_state(restored.pipeline)
  saved = [step] if restored is not None else []
  pending = _StepMetrics(_non_finite_message(config, workdir,
                                             lambda: saved[-1] if saved else None))
  step_key = trainer.step_key()
  log = _RunLog(trainer, workdir)
  log.restart_clock(step)
  evaluation = None
  try:
    with preemption.PreemptionWatch() as preempt:
      while step < c.num_steps:
        state, step_metrics = trainer.train_step(state, next(pipeline), step_key)
        step += 1
        pending.add(step, step_metrics)
        last = step == c.num_steps
        eval_now = step % c.eval_every == 0 or last
        preempted = preempt.reached(step)
        save_now = step % c.checkpoint_every == 0 or eval_now or preempted
        if step % c.log_every == 0 or last:
          log.train(step, pending.drain())
        elif save_now:
          pending.drain()  # nothing non-finite may be saved
        if eval_now:
          result, cm, samples = trainer.evaluate(state)
          log.evaluation(step, result, samples)
          evaluation = (result, cm)
        if save_now:
          log.writer.flush()  # everything logged up to a checkpoint is on disk before it
          ckpt.save(step, state, pipeline.get_state(),
                    miou=evaluation[0]["miou"] if eval_now else None)
          saved.append(step)
          log.restart_clock(step)  # img/s and ETA leave evaluations and saves out
        if preempted and not last:
          ckpt.wait()
          logging.warning("preempted: checkpoint saved at step %d in %s", step, workdir)
          return {"preempted": True, "step": step}
    ckpt.wait()  # final outputs only once the last checkpoint is committed
    return _finish(trainer, state, step, workdir, evaluation, log)
  finally:
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
