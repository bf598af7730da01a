"""Eval-only scoring of a run's checkpoint: on a split at the training resolution, or each image
at its original resolution through `seg_jax.inference` (sliding windows, TTA, scales)."""

from __future__ import annotations

import inspect
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from seg_jax import checks
from seg_jax import data as data_lib
from seg_jax import errors
from seg_jax import inference
from seg_jax import metrics as metrics_lib
from seg_jax import models
from seg_jax import outputs
from seg_jax import scenes
from seg_jax import state as state_lib
from seg_jax import steps
from seg_jax import storage
from seg_jax import workdir as workdir_lib
from seg_jax import writers
from seg_jax.state import TrainState
from seg_jax.workdir import RunDir


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        dataset: data_lib.Dataset | None = None) -> dict[str, Any]:
  """Evaluates the "best" or "latest" checkpoint in `workdir` on `config.eval.split`.

  At `eval.resolution="training"` the split is scored as training sees it; at "full" each of
  its images is predicted at its original size (`evaluate_full_resolution`).
  Reads the workdir only (it may be read-only): writes eval_<name>.json, eval_<name>_table.txt
  and confusion_matrix_<name>.png into `config.eval.output_dir` ("" = the workdir), where
  <name> (`workdir.eval_name`) holds every setting that changes the scores: the split, at full
  resolution "_full_<eval.predict.mode>" and each prediction option that differs from its
  default, and "_latest" for the latest checkpoint. Logs the per-class table.
  """
  checks.check_values(config)
  run_dir = RunDir(workdir)
  _check_output_dir(config, run_dir)
  if not run_dir.check_config(config):
    logging.warning("%s does not exist; evaluating with the given config",
                    run_dir.file(workdir_lib.CONFIG_FILE))
  trainer = _trainer(config, run_dir, dataset)
  split = config.eval.split
  full = config.eval.resolution == "full"
  if full:  # options and files are checked before anything is restored or compiled
    options = full_resolution_options(trainer)
    try:
      examples = data_lib.full_resolution_examples(config.data, split)
    except (ValueError, OSError) as e:
      raise errors.DataError(str(e)) from e
  state, step = run_dir.restore(trainer.abstract_state, config.eval.checkpoint)
  if full:
    result, cm = evaluate_full_resolution(trainer, state, examples, options)
  else:
    result, cm, _ = trainer.evaluate(state, split)
  exclude = tuple(config.eval.exclude_classes)
  record = outputs.record(step, split, result, trainer.dataset.class_names, exclude)
  record["checkpoint"] = config.eval.checkpoint
  record["resolution"] = config.eval.resolution
  if full:
    record["predict"] = options
  else:
    record["image_size"] = trainer.dataset.image_size
  table = metrics_lib.format_table(result, trainer.dataset.class_names, exclude)
  logging.info("%s checkpoint (step %d) on %s at %s resolution:\n%s", config.eval.checkpoint,
               step, split, config.eval.resolution, table)
  if jax.process_index() == 0:
    name = workdir_lib.eval_name(split, checkpoint=config.eval.checkpoint,
                                 full=named_options(trainer, options) if full else None)
    _write(trainer, run_dir, name, record, cm, table)
  return record


def _check_output_dir(config: ml_collections.ConfigDict, run_dir: RunDir) -> None:
  """Refuses, before anything is evaluated, an output folder (eval.output_dir, or the workdir)
  that cannot be written: a read-only workdir is evaluated with eval.output_dir set."""
  folder = config.eval.output_dir or run_dir.path
  if not storage.isdir(run_dir.path):
    raise errors.WorkdirError(f"--workdir {run_dir.path} is not a folder holding a run")
  try:
    storage.check_writable(folder)
  except OSError as e:
    raise errors.WorkdirError(
        f"cannot write the eval-only outputs to {folder} ({e.strerror}): "
        + ("the workdir is only read, so pass --config.eval.output_dir=DIR, a writable folder"
           if not config.eval.output_dir else "set eval.output_dir to a writable folder")) from e


def _trainer(config: ml_collections.ConfigDict, run_dir: RunDir,
             dataset: data_lib.Dataset | None) -> steps.Trainer:
  """The trainer of the evaluation; a data root that is missing and is the run's own (stored
  in its config.json) is named as such."""
  try:
    return steps.Trainer(config, dataset)
  except errors.DataError as e:
    root = config.data.root
    if (dataset is None and root and not storage.isdir(root) and run_dir.has_config()
        and run_dir.load_config().data.root == root):
      raise errors.DataError(
          f"{e} This data.root is the one the run was trained with, stored in "
          f"{run_dir.file(workdir_lib.CONFIG_FILE)}; if the data has moved, "
          "--config.data.root=DIR evaluates the run on it where it is now") from e
    raise


def _write(trainer: steps.Trainer, run_dir: RunDir, name: str, record: dict[str, Any],
           cm: np.ndarray, table: str) -> None:
  """eval_<name>.json, its table and confusion matrix into eval.output_dir (or the workdir),
  then a line naming each."""
  output_dir = trainer.config.eval.output_dir
  storage.makedirs(output_dir or run_dir.path)
  paths = (run_dir.eval_file(name, output_dir), run_dir.eval_table(name, output_dir),
           run_dir.confusion_matrix(name, output_dir))
  writers.write_json(paths[0], record)
  writers.write_text(paths[1], table + "\n")
  outputs.save_confusion_matrix(trainer, record, cm, paths[2])
  logging.info("wrote the scores to %s, the per-class table to %s and the confusion matrix to "
               "%s", *paths)


def named_options(trainer: steps.Trainer, options: dict[str, Any]) -> dict[str, Any]:
  """The prediction mode and each `full_resolution_options` option that changes the scores and
  differs from its default (`inference.predict`'s; the window's is the training size): what
  the name of a full-resolution evaluation holds."""
  defaults = {k: p.default for k, p in inspect.signature(inference.predict).parameters.items()}
  keys = ("tta", "scales") + (("overlap", "blend") if options["mode"] == "slide" else ())
  named = {"mode": options["mode"]}
  named.update({k: options[k] for k in keys
                if writers.to_jsonable(options[k]) != writers.to_jsonable(defaults[k])})
  if tuple(options["window"]) != tuple(trainer.dataset.image_size):
    named["window"] = tuple(options["window"])
  return named


def full_resolution_options(trainer: steps.Trainer) -> dict[str, Any]:
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


def evaluate_full_resolution(trainer: steps.Trainer, state: TrainState, examples,
                             options: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
  """Scores and confusion matrix of full-resolution examples, each predicted at its own size.

  Every image of `examples` ({image, label, name}, from `data.full_resolution_examples`) is
  predicted by `inference.predict` with `options` and compared with its label at the label's
  own size; a raster dataset's scenes ({scene, name}) are predicted and scored window by window
  (`seg_jax.scenes`), never read whole. The loss is the configured loss of the predicted probabilities (their logarithms
  in place of logits).
  """
  variables = state_lib.variables(state)
  d, n = trainer.dataset, trainer.num_classes
  ignore_index = trainer.config.data.ignore_index
  dtype = state_lib.dtype_from_name(trainer.config.model.dtype)
  cms, loss_sums = [], []
  for example in examples:
    if "scene" in example:  # a raster scene, read window by window
      scene_cms, scene_sums = scenes.score_scene(
          trainer.model, variables, example["scene"], num_classes=n, ignore_index=ignore_index,
          loss_fn=trainer.loss_fn, mean=d.mean, std=d.std, scale=d.bands.scale, dtype=dtype,
          **options)
      cms.extend(scene_cms)
      loss_sums.extend(scene_sums)
      continue
    start = time.time()
    probs = inference.predict(trainer.model, variables, example["image"], mean=d.mean, std=d.std,
                              dtype=dtype, **options)
    cm, sums = scenes.score_probabilities(probs, example["label"], num_classes=n,
                                          ignore_index=ignore_index, loss_fn=trainer.loss_fn)
    cms.append(cm)
    loss_sums.append(sums)
    logging.info("%s: %dx%d predicted and scored in %.1fs", example["name"],
                 probs.shape[1], probs.shape[0], time.time() - start)
  return trainer.scores(cms, loss_sums)

