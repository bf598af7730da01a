"""Training of a segmentation model from a config: resume, the loop, the end of the run.

The parts, in data-flow order: `checks` (the config against its data and devices), `state`
(model and train state), `steps` (pure steps and the `Trainer` that jits them on the mesh),
`replicas` (several seeds in one program), `watchdog` (NaN/Inf), `outputs` (logs and end-of-run
files), `evaluate` (eval-only scoring); `seg_jax.workdir.RunDir` owns the run folder.

A run survives being killed at any point: every output of a step (its log lines, its evaluation
record and prediction grid) is written before the checkpoint of that step, and a rerun resumes
from the newest intact checkpoint after dropping what was logged past it, so a resumed run logs
each step once and ends with the same scores as an uninterrupted one. A rerun of a run whose
last checkpoint is saved completes whatever is missing (final evaluation, curves.png,
confusion matrix, final_metrics.json).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from absl import logging
import jax
import ml_collections

from seg_jax import checkpoint as checkpoint_lib
from seg_jax import checks
from seg_jax import compilation
from seg_jax import data as data_lib
from seg_jax import errors
from seg_jax import evaluate
from seg_jax import init_from
from seg_jax import optim
from seg_jax import outputs
from seg_jax import preemption
from seg_jax import replicas
from seg_jax import state as state_lib
from seg_jax import steps
from seg_jax import watchdog
from seg_jax import writers
from seg_jax.workdir import RunDir
from seg_jax import workdir as workdir_lib


@dataclasses.dataclass
class Outcome:
  """How a run ended: the final record of each of its runs, or the step it was preempted at."""

  finals: list[dict[str, Any]]  # one per run (per replica); [] when preempted
  preempted: bool = False
  step: int = 0  # the step of the checkpoint saved on preemption

  @property
  def final(self) -> dict[str, Any]:
    """The final record of the (first) run."""
    return self.finals[0]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       dataset: data_lib.Dataset | None = None,
                       trainer: steps.Trainer | None = None) -> Outcome:
  """Trains (resuming from `workdir` if it holds a checkpoint) and evaluates.

  Writes the run folder's files (`seg_jax.workdir`), holding its lock (`RunDir.lock`) all the
  while. With `train.num_replicas` = S > 1 it
  trains S replicas in one program, replica k into `<workdir>/seed<seed + k>` with the files
  and config that seed trained alone would write, and returns the final record of each. On a
  preemption notice it saves a checkpoint and returns an `Outcome` with `preempted` set.
  `trainer` (default: built from `config` and `dataset`) is one built for `config` already,
  whose compiled steps serve run after run (benchmarks/loop_bench.py).
  Raises:
    RunError: the config, data or workdir cannot give this run (before anything is compiled
      or written), the loss became NaN/Inf, or a file could not be written.
  """
  checks.check_values(config)
  with RunDir(workdir).lock():
    return _train(config, workdir, dataset, trainer)


def _train(config: ml_collections.ConfigDict, workdir: str, dataset: data_lib.Dataset | None,
           trainer: steps.Trainer | None) -> Outcome:
  """`train_and_evaluate` in its locked workdir."""
  # An extension keeps the schedule of the run's first launch (of its first replica's).
  config = workdir_lib.replica_runs(config, RunDir(workdir))[0][1].resolve_schedule(config)
  runs = workdir_lib.replica_runs(config, RunDir(workdir))
  for run_config, run_dir in runs:
    run_dir.check_config(run_config)
  run_dirs = [run_dir for _, run_dir in runs]
  if trainer is None:
    trainer = replicas.create_trainer(config, dataset)
  _log_schedule_end(config, trainer)
  ckpts = [run_dir.checkpointer(config.train.keep_checkpoints) for run_dir in run_dirs]
  try:
    restored = replicas.restore_together(ckpts, trainer.abstract_state)
    step = 0 if restored[0] is None else restored[0].step
    if step > config.train.num_steps:
      raise errors.WorkdirError(
          f"{workdir} holds a run trained to step {step}, past train.num_steps="
          f"{config.train.num_steps}; pass --config.train.num_steps={step} or more, or use a "
          "new --workdir")
    if step:
      logging.info("resumed from step %d in %s", step, workdir)
    done = [run_dir.final_record(step) for run_dir in run_dirs]
    if step == config.train.num_steps and all(final is not None for final in done):
      logging.info("%s already holds a finished run of %d steps", workdir, step)
      return Outcome(done)
    relog = _prepare_folders(trainer, runs, step)
    if step < config.train.num_steps:
      initial = None if restored[0] is not None else _initial_weights(trainer)
      return _Loop(trainer, run_dirs, ckpts, restored, initial, [c for c, _ in runs],
                   relog).run()
    return _complete(trainer, run_dirs, restored, step)
  finally:
    for ckpt in ckpts:
      ckpt.close()


def _prepare_folders(trainer: steps.Trainer, runs: list[tuple[ml_collections.ConfigDict, RunDir]],
                     step: int) -> list[bool]:
  """Drops what was logged past `step`, rewrites config.json and dataset.json of a resumed run
  (a fresh one writes them with its first checkpoint, `_Loop._save`), and says which runs lost
  the metrics.jsonl record of `step` itself (to be written again from the restored state);
  records of earlier steps that were lost are named in a warning."""
  relog = [False] * len(runs)
  if jax.process_index() != 0:
    return relog
  split = trainer.config.eval.split
  for k, (run_config, run_dir) in enumerate(runs):
    run_dir.discard_after(step)
    if step:
      _save_run_files(trainer, run_config, run_dir)
    lost = run_dir.lost_evaluations(step, split)
    earlier = [s for s in lost if s != step]
    if earlier:
      logging.warning("%s lost the records of steps %s (a damaged file; TensorBoard's events "
                      "still hold their %s scalars)", run_dir.file(workdir_lib.METRICS_FILE),
                      earlier, split)
    relog[k] = step in lost and jax.process_count() == 1  # evaluating is a collective
  return relog


def _save_run_files(trainer: steps.Trainer, run_config: ml_collections.ConfigDict,
                    run_dir: RunDir) -> None:
  """config.json and dataset.json: what the run trains with and what prediction needs."""
  run_dir.save_config(run_config)
  run_dir.save_data_info(trainer.dataset)


def _log_schedule_end(config: ml_collections.ConfigDict, trainer: steps.Trainer) -> None:
  """Says when the run goes on past its learning-rate schedule (an extended run)."""
  length = optim.schedule_length(config.optim, config.train.num_steps)
  if config.train.num_steps > length:
    final = float(trainer.schedule(optim.num_updates(config.optim, length)))
    logging.warning(
        "train.num_steps=%d goes past the learning-rate schedule of %d steps "
        "(optim.schedule_steps, kept from the run's first launch): steps %d-%d run at its final "
        "rate %.2e; pass --config.optim.schedule_steps=%d to stretch the schedule instead",
        config.train.num_steps, length, length + 1, config.train.num_steps, final,
        config.train.num_steps)


def _complete(trainer: steps.Trainer, run_dirs: list[RunDir],
              restored: list[checkpoint_lib.Restored], step: int) -> Outcome:
  """The end-of-run outputs of runs killed after their last checkpoint."""
  logs = outputs.run_logs(trainer, run_dirs)
  try:
    state = trainer.stack([r.state for r in restored])
    return Outcome(outputs.finish(trainer, state, step, run_dirs, None, logs,
                                  [r.seconds for r in restored]))
  finally:
    for log in logs:
      log.close()


def _initial_weights(trainer: steps.Trainer) -> init_from.Initial | None:
  """The variables `model.init_from` gives a fresh run (None: all from the seed), checked
  against the model and logged; a resumed run restores its own checkpoint instead."""
  initial = init_from.load(trainer.config.model, trainer.model, trainer.abstract_state,
                           trainer.dataset.bands)
  if initial is not None:
    logging.info("%s", init_from.describe(initial))
  return initial


class _Loop:
  """The training loop of a trainer's runs, from their restored checkpoints (or a fresh state
  with `initial`'s variables) to `train.num_steps`.

  Training time is counted per run as its share of this program's wall time (1/S of it for S
  replicas), on top of the time saved with the restored checkpoint.
  """

  def __init__(self, trainer: steps.Trainer, run_dirs: list[RunDir],
               ckpts: list[checkpoint_lib.Checkpointer],
               restored: list[checkpoint_lib.Restored | None],
               initial: init_from.Initial | None, configs: list[ml_collections.ConfigDict],
               relog: list[bool]):
    self.trainer, self.run_dirs, self.ckpts = trainer, run_dirs, ckpts
    self.configs, self.relog = configs, relog
    # Recorded with each checkpoint; config.json is written with a fresh run's first one.
    self.recorded = [writers.to_jsonable(c.to_dict()) for c in configs]
    self.unwritten = restored[0] is None
    self.config = trainer.config
    self.pipelines = [trainer.train_pipeline(seed) for seed in trainer.seeds]
    if restored[0] is None:
      self.state, self.step, self.seconds = trainer.initial_state(), 0, [0.0] * len(ckpts)
      if initial is not None:
        self.state = trainer.stack([init_from.apply(trainer.replica(self.state, k), initial)
                                    for k in range(len(trainer.seeds))])
    else:
      self.state = trainer.stack([r.state for r in restored])
      self.step, self.seconds = restored[0].step, [r.seconds for r in restored]
      for pipeline, r in zip(self.pipelines, restored):
        pipeline.set_state(r.pipeline)
    logging.info("%s", state_lib.describe_parameters(self.config, trainer.abstract_state))
    self.saved = [self.step] if restored[0] is not None else []
    self.pending = watchdog.StepMetrics(watchdog.non_finite_message(
        self.config, [d.path for d in run_dirs], lambda: self.saved[-1] if self.saved else None))
    self.evaluations = None
    self.elapsed = self.seconds
    self.start_step = self.step

  def run(self) -> Outcome:
    """Trains to the end (or a preemption notice) and writes the end-of-run outputs."""
    c = self.config.train
    step_key = self.trainer.step_key()
    self.logs = outputs.run_logs(self.trainer, self.run_dirs)
    for log in self.logs:
      log.restart_clock(self.step)
    self.start = time.time()
    try:
      if any(self.relog):
        self._relog()
      with preemption.PreemptionWatch() as preempt:
        while self.step < c.num_steps:
          if self.step == self.start_step:
            self._compiling_step(step_key)
          else:
            self._step(step_key)
          if self._after_step(preempt.reached(self.step)):
            return Outcome([], preempted=True, step=self.step)
      for ckpt in self.ckpts:
        ckpt.wait()  # final outputs only once the last checkpoint is committed
      return Outcome(outputs.finish(self.trainer, self.state, self.step, self.run_dirs,
                                    self.evaluations, self.logs, self.elapsed))
    finally:
      for log in self.logs:
        log.close()

  def _relog(self) -> None:
    """Writes the lost metrics.jsonl records of the restored step again (its evaluation is a
    function of the restored state, so the record is the one that was lost)."""
    logging.warning("%s lost the record of step %d (a line cut short): evaluating the "
                    "restored checkpoint to write it again",
                    ", ".join(d.file(workdir_lib.METRICS_FILE) for d, again in
                              zip(self.run_dirs, self.relog) if again), self.step)
    for log, evaluation, seconds, again in zip(
        self.logs, self.trainer.evaluate_all(self.state), self.seconds, self.relog):
      if again:
        log.record(self.step, evaluation, seconds)

  def _step(self, step_key: jax.Array) -> None:
    """One train step of every run, its metrics kept for the watchdog and the logs."""
    self.state, step_metrics = self.trainer.train_step(
        self.state, self.trainer.next_batch(self.pipelines), step_key)
    self.step += 1
    self.pending.add(self.step, step_metrics)

  def _compiling_step(self, step_key: jax.Array) -> None:
    """The program's first step, which compiles the train step: logged before and after, with
    whether the persistent compilation cache held it."""
    folder = compilation.cache_folder()
    logging.info("compiling the train step (persistent compilation cache: %s) ...",
                 folder or "off")
    with compilation.CompileLog() as log:
      self._step(step_key)
    name = next((n for n in log.compiles if "train_step" in str(n)), None)
    if name is None:
      logging.info("train step compiled earlier in this process")
    else:
      logging.info("train step ready in %.1fs (cached: %s)", log.seconds[name],
                   "yes, loaded from the persistent cache" if log.cache_hits[name] else "no")

  def _after_step(self, preempted: bool) -> bool:
    """Logs, evaluates and saves as the step calls for; True when preempted before the end."""
    for ckpt in self.ckpts:
      ckpt.check()  # a save that failed in the background stops the run now
    c, step = self.config.train, self.step
    last = step == c.num_steps
    eval_now = step % c.eval_every == 0 or last
    save_now = step % c.checkpoint_every == 0 or eval_now or preempted
    if step % c.log_every == 0 or last:
      logged = self.pending.drain()
      for k, log in enumerate(self.logs):
        log.train(step, [(s, {name: v[k] for name, v in m.items()}) for s, m in logged])
    elif save_now:
      self.pending.drain()  # nothing non-finite may be saved
    if eval_now:
      self.evaluations = self.trainer.evaluate_all(self.state)
    if eval_now or save_now:
      share = (time.time() - self.start) / len(self.ckpts)
      self.elapsed = [s + share for s in self.seconds]
    if eval_now:
      for log, evaluation, t in zip(self.logs, self.evaluations, self.elapsed):
        log.evaluation(step, evaluation, t)
    if save_now:
      self._save(eval_now)
    if preempted and not last:
      for ckpt in self.ckpts:
        ckpt.wait()
      logging.warning("preempted: checkpoint saved at step %d in %s", step,
                      ", ".join(d.path for d in self.run_dirs))
      return True
    return False

  def _save(self, evaluated: bool) -> None:
    """Checkpoints every run after everything logged up to this step is on disk."""
    for log in self.logs:
      log.writer.flush()
    if self.unwritten and jax.process_index() == 0:
      for run_config, run_dir in zip(self.configs, self.run_dirs):
        _save_run_files(self.trainer, run_config, run_dir)
    self.unwritten = False
    for k, (ckpt, pipeline) in enumerate(zip(self.ckpts, self.pipelines)):
      ckpt.save(self.step, self.trainer.replica(self.state, k), pipeline.get_state(),
                miou=self.evaluations[k].scores["miou"] if evaluated else None,
                seconds=self.elapsed[k], config=self.recorded[k])
    self.saved.append(self.step)
    for log in self.logs:
      log.restart_clock(self.step)  # img/s and ETA leave evaluations and saves out


def run(config: ml_collections.ConfigDict, workdir: str) -> Outcome:
  """Dispatches on `config.train.mode`: "train", or "eval" (its record as the final one)."""
  if config.train.mode == "train":
    return train_and_evaluate(config, workdir)
  if config.train.mode == "eval":
    return Outcome([evaluate.evaluate_checkpoint(config, workdir)])
  raise errors.ConfigError(f"train.mode must be 'train' or 'eval', got {config.train.mode!r}")
