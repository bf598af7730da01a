"""What the course experiments that train share: their toy size, running a sweep or one run from
Python as the seg_jax commands do, a run's scores read back, and the report of a sweep.

An experiment states its runs as config overrides (``"group.field": value``, applied by
``seg_jax.sweep.apply_overrides``) and its toy size as overrides laid over those (``TOY``, and
``toy`` for a sweep), so a toy run goes through the same code at tiny sizes. Training sets the
config's persistent compilation cache, as the commands do, and a run that is finished is read
back, not trained again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Optional

from absl import logging
import ml_collections
import numpy as np

from configs import dubai as dubai_config
from experiments import common
from seg_jax import compilation
from seg_jax import data as data_lib
from seg_jax import errors
from seg_jax import evaluate
from seg_jax import preemption
from seg_jax import results
from seg_jax import sweep as sweep_lib
from seg_jax import train as train_lib
from seg_jax import viz
from seg_jax import workdir as workdir_lib
from seg_jax import writers

# The budget of a toy run: what the tests train.
TOY = {"data.image_size": (32, 32), "train.global_batch_size": 2, "eval.global_batch_size": 2,
       "train.num_steps": 2, "train.eval_every": 2, "train.checkpoint_every": 2,
       "train.log_every": 1}
# The proposal of a toy run: arguments of configs/default.py's asym_unet_kwargs, every part kept.
TOY_PROPOSAL = dict(widths=(4, 8), blocks=1, decoder_widths=(4,), aspp_features=4,
                    se_reduction=2)


class Stopped(errors.RunError):
  """Training stopped before every run finished: preempted (rerun to resume) or runs failed."""

  kind = "training"

  def __init__(self, message: str, exit_code: int):
    super().__init__(message)
    self.exit_code = exit_code


def toy(sweep: sweep_lib.Sweep, settings: Mapping[str, Mapping[str, Any]]) -> sweep_lib.Sweep:
  """The toy version of ``sweep``: the ``settings`` it names, each with its toy overrides laid
  over its own, on the first seed."""
  return sweep_lib.Sweep({name: {**sweep.settings[name], **overrides}
                          for name, overrides in settings.items()}, sweep.seeds[:1])


def on_data(sweep: sweep_lib.Sweep, root: str) -> sweep_lib.Sweep:
  """``sweep`` with every setting reading the Dubai folder ``root``, or for ``root=""`` the
  synthetic scenes, as many training scenes as the setting's ``data.train_subset`` (or 64)."""
  def data(overrides):
    if root:
      return {"data.root": root}
    return {"data.name": "synthetic_aerial", "data.root": "", "data.train_subset": 0,
            "data.num_train": overrides.get("data.train_subset", 0) or 64,
            "data.num_val": 16, "data.num_test": 16}
  return sweep_lib.Sweep({name: {**o, **data(o)} for name, o in sweep.settings.items()},
                         sweep.seeds)


class SweepRuns(NamedTuple):
  """A sweep that ran: its runs, the runner (``dataset(config)`` reads each data config once)
  and the rows of its results."""

  runs: list[sweep_lib.Run]
  runner: sweep_lib.Runner
  rows: list[dict[str, Any]]


def run_sweep(config: ml_collections.ConfigDict, sweep: sweep_lib.Sweep, workdir: str
              ) -> SweepRuns:
  """Trains and tests every run of ``sweep`` over ``config`` in ``workdir`` as
  ``python -m seg_jax.sweep`` does (one run per program; a finished run is read back, an
  interrupted one resumed), then writes the sweep's results.md, results.csv and curves.png.

  Raises Stopped when preempted or when runs failed (each named).
  """
  compilation.use_persistent_cache(config.train.compilation_cache_dir)
  runs = sweep_lib.expand(config, sweep, workdir)
  runner = sweep_lib.Runner(runs, workdir, max_replicas=1)
  runner.check()
  with preemption.PreemptionWatch() as preempt:
    if not runner.run(preempt):
      raise Stopped("preempted: run the same command again to resume", errors.EXIT_PREEMPTED)
  if runner.failed:
    raise Stopped(f"runs failed: {', '.join(runner.failed)} (the log says why)",
                  errors.EXIT_SOME_FAILED)
  rows = results.summarize(workdir, sweep.seeds_by_setting())
  return SweepRuns(runs, runner, rows)


def train(config: ml_collections.ConfigDict, workdir: str,
          dataset: Optional[data_lib.Dataset] = None) -> None:
  """Trains one run in ``workdir`` as ``python -m seg_jax.main`` does (resumed if interrupted),
  unless it is finished. Raises Stopped when preempted."""
  compilation.use_persistent_cache(config.train.compilation_cache_dir)
  if workdir_lib.RunDir(workdir).final_record(config.train.num_steps) is not None:
    return
  if train_lib.train_and_evaluate(config, workdir, dataset).preempted:
    raise Stopped("preempted: run the same command again to resume", errors.EXIT_PREEMPTED)


def train_and_test(config: ml_collections.ConfigDict, workdir: str,
                   dataset: Optional[data_lib.Dataset] = None) -> dict[str, Any]:
  """``train``, then the best-val checkpoint scored on the test split as the sweep runner
  scores a run; returns the test record."""
  train(config, workdir, dataset)
  return evaluate.evaluate_checkpoint(sweep_lib.test_config(config), workdir, dataset)


class Records(NamedTuple):
  """What a run logged: its evaluations on val while training (by step) and its test scores
  (None before it is tested)."""

  val: list[dict[str, Any]]
  test: Optional[dict[str, Any]]


def records(workdir: str) -> Records:
  """The records of the run in ``workdir``."""
  run_dir = workdir_lib.RunDir(workdir)
  return Records([r for r in run_dir.metrics() if r["split"] == "val"],
                 run_dir.eval_record(results.TEST_SPLIT))


def train_split_scores(run: sweep_lib.Run, runner: sweep_lib.Runner) -> dict[str, Any]:
  """Scores of the run's last checkpoint on its training images, as evaluation sees them (no
  augmentation, no dropout): its eval-only record of the train split, computed once."""
  record = workdir_lib.RunDir(run.workdir).eval_record(
      workdir_lib.eval_name("train", checkpoint="latest"))
  if record is not None and record["step"] == run.config.train.num_steps:
    return record
  config = run.config.copy_and_resolve_references()
  config.train.mode, config.eval.split, config.eval.checkpoint = "eval", "train", "latest"
  config.lock()
  return evaluate.evaluate_checkpoint(config, run.workdir, runner.dataset(config))


def loss_curves(runs: Sequence[sweep_lib.Run]) -> dict[str, tuple]:
  """Train loss (logged while training) and val loss of runs, mean and std over them."""
  val = [[(r["step"], r["loss"]) for r in records(run.workdir).val] for run in runs]
  train_loss = [workdir_lib.RunDir(run.workdir).scalars("train/loss") for run in runs]
  return {"train loss": common.seed_mean(train_loss), "val loss": common.seed_mean(val)}


def _gap_row(setting: str, train_scores: Sequence[dict], val: Sequence[dict],
             test: Sequence[dict]) -> list[str]:
  """A row of the train-val gap table: losses, mIoUs and their gaps, mean ± std over seeds."""
  def column(records_, key):
    return [r[key] for r in records_]

  return [
      setting, common.mean_std_text(column(train_scores, "loss")),
      common.mean_std_text(column(val, "loss")),
      common.mean_std_text(np.subtract(column(val, "loss"), column(train_scores, "loss"))),
      common.mean_std_text(column(train_scores, "miou")),
      common.mean_std_text(column(val, "miou")),
      common.mean_std_text(np.subtract(column(train_scores, "miou"), column(val, "miou"))),
      common.mean_std_text(column(test, "miou"))]


def report(done: SweepRuns, sweep: sweep_lib.Sweep, workdir: str, out: str) -> list[str]:
  """README sections of a sweep: what trained, the train-val gap of every setting (mean ± std
  over seeds) and ``out/curves.png`` (train and val loss per setting, val mIoU)."""
  rows, panels, mious = [], [], {}
  for setting in sweep.settings:
    mine = [run for run in done.runs if run.setting == setting]
    logged = [records(run.workdir) for run in mine]
    rows.append(_gap_row(setting, [train_split_scores(run, done.runner) for run in mine],
                         [r.val[-1] for r in logged], [r.test for r in logged]))
    panels.append(viz.Curves(loss_curves(mine), title=setting, xlabel="step",
                             ylabel="cross-entropy", markers=True))
    mious[setting] = common.seed_mean([sorted(results.val_curve(run.workdir).items())
                                       for run in mine])
  panels.append(viz.Curves(mious, title="val mIoU", xlabel="step", ylabel="mIoU", markers=True))
  viz.save_curve_panels(panels, os.path.join(out, "curves.png"), ncols=3,
                        title="train loss (while training) and val loss per setting, val mIoU; "
                              f"mean ± std over {len(sweep.seeds)} seeds")
  first = done.runs[0].config
  seconds = [records(run.workdir).val[-1]["train_seconds"] for run in done.runs]
  return [
      f"Training set: {len(done.runner.dataset(first).train)} images ({first.data.name}, "
      f"{common.dims(first.data.image_size)}); {first.train.num_steps} steps of batch "
      f"{first.train.global_batch_size}; seeds {', '.join(map(str, sweep.seeds))}. Runs in "
      f"`{workdir}` (the sweep's own results: `{os.path.join(workdir, results.RESULTS_MD)}`). "
      f"Training loops, when the runs trained: {sum(seconds) / 60:.1f} minutes for the "
      f"{len(done.runs)} runs ({min(seconds):.0f}-{max(seconds):.0f} s each; compilation, "
      "evaluations and checkpoints included, data loading and test scoring not).",
      "Mean ± std over seeds. *train*: the last checkpoint scored on the training images as "
      "evaluation sees them (not augmented, no dropout, BatchNorm's running statistics); "
      "*val*: the same checkpoint on the val tiles; *test*: the best-val checkpoint on the test "
      "tiles.\n\n" + writers.markdown_table(
          ["setting", "train loss", "val loss", "loss gap (val - train)", "train mIoU",
           "val mIoU", "mIoU gap (train - val)", "test mIoU"], rows),
      "![train and val loss per setting, val mIoU](curves.png)",
  ]


def run_experiment(options: common.Options, module: str, sweep_file: str,
                   toy_settings: Mapping[str, Mapping[str, Any]], runs: str,
                   section: str = "") -> None:
  """An experiment that is a sweep: runs ``sweep_file`` (with ``--toy``: ``toy`` of it with
  ``toy_settings``, in ``<out>/runs``; else in ``runs``) over ``configs/dubai.py`` on
  ``--data_root`` and writes its ``report`` as README section ``section``."""
  logging.set_verbosity(logging.INFO)  # each run's progress
  sweep = sweep_lib.load_sweep(sweep_file)
  if options.toy:
    sweep = toy(sweep, toy_settings)
  sweep = on_data(sweep, options.data_root)
  workdir = os.path.join(options.out, "runs") if options.toy else runs
  done = run_sweep(dubai_config.get_config(), sweep, workdir)
  common.finish(options, module, report(done, sweep, workdir, options.out), name=section)
