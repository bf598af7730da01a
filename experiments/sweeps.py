"""What the course experiments that train share: a sweep run by ``seg_jax.sweep``'s runner from
Python, the data it reads, and scores on the training images.

Kept apart from ``experiments.common``: ``seg_jax.sweep`` defines command-line flags that
``seg_jax.predict`` defines too, so one program cannot import both.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from absl import logging
import numpy as np

from configs import dubai as dubai_config

from experiments import common
from seg_jax import config_files
from seg_jax import preemption
from seg_jax import results
from seg_jax import sweep as sweep_lib
from seg_jax import train
from seg_jax import viz
from seg_jax import writers


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


def run_sweep(config: Any, sweep: sweep_lib.Sweep, workdir: str
              ) -> tuple[list[sweep_lib.Run], sweep_lib.Runner]:
  """Trains and tests every run of ``sweep`` over ``config`` as ``python -m seg_jax.sweep`` does
  (a finished run is read back, an interrupted one resumed), then writes the sweep's
  results.md, results.csv and curves.png into ``workdir``.

  Returns the runs and the runner (whose ``dataset(config)`` reads each data config once).
  Raises RuntimeError naming the runs that failed.
  """
  runs = sweep_lib.expand(config, sweep, workdir)
  runner = sweep_lib.Runner(runs, workdir, max_replicas=1)
  runner.check()
  with preemption.PreemptionWatch() as preempt:
    if not runner.run(preempt):
      raise SystemExit("preempted: run the same command again to resume")
  if runner.failed:
    raise RuntimeError(f"runs failed: {', '.join(runner.failed)} (the log says why)")
  results.summarize(workdir, list(sweep.settings), sweep.seeds)
  return runs, runner


def train_split_scores(run: sweep_lib.Run, runner: sweep_lib.Runner) -> dict[str, Any]:
  """Scores of the run's last checkpoint on its training images, as evaluation sees them (no
  augmentation, no dropout): ``eval_train.json`` in its folder, computed once."""
  path = os.path.join(run.workdir, "eval_train.json")
  if os.path.exists(path):
    record = common.read_json(path)
    if record["step"] == run.config.train.num_steps:
      return record
  config = run.config.copy_and_resolve_references()
  config.train.mode, config.eval.split, config.eval.checkpoint = "eval", "train", "latest"
  config.lock()
  return train.evaluate_checkpoint(config, run.workdir, runner.dataset(config))


def loss_curves(runs: Sequence[sweep_lib.Run]) -> dict[str, tuple]:
  """Train loss (logged while training) and val loss of runs, mean and std over them."""
  val = [[(r["step"], r["loss"]) for r in writers.read_metrics(run.workdir) if r["split"] == "val"]
         for run in runs]
  return {"train loss": common.seed_mean([writers.read_scalars(run.workdir, "train/loss")
                                          for run in runs]),
          "val loss": common.seed_mean(val)}


def report(runs: Sequence[sweep_lib.Run], runner: sweep_lib.Runner, sweep: sweep_lib.Sweep,
           workdir: str, out: str) -> list[str]:
  """README sections of a sweep: what trained, the train-val gap of every setting (mean ± std
  over seeds) and ``out/curves.png`` (train and val loss per setting, val mIoU)."""
  rows, panels, mious = [], [], {}
  for setting in sweep.settings:
    mine = [run for run in runs if run.setting == setting]
    train_scores = [train_split_scores(run, runner) for run in mine]
    val = [writers.read_metrics(run.workdir)[-1] for run in mine]
    test = [common.read_json(os.path.join(run.workdir, results.TEST_RESULT)) for run in mine]

    def column(records, key):
      return [r[key] for r in records]

    rows.append([
        setting, common.mean_std_text(column(train_scores, "loss")),
        common.mean_std_text(column(val, "loss")),
        common.mean_std_text(np.subtract(column(val, "loss"), column(train_scores, "loss"))),
        common.mean_std_text(column(train_scores, "miou")),
        common.mean_std_text(column(val, "miou")),
        common.mean_std_text(np.subtract(column(train_scores, "miou"), column(val, "miou"))),
        common.mean_std_text(column(test, "miou"))])
    panels.append(viz.Curves(loss_curves(mine), title=setting, xlabel="step",
                             ylabel="cross-entropy", markers=True))
    mious[setting] = common.seed_mean([sorted(results.val_curve(run.workdir).items())
                                       for run in mine])
  panels.append(viz.Curves(mious, title="val mIoU", xlabel="step", ylabel="mIoU", markers=True))
  viz.save_curve_panels(panels, os.path.join(out, "curves.png"), ncols=3,
                        title="train loss (while training) and val loss per setting, val mIoU; "
                              f"mean ± std over {len(sweep.seeds)} seeds")
  first = runs[0].config
  seconds = [writers.read_metrics(run.workdir)[-1]["train_seconds"] for run in runs]
  return [
      f"Training set: {len(runner.dataset(first).train)} images ({first.data.name}, "
      f"{common.dims(first.data.image_size)}); {first.train.num_steps} steps of batch "
      f"{first.train.global_batch_size}; seeds {', '.join(map(str, sweep.seeds))}. Runs in "
      f"`{workdir}` (the sweep's own results: `{os.path.join(workdir, results.RESULTS_MD)}`). "
      f"Training loops, when the runs trained: {sum(seconds) / 60:.1f} minutes for the "
      f"{len(runs)} runs ({min(seconds):.0f}-{max(seconds):.0f} s each; compilation, "
      "evaluations and checkpoints included, data loading and test scoring not).",
      "Mean ± std over seeds. *train*: the last checkpoint scored on the training images as "
      "evaluation sees them (not augmented, no dropout, BatchNorm's running statistics); "
      "*val*: the same checkpoint on the val tiles; *test*: the best-val checkpoint on the test "
      "tiles.\n\n" + common.markdown_table(
          ["setting", "train loss", "val loss", "loss gap (val - train)", "train mIoU",
           "val mIoU", "mIoU gap (train - val)", "test mIoU"], rows),
      "![train and val loss per setting, val mIoU](curves.png)",
  ]


def run_experiment(args: argparse.Namespace, module: str, sweep_file: str, runs: str,
                   section: str = "") -> None:
  """An experiment that is a sweep: runs ``sweep_file``'s ``get_sweep("full")`` (``"toy"`` with
  ``--toy``) over ``configs/dubai.py`` on ``--data_root`` in ``runs`` (``<out>/runs`` with
  ``--toy``) and writes its ``report`` as README section ``section``."""
  logging.set_verbosity(logging.INFO)  # each run's progress
  sweep_module = config_files.load_module(sweep_file)
  sweep = on_data(sweep_lib.check_sweep(sweep_module.get_sweep("toy" if args.toy else "full"),
                                        f"sweep file {sweep_file}"), args.data_root)
  workdir = os.path.join(args.out, "runs") if args.toy else runs
  done, runner = run_sweep(dubai_config.get_config(), sweep, workdir)
  common.finish(args, module, report(done, runner, sweep, workdir, args.out), name=section)
