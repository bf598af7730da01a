"""What a run writes: its log as it trains (console lines, TensorBoard, metrics.jsonl, prediction
grids) and its end-of-run outputs (curves.png, confusion_matrix.png, final_metrics.json).

Every output of a step is written before the checkpoint of that step, so a rerun that replays a
step writes the same files again; final_metrics.json, the record that marks a run finished, is
written last.
"""

from __future__ import annotations

import time
from typing import Any

from absl import logging
import jax
import numpy as np

from seg_jax import optim
from seg_jax import steps
from seg_jax import viz
from seg_jax import writers
from seg_jax.state import TrainState
from seg_jax.workdir import RunDir


def record(step: int, split: str, result: dict[str, Any], class_names,
           exclude: tuple[str, ...] = ()) -> dict[str, Any]:
  """metrics.jsonl record: scalar scores plus per-class scores keyed by class name, and the
  classes the `_excluding` scores leave out (`exclude_classes`, when there are any)."""
  out: dict[str, Any] = {"step": step, "split": split}
  for key, value in result.items():
    if np.ndim(value) == 1:
      out[key] = dict(zip(class_names, np.asarray(value).tolist()))
    else:
      out[key] = float(value)
  if exclude:
    out["exclude_classes"] = list(exclude)
  return out


def miou_text(result: dict[str, Any], exclude: tuple[str, ...]) -> str:
  """'mIoU 0.4012' and, with excluded classes, ' (0.4815 w/o unlabeled)'."""
  text = f"mIoU {result['miou']:.4f}"
  if exclude:
    text += f" ({result['miou_excluding']:.4f} w/o {', '.join(exclude)})"
  return text


def format_duration(seconds: float) -> str:
  """'1h02m03s' / '2m03s' / '4s'."""
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class RunLog:
  """What a run writes as it goes: console lines, TensorBoard, metrics.jsonl.

  `label` starts its console lines (which replica they belong to; "" for one run).
  """

  def __init__(self, trainer: steps.Trainer, run_dir: RunDir, label: str = ""):
    self.trainer = trainer
    self.config = trainer.config
    self.run_dir = run_dir
    self.label = label
    self.writer = run_dir.metric_writer()
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
                 format_duration((c.num_steps - step) / max(rate, 1e-9)))
    self.restart_clock(step)

  def evaluation(self, step: int, evaluation: steps.Evaluation, seconds: float) -> None:
    """metrics.jsonl record (with the training time so far), TensorBoard scores and panels, the
    prediction grid, and a console line."""
    split = self.config.eval.split
    palette = self.trainer.dataset.palette
    names = palette.names
    result, samples = evaluation.scores, evaluation.samples
    exclude = tuple(self.config.eval.exclude_classes)
    self.record(step, evaluation, seconds)
    self.writer.scalars(step, {f"{split}/{k}": v for k, v in result.items() if np.ndim(v) == 0})
    self.writer.scalars(step, {f"{split}/iou/{n}": v for n, v in zip(names, result["iou"])})
    self.writer.images(step, {f"{split}/prediction_{i}": viz.prediction_panel(*s, palette)
                              for i, s in enumerate(samples)})
    self.writer.flush()
    self.save_prediction_grid(step, samples)
    logging.info("%seval %s at step %d: %s  pixel acc %.4f  loss %.4f", self.label, split,
                 step, miou_text(result, exclude), result["pixel_accuracy"], result["loss"])

  def record(self, step: int, evaluation: steps.Evaluation, seconds: float) -> None:
    """The metrics.jsonl record of an evaluation, with the training time so far."""
    self.writer.jsonl({**record(step, self.config.eval.split, evaluation.scores,
                                self.trainer.dataset.palette.names,
                                tuple(self.config.eval.exclude_classes)),
                       "train_seconds": seconds})

  def save_prediction_grid(self, step: int, samples: list[tuple[np.ndarray, ...]]) -> None:
    """predictions/step_<step>.png: image | truth | prediction | errors rows, class legend.

    Written atomically and before the step's checkpoint, like the other logs: a rerun that
    replays the step writes the same picture again.
    """
    if not samples or jax.process_index() != 0:
      return
    path = self.run_dir.prediction_grid(step)
    writers.makedirs_for(path)
    writers.write_png(path, viz.prediction_grid(*zip(*samples), self.trainer.dataset.palette))

  def has_evaluation(self, step: int) -> bool:
    """Whether metrics.jsonl already holds the evaluation of `step`."""
    return any(r["step"] == step for r in self.run_dir.metrics())

  def close(self) -> None:
    self.writer.close()


def run_logs(trainer: steps.Trainer, run_dirs: list[RunDir]) -> list[RunLog]:
  """One `RunLog` per run of the trainer; console lines name the seed when there are several."""
  several = len(trainer.seeds) > 1
  return [RunLog(trainer, run_dir, f"seed {seed}: " if several else "")
          for seed, run_dir in zip(trainer.seeds, run_dirs)]


def write_curves(run_dir: RunDir, title: str) -> None:
  """curves.png: train loss (TensorBoard events), val loss and mIoU (metrics.jsonl) vs step."""
  records = [{"step": step, "split": "train", "loss": loss}
             for step, loss in run_dir.scalars("train/loss")]
  viz.save_run_curves(records + run_dir.metrics(), run_dir.curves(), title=title)


def save_confusion_matrix(trainer: steps.Trainer, record_: dict[str, Any], matrix: np.ndarray,
                          path: str) -> None:
  """The confusion matrix PNG of an evaluation record, titled with the model, split and step."""
  resolution = f", {record_['resolution']} resolution" if "resolution" in record_ else ""
  viz.save_confusion_matrix(
      matrix, trainer.dataset.class_names, path,
      title=f"{trainer.config.model.name} {record_['split']} step {record_['step']}{resolution}")


def finish(trainer: steps.Trainer, state: TrainState, step: int, run_dirs: list[RunDir],
           evaluations: list[steps.Evaluation] | None, logs: list[RunLog],
           seconds: list[float]) -> list[dict[str, Any]]:
  """Writes curves.png, confusion_matrix.png and final_metrics.json of each run's last step.

  `evaluations` are the last step's evaluations of each run if this process just computed them.
  Otherwise (a rerun of runs killed after their last checkpoint) the state is evaluated again
  and its record (with training time `seconds`) is added to metrics.jsonl where the killed run
  did not write it. A replica that already wrote final_metrics.json (a replica resumed behind
  its own end) keeps it.
  """
  rewritten = evaluations is None
  if rewritten:
    evaluations = trainer.evaluate_all(state)
  finals = []
  for run_dir, log, evaluation, run_seconds in zip(run_dirs, logs, evaluations, seconds):
    done = run_dir.final_record(step)
    if done is not None:
      finals.append(done)
      continue
    if rewritten and not log.has_evaluation(step):
      log.evaluation(step, evaluation, run_seconds)
    final = record(step, trainer.config.eval.split, evaluation.scores,
                   trainer.dataset.class_names, tuple(trainer.config.eval.exclude_classes))
    if jax.process_index() == 0:
      write_curves(run_dir, trainer.config.model.name)  # before the file that marks the end
      save_confusion_matrix(trainer, final, evaluation.matrix, run_dir.confusion_matrix())
      run_dir.write_final(final)
      logging.info("%s", run_dir.listing())
    finals.append(final)
  return finals
