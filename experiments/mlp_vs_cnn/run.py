"""MLP vs CNN on real aerial patches, and the shift test: an MLP, a small CNN and the same CNN
without weight sharing (locally connected) classify 32x32 Dubai patches by majority class.

    python -m experiments.mlp_vs_cnn.run [--out=DIR] [--data_root=DIR] [--toy]

1. Training: the sweep of ``sweep.py`` (each classifier of ``configs/dubai_patches.py``, seeds 0
   and 1, the same data, steps, batch and optimizer) through ``seg_jax.sweep``'s runner into
   ``RUNS`` (``<out>/runs`` with ``--toy``). Each run's best-val checkpoint is scored on the
   test tile; a finished run is read back, not trained again.
2. The shift test: windows of the test tile's images at the test patches' own grid positions
   (those at least ``max(SHIFTS)`` pixels from the image border, whose majority class passes
   ``data.min_purity``; ``SHIFT_WINDOWS`` of them drawn at random), each also cut with the
   window moved by d pixels right, left, down and up inside the original image, so a shifted
   window shows real content, not a wrap-around. Its label stays the unshifted window's class.
   Each run's best checkpoint classifies them: accuracy per shift and agreement with its own
   prediction at shift 0, averaged over the four directions.
3. ``shift.png`` and the README section between the ``generated`` markers.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Sequence
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import dubai_patches
from experiments import common
from experiments import sweeps
from seg_jax import data as data_lib
from seg_jax import outputs
from seg_jax import results
from seg_jax import state as state_lib
from seg_jax import sweep as sweep_lib
from seg_jax import viz
from seg_jax import workdir as workdir_lib
from seg_jax import writers
from seg_jax.data import augment
from seg_jax.data import preprocess

FOLDER = os.path.dirname(os.path.abspath(__file__))
SWEEP_FILE = os.path.join(FOLDER, "sweep.py")
RUNS = os.path.join(tempfile.gettempdir(), "mlp_vs_cnn")
SHIFTS = (0, 1, 2, 4, 8)
# (row, column) steps of a shift: right, left, down, up.
DIRECTIONS = ((0, 1), (0, -1), (1, 0), (-1, 0))
SHIFT_WINDOWS = 400
SHIFT_SEED = 0
BATCH = 256
TOY = {"data.patch_size": 16, "data.min_purity": 0.2, "train.num_steps": 2,
       "train.eval_every": 2, "train.checkpoint_every": 2, "train.global_batch_size": 2,
       "eval.global_batch_size": 4, "eval.num_images": 2}
TOY_KWARGS = {"mlp": {"hidden": (8,)}, "simple_cnn": {"widths": (4, 8)}}
TOY_SHIFTS = (0, 1, 2)


def base_config(data_root: str, toy: bool) -> ml_collections.ConfigDict:
  """``configs/dubai_patches.py`` as every setting of the sweep starts from it, locked."""
  return sweep_lib.apply_overrides(dubai_patches.get_config(),
                                   {"data.root": data_root, **(TOY if toy else {})}, "base")


def load_sweep(toy: bool) -> sweep_lib.Sweep:
  """``sweep.py``; with ``toy``, one seed and tiny widths."""
  sweep = sweep_lib.load_sweep(SWEEP_FILE)
  if not toy:
    return sweep
  return sweeps.toy(sweep, {
      name: {"model.kwargs": {**o["model.kwargs"], **TOY_KWARGS[o["model.name"]]}}
      for name, o in sweep.settings.items()})


@dataclasses.dataclass(frozen=True)
class ShiftSet:
  """Test windows and their shifted copies.

  Attributes:
    labels: int32 (N,) majority class of each unshifted window (the label of every copy).
    crops: (d_row, d_col) -> uint8 (N, P, P, 3), the windows moved by that offset.
    drift: (d_row, d_col) -> share of moved windows whose own majority class (or purity) differs.
    candidates: windows far enough from the border, before the purity rule and the draw.
  """

  labels: np.ndarray
  crops: dict[tuple[int, int], np.ndarray]
  drift: dict[tuple[int, int], float]
  candidates: int


def offsets(shifts: Sequence[int]) -> list[tuple[int, int]]:
  """(0, 0) and each shift in each of ``DIRECTIONS``."""
  return [(0, 0)] + [(d * dr, d * dc) for d in shifts if d for dr, dc in DIRECTIONS]


def shift_windows(data_config: ml_collections.ConfigDict, shifts: Sequence[int], limit: int,
                  seed: int, num_classes: int) -> ShiftSet:
  """The shift test's windows of the test split's original images (see the module docstring)."""
  c = data_config.copy_and_resolve_references()
  c.labels = "pixels"  # the original images with their per-pixel masks
  size, margin = c.patch_size, max(shifts)
  examples = list(data_lib.full_resolution_examples(c, "test"))
  origins = []
  for i, example in enumerate(examples):
    h, w = example["label"].shape
    origins += [(i, y, x) for y in preprocess.patch_starts(h, size, c.patch_overlap)
                for x in preprocess.patch_starts(w, size, c.patch_overlap)
                if margin <= y <= h - size - margin and margin <= x <= w - size - margin]

  def cut(key, where, offset):
    return np.stack([examples[i][key][y + offset[0]:y + offset[0] + size,
                                      x + offset[1]:x + offset[1] + size] for i, y, x in where])

  if not origins:
    raise ValueError(f"no {size}x{size} test window lies {margin} pixels inside its image")
  classes, kept = preprocess.majority_classes(cut("label", origins, (0, 0)), num_classes,
                                              c.min_purity)
  pure = np.flatnonzero(kept)
  if not pure.size:
    raise ValueError(f"none of the {len(origins)} test windows passes data.min_purity="
                     f"{c.min_purity}")
  chosen = np.sort(np.random.default_rng(seed).permutation(pure)[:limit])
  where = [origins[k] for k in chosen]
  labels = classes[chosen]
  crops, drift = {}, {}
  for offset in offsets(shifts):
    crops[offset] = cut("image", where, offset)
    moved, moved_kept = preprocess.majority_classes(cut("label", where, offset), num_classes,
                                                    c.min_purity)
    drift[offset] = float(np.mean((moved != labels) | ~moved_kept))
  return ShiftSet(labels, crops, drift, len(origins))


def classify(run: sweep_lib.Run, dataset: data_lib.Dataset,
             images: dict[Any, np.ndarray]) -> dict[Any, np.ndarray]:
  """Predicted classes of each image batch by the run's best-val checkpoint.

  The trainer's model is a ``DenseFromClassifier``; its classifier runs on the same variables.
  """
  config = run.config
  model = state_lib.build_model(config, dataset.num_classes)
  run_dir = workdir_lib.RunDir(run.workdir)
  variables, _ = state_lib.restore_variables(run_dir, config, run_dir.data_info(), "best", model)
  classifier = model.classifier
  dtype = state_lib.dtype_from_name(config.model.dtype)

  @jax.jit
  def classes(variables, x):
    x = augment.normalize(x, dataset.mean, dataset.std).astype(dtype)
    return jnp.argmax(classifier.apply(variables, x, train=False), axis=-1)

  return {key: np.concatenate([np.asarray(classes(variables, x[i:i + BATCH]))
                               for i in range(0, len(x), BATCH)])
          for key, x in images.items()}


def shift_scores(preds: dict[tuple[int, int], np.ndarray], labels: np.ndarray,
                 shifts: Sequence[int]) -> dict[str, list[float]]:
  """Per shift (mean over directions): accuracy, and agreement with the prediction at 0."""
  out = {"accuracy": [], "agreement": []}
  for d in shifts:
    moved = [preds[o] for o in offsets(shifts) if max(abs(o[0]), abs(o[1])) == d]
    out["accuracy"].append(float(np.mean([np.mean(p == labels) for p in moved])))
    out["agreement"].append(float(np.mean([np.mean(p == preds[(0, 0)]) for p in moved])))
  return out


def data_table(dataset: data_lib.Dataset) -> str:
  """Patches kept and left out per split, and the class of the kept ones."""
  rows = []
  for split in ("train", "val", "test"):
    source = getattr(dataset, split)
    counts = np.bincount(source.labels[:, 0, 0], minlength=dataset.num_classes)
    rows.append([split, f"{len(source):,}", f"{dataset.dropped[split]:,}",
                 *(f"{n:,}" for n in counts)])
  return writers.markdown_table(["split", "patches kept", "left out", *dataset.class_names], rows)


def model_table(rows: Sequence[dict[str, Any]], sweep: sweep_lib.Sweep) -> str:
  """Per setting: what it is, parameters, test and val accuracy (mean ± std), train time."""
  out = []
  for row in rows:
    overrides = sweep.settings[row["setting"]]
    kwargs = ", ".join(f"{k}={v}" for k, v in overrides["model.kwargs"].items())
    cell = lambda score: results.cell(row, score)
    out.append([row["setting"], f"`{overrides['model.name']}` ({kwargs})",
                f"{int(row['params']):,}", row["n"], cell("test_pixel_accuracy"),
                cell("test_mean_accuracy"), cell("val_pixel_accuracy"),
                outputs.format_duration(row["train_seconds_mean"])])
  return writers.markdown_table(
      ["model", "model.name (model.kwargs)", "params", "seeds", "test accuracy",
       "test balanced accuracy", "val accuracy", "train time per run"], out)


def class_table(rows: Sequence[dict[str, Any]], class_names: Sequence[str]) -> str:
  """Test accuracy per class (share of the class's patches classified right)."""
  return writers.markdown_table(
      ["model", *class_names],
      [[row["setting"], *(results.cell(row, f"test_accuracy_{c}") for c in class_names)]
       for row in rows])


def shift_table(scores: dict[str, list[dict[str, list[float]]]], shifts: Sequence[int],
                shift_set: ShiftSet) -> str:
  """Accuracy per shift and agreement with the unshifted prediction, mean ± std over seeds."""
  rows = []
  for setting, per_seed in scores.items():
    for key in ("accuracy", "agreement"):
      rows.append([f"{setting} {key}", *(common.mean_std_text([s[key][k] for s in per_seed])
                                         for k in range(len(shifts)))])
  drift = [np.mean([v for o, v in shift_set.drift.items() if max(map(abs, o)) == d])
           for d in shifts]
  rows.append(["windows whose own majority class changed", *(f"{v:.3f}" for v in drift)])
  return writers.markdown_table(["", *(f"{d} px" for d in shifts)], rows)


def save_figure(scores: dict[str, list[dict[str, list[float]]]], shifts: Sequence[int],
                path: str) -> None:
  """shift.png: accuracy and agreement vs shift, one line per model (mean, band ± std)."""
  panels = []
  for key, ylabel in (("accuracy", "test accuracy"),
                      ("agreement", "same class as unshifted")):
    curves = {}
    for setting, per_seed in scores.items():
      mean, std = zip(*(results.mean_std([s[key][k] for s in per_seed])
                        for k in range(len(shifts))))
      curves[setting] = (list(shifts), mean, std)
    panels.append(viz.Curves(curves, title=f"{ylabel} vs shift", xlabel="shift (pixels)",
                             ylabel=ylabel, markers=True))
  viz.save_curve_panels(panels, path, ncols=2, panel_inches=4.5,
                        title="Test windows moved inside their image (mean over 4 directions)")


def readme_sections(options: common.Options, config: ml_collections.ConfigDict,
                    sweep: sweep_lib.Sweep, done: sweeps.SweepRuns, runs: str,
                    scores: dict[str, list[dict[str, list[float]]]], shifts: Sequence[int],
                    shift_set: ShiftSet) -> list[str]:
  """The README section: the runs, the data, the models' scores and the shift test."""
  c = config
  dataset = done.runner.dataset(config)
  return [
      "### Runs\n\nThe runs are those of this sweep, in the same folders (either command "
      "reuses the runs the other finished):\n\n"
      f"    python -m seg_jax.sweep --config=configs/dubai_patches.py "
      f"--sweep=experiments/mlp_vs_cnn/sweep.py --workdir={runs}"
      + ("" if options.data_root == dubai_patches.get_config().data.root
         else f" --config.data.root={options.data_root}"),
      f"### Data\n\n{c.data.patch_size}x{c.data.patch_size} patches of the Dubai tiles, each "
      f"labelled with its majority class; patches where that class covers less than "
      f"{c.data.min_purity:.0%} of the pixels are left out:\n\n" + data_table(dataset),
      f"### Models and test accuracy\n\n{c.train.num_steps} steps of batch "
      f"{c.train.global_batch_size}, {c.optim.name} at {c.optim.learning_rate:g} for every "
      f"model; seeds {', '.join(map(str, sweep.seeds))}; mean ± std over seeds. Test: the "
      "best-val checkpoint on every kept test patch. Balanced accuracy: the mean over classes "
      "of each class's accuracy.\n\n" + model_table(done.rows, sweep),
      "Test accuracy per class (mean ± std over seeds):\n\n"
      + class_table(done.rows, dataset.class_names),
      f"### Shift test\n\n{len(shift_set.labels)} test windows (of "
      f"{shift_set.candidates:,} at least {max(shifts)} px from the image border), each moved "
      f"by d pixels in 4 directions. Accuracy: against the unshifted window's class; agreement: "
      "the prediction equals the model's prediction for the unshifted window. Last row: how "
      "often the moved window's own label would differ (its majority class changes or falls "
      "below the purity threshold).\n\n" + shift_table(scores, shifts, shift_set)
      + "\n\n![accuracy and agreement vs shift, one line per model](shift.png)",
  ]


def run(options: common.Options) -> None:
  """Runs the experiment and writes the README section; see the module docstring."""
  logging.set_verbosity(logging.INFO)
  runs = os.path.join(options.out, "runs") if options.toy else RUNS
  shifts = TOY_SHIFTS if options.toy else SHIFTS
  config = base_config(options.data_root, options.toy)
  sweep = load_sweep(options.toy)
  done = sweeps.run_sweep(config, sweep, runs)
  dataset = done.runner.dataset(config)
  shift_set = shift_windows(config.data, shifts, SHIFT_WINDOWS, SHIFT_SEED, dataset.num_classes)
  scores = {setting: [] for setting in sweep.settings}
  for trained in done.runs:
    preds = classify(trained, dataset, shift_set.crops)
    scores[trained.setting].append(shift_scores(preds, shift_set.labels, shifts))
  save_figure(scores, shifts, os.path.join(options.out, "shift.png"))
  common.finish(options, __spec__.name,
                readme_sections(options, config, sweep, done, runs, scores, shifts, shift_set))


if __name__ == "__main__":
  common.command(run, FOLDER)
