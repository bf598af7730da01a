"""Transfer learning on the Dubai tiles: a model pretrained on synthetic aerial scenes, fine-tuned
with its backbone frozen, at a tenth of the learning rate or fully trained, against the same
model trained from scratch at the same budget.

    python -m experiments.transfer_learning.run [--out=DIR] [--data_root=DIR] [--toy]

1. Pretraining: ``configs/dubai.py:asym_unet`` trained on ``synthetic_aerial`` scenes at the
   Dubai size (144x256), whose six classes are the Dubai ones (``PRETRAIN``).
2. Fine-tuning on the Dubai tiles for ``FINETUNE_STEPS`` steps, per seed in ``SEEDS``:
   ``model.init_from`` names the pretraining workdir (its best checkpoint, every variable:
   ``model.init_part=model``) and ``optim.backbone`` is ``freeze``, ``scale`` (learning rate x
   ``optim.backbone_lr_factor`` = 0.1) or ``train``; ``scratch`` is the same config without
   ``init_from`` (``ARMS``).
3. Every run's best-validation checkpoint is evaluated on the test tiles.

Runs live in ``RUNS`` (``<out>/runs`` with ``--toy``, which trains ``TOY``), the wall time of each
in ``RUNS/timing.json``; a finished run is read back, not trained again, so an interrupted
command picks up where it stopped. The README section lists every run as the ``seg_jax.main``
command it is, with tables, curves and the wall time of each run.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from configs import default
from configs import dubai as dubai_config
from experiments import common
from experiments import sweeps
from seg_jax import sweep
from seg_jax import viz
from seg_jax import workdir as workdir_lib
from seg_jax import writers
from seg_jax.data import palettes

FOLDER = os.path.dirname(os.path.abspath(__file__))
RUNS = os.path.join(tempfile.gettempdir(), "transfer_learning")
ARCH = "asym_unet"
SEEDS = (0, 1)
PRETRAIN_STEPS = 300
FINETUNE_STEPS = 100
EVAL_EVERY = 20
PRETRAIN_EVAL_EVERY = 100
PRETRAIN = {"data.name": "synthetic_aerial", "data.root": "", "data.num_train": 1024,
            "data.num_val": 64, "data.num_test": 32}
# Fine-tuning arm -> its overrides; "<pretrain>" stands for the pretraining workdir.
ARMS = {
    "scratch": {},
    "frozen": {"model.init_from": "<pretrain>", "model.init_part": "model",
               "optim.backbone": "freeze"},
    "low_lr": {"model.init_from": "<pretrain>", "model.init_part": "model",
               "optim.backbone": "scale"},
    "full": {"model.init_from": "<pretrain>", "model.init_part": "model",
             "optim.backbone": "train"},
}
TOY = {**sweeps.TOY, "model.kwargs": default.asym_unet_kwargs(**sweeps.TOY_PROPOSAL)}
TOY_DATA = {"data.num_train": 4, "data.num_val": 2, "data.num_test": 2}


def overrides_for(name: str, seed: int, steps: int, runs: str, toy: bool,
                  data_root: str) -> dict[str, Any]:
  """Config overrides (``"group.field": value``) of run ``name`` ("pretrain" or an arm)."""
  out = {"seed": seed, "train.num_steps": steps, "train.eval_every": EVAL_EVERY,
         "train.checkpoint_every": EVAL_EVERY, "train.log_every": EVAL_EVERY,
         "train.compilation_cache_dir": os.path.join(runs, "xla_cache")}
  if toy:
    out.update(TOY)
  if name == "pretrain":
    every = {} if toy else {"train.eval_every": PRETRAIN_EVAL_EVERY,
                            "train.checkpoint_every": PRETRAIN_EVAL_EVERY}
    return {**out, **every, **PRETRAIN, **(TOY_DATA if toy else {})}
  out["data.root"] = data_root
  pretrain = os.path.join(runs, "pretrain")
  return {**out, **{k: (pretrain if v == "<pretrain>" else v) for k, v in ARMS[name].items()}}


def make_config(overrides: dict[str, Any], name: str) -> ml_collections.ConfigDict:
  """``configs/dubai.py:asym_unet`` with the run's ``overrides`` applied, locked."""
  return sweep.apply_overrides(dubai_config.get_config(ARCH), overrides, name)


def command(workdir: str, overrides: dict[str, Any]) -> str:
  """The ``seg_jax.main`` command line of a run (toy-only overrides left out)."""
  flags = " ".join(f"--config.{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
                   for k, v in overrides.items() if k != "model.kwargs")
  return (f"python -m seg_jax.main --config=configs/dubai.py:{ARCH} --workdir={workdir} "
          f"{flags}")


def train_run(name: str, workdir: str, config: ml_collections.ConfigDict,
              runs: str) -> dict[str, Any]:
  """Trains and tests run ``name`` (or reads it back): its val records, test scores and wall
  time (``runs/timing.json``: seconds of training and testing, load averages around them)."""
  path = os.path.join(runs, "timing.json")
  timing = workdir_lib.read_json(path) or {}
  if name not in timing:
    start, load = time.perf_counter(), os.getloadavg()[0]
    sweeps.train_and_test(config, workdir)
    timing[name] = {"seconds": time.perf_counter() - start, "load_start": load,
                    "load_end": os.getloadavg()[0]}
    writers.write_json(path, timing)
  records = sweeps.records(workdir)
  return {"val": records.val, "test": records.test, "timing": timing[name]}


def minutes(seconds: float) -> str:
  """"84m22s": whole minutes and seconds, as the README's tables give wall times."""
  return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def _best(val: list[dict[str, Any]]) -> dict[str, Any]:
  """The evaluation with the highest val mIoU (the earliest of equals, as the checkpointer)."""
  return max(val, key=lambda r: (r["miou"], -r["step"]))


def tables(results: dict[tuple[str, int], dict[str, Any]], pretrain: dict[str, Any],
           num_scenes: int) -> list[str]:
  """The README's tables: per run, per arm (seed mean, range, paired gap to scratch), per class."""
  seeds = sorted({s for _, s in results})
  rows = []
  for (arm, seed), r in results.items():
    best = _best(r["val"])
    rows.append([arm, seed, f"{best['miou']:.3f} (step {best['step']})",
                 f"{r['val'][-1]['miou']:.3f}", f"{r['test']['miou']:.3f}",
                 f"{r['test']['pixel_accuracy']:.3f}", minutes(r["timing"]["seconds"]),
                 f"{r['timing']['load_start']:.1f} / {r['timing']['load_end']:.1f}"])
  per_run = writers.markdown_table(
      ["arm", "seed", "best val mIoU", "val mIoU, last step", "test mIoU", "test pixel acc",
       "wall time", "load at start / end"], rows)

  def scores(arm, split):
    return [(_best(results[(arm, s)]["val"])["miou"] if split == "val"
             else results[(arm, s)]["test"]["miou"]) for s in seeds]

  rows = []
  for arm in ARMS:
    row = [arm]
    for split in ("val", "test"):
      values = scores(arm, split)
      gaps = np.subtract(values, scores("scratch", split))
      row += [f"{np.mean(values):.3f}", f"{min(values):.3f}-{max(values):.3f}",
              "" if arm == "scratch" else " / ".join(f"{g:+.3f}" for g in gaps)]
    rows.append(row)
  per_arm = writers.markdown_table(
      ["arm", "best val mIoU, mean", "range", "gap to scratch per seed", "test mIoU, mean",
       "range", "gap to scratch per seed"], rows)

  class_names = palettes.DUBAI_AERIAL.names
  rows = [[arm] + [f"{np.mean([results[(arm, s)]['test']['iou'][c] for s in seeds]):.3f}"
                   for c in class_names] for arm in ARMS]
  per_class = writers.markdown_table(["arm", *class_names], rows)
  best = _best(pretrain["val"])
  return [
      f"Pretraining on {num_scenes} synthetic scenes: best val mIoU "
      f"{best['miou']:.3f} at step {best['step']} (synthetic val split), wall time "
      f"{minutes(pretrain['timing']['seconds'])}.",
      "### Each run\n\nBest val mIoU over the evaluations every "
      f"{EVAL_EVERY} steps; test scores of that best-val checkpoint.\n\n" + per_run,
      f"### Each arm over seeds {', '.join(map(str, seeds))}\n\nGap to scratch: the arm's score "
      "minus scratch's at the same seed.\n\n" + per_arm,
      "### Test IoU per class, mean over seeds\n\n" + per_class,
  ]


def mean_curves(results: dict[tuple[str, int], dict[str, Any]]) -> dict[str, list[dict]]:
  """Per arm, the val records averaged over seeds step by step."""
  curves = {}
  for arm in ARMS:
    runs = [r["val"] for (a, _), r in results.items() if a == arm]
    means = {key: common.seed_mean([[(r["step"], r[key]) for r in val] for val in runs])
             for key in ("miou", "loss")}
    (steps, miou, _), (_, loss, _) = means["miou"], means["loss"]
    curves[f"{arm} (mean of {len(runs)})"] = [
        {"step": step, "miou": m, "loss": l} for step, m, l in zip(steps, miou, loss)]
  return curves


def run(options: common.Options) -> None:
  """Runs the experiment and writes the README section; see the module docstring."""
  logging.set_verbosity(logging.INFO)  # each run's progress and where its weights came from
  runs = os.path.join(options.out, "runs") if options.toy else RUNS
  plan = [("pretrain", 0, PRETRAIN_STEPS)] + [
      (arm, seed, FINETUNE_STEPS) for seed in (SEEDS[:1] if options.toy else SEEDS)
      for arm in ARMS]
  commands, results = [], {}
  for name, seed, steps in plan:
    overrides = overrides_for(name, seed, steps, runs, options.toy, options.data_root)
    label = name if name == "pretrain" else f"{name}_seed{seed}"
    commands.append(command(os.path.join(runs, label), overrides))
    results[(name, seed)] = train_run(label, os.path.join(runs, label),
                                      make_config(overrides, name), runs)
  pretrain = results.pop(("pretrain", 0))
  viz.save_curves(mean_curves(results), os.path.join(options.out, "curves.png"))
  total = sum(r["timing"]["seconds"] for r in [pretrain, *results.values()])
  num_scenes = (TOY_DATA if options.toy else PRETRAIN)["data.num_train"]
  common.finish(options, __spec__.name, [
      "### Commands\n\nWhat the command above runs, one `seg_jax.main` run each (then "
      "`--config.train.mode=eval --config.eval.split=test` on the same workdir):\n\n"
      + "\n".join(f"    {c}" for c in commands),
      *tables(results, pretrain, num_scenes),
      f"![val mIoU and loss per arm, mean over seeds](curves.png)\n\nAll runs together: "
      f"{minutes(total)} of wall time.",
  ])


if __name__ == "__main__":
  common.command(run, FOLDER)
