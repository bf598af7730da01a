"""Eval-only scoring of a run's checkpoint: on a split at the training resolution, or each image
at its original resolution through `seg_jax.inference` (sliding windows, TTA, scales)."""

from __future__ import annotations

import os
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from seg_jax import data as data_lib
from seg_jax import errors
from seg_jax import inference
from seg_jax import losses
from seg_jax import metrics as metrics_lib
from seg_jax import models
from seg_jax import outputs
from seg_jax import state as state_lib
from seg_jax import steps
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
  <name> is the split, followed by "_full_<eval.predict.mode>" at full resolution, and logs
  the per-class table.
  """
  run_dir = RunDir(workdir)
  if not run_dir.check_config(config):
    logging.warning("%s does not exist; evaluating with the given config",
                    run_dir.file(workdir_lib.CONFIG_FILE))
  trainer = steps.Trainer(config, dataset)
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
    name = f"{split}_full_{options['mode']}"
  else:
    result, cm, _ = trainer.evaluate(state, split)
    name = split
  record = outputs.record(step, split, result, trainer.dataset.class_names)
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
    output_dir = config.eval.output_dir
    os.makedirs(output_dir or workdir, exist_ok=True)
    writers.write_json(run_dir.eval_file(name, output_dir), record)
    outputs.save_confusion_matrix(trainer, record, cm, run_dir.confusion_matrix(name, output_dir))
    writers.write_text(run_dir.eval_table(name, output_dir), table + "\n")
  return record


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
  own size. The loss is the configured loss of the predicted probabilities (their logarithms
  in place of logits).
  """
  variables = state_lib.variables(state)
  d, n = trainer.dataset, trainer.num_classes
  ignore_index = trainer.config.data.ignore_index
  dtype = state_lib.dtype_from_name(trainer.config.model.dtype)
  cms, loss_sums = [], []
  for example in examples:
    start = time.time()
    probs = inference.predict(trainer.model, variables, example["image"], mean=d.mean, std=d.std,
                              dtype=dtype, **options)
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

