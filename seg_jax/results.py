"""Results of a sweep, generated from its run folders: per setting the mean and std over seeds of
every score, written as DIR/results.csv, DIR/results.md and DIR/curves.png.

Scores of one run (`DIR/<setting>/seed<k>`), named as in results.csv:
  val_<score>     final_metrics.json: the evaluation on the val split at the last step
  test_<score>    eval_test.json: the best-val checkpoint evaluated on the test split
  best_step       the step of that checkpoint
  train_seconds   training time (the last record of metrics.jsonl): the wall time of the training
                  loop, compilation, evaluations and checkpoints included; replicas trained in one
                  program count 1/S of its time each
Scores per class are `<split>_<score>_<class>` (e.g. `test_iou_road`). A setting's row holds
`<score>_mean` and `<score>_std` (sample std, n - 1 in the denominator; NaN for n = 1) over its
finished runs, n of them, and the model's parameters and forward FLOPs from DIR/<setting>/model.json.
A run that has no value for a score (a class absent from a split and never predicted) is left
out of that score's mean and std. Runs with `eval.exclude_classes` also have `<split>_miou_excluding`
(and the other `_excluding` means); the main table then shows the mIoUs without those classes
beside the mIoUs over every class, the left-out classes named in the heading.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from seg_jax import errors
from seg_jax import storage
from seg_jax import viz
from seg_jax import workdir as workdir_lib
from seg_jax import writers

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
CURVES_PNG = "curves.png"
MODEL_JSON = "model.json"  # per setting: {"params", "gflops", "image_size"}
TEST_SPLIT = "test"  # a run's test scores are its eval-only record of this split
# Scalar scores of the main table, in order, with their headings.
MAIN_SCORES = (("val_miou", "val mIoU"), ("test_miou", "test mIoU"),
               ("val_pixel_accuracy", "val pixel acc"), ("test_pixel_accuracy", "test pixel acc"))
# Fields of final_metrics.json and eval_<split>.json that describe the evaluation, not a score.
NOT_SCORES = ("step", "split", "checkpoint", "resolution", "image_size", "predict",
              "exclude_classes")


def run_dir(workdir: str, setting: str, seed: int) -> str:
  """The folder of run (setting, seed) of the sweep in `workdir`: where the setting's replicas
  trained together in DIR/<setting> put that seed."""
  return workdir_lib.RunDir(storage.join(workdir, setting)).replica(seed).path


def _nan(value: Any) -> float:
  return math.nan if value is None else float(value)


def _is_score(value: Any) -> bool:
  """A number, or None for a score that has no value (NaN)."""
  return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _split_scores(prefix: str, record: dict[str, Any], path: str) -> dict[str, float]:
  """`prefix_<score>` (and `prefix_<score>_<class>` for per-class dicts) of the record read from
  `path`; WorkdirError naming the file and field if a field is neither a score nor in
  NOT_SCORES."""
  out = {}
  for key, value in record.items():
    if key in NOT_SCORES:
      continue
    if isinstance(value, dict) and all(_is_score(v) for v in value.values()):
      out.update({f"{prefix}_{key}_{name}": _nan(v) for name, v in value.items()})
    elif _is_score(value):
      out[f"{prefix}_{key}"] = _nan(value)
    else:
      raise errors.WorkdirError(
          f"{path}: field {key!r} holds {value!r:.80}, which is neither a score (a number, or "
          f"one per class) nor a field that describes the evaluation {NOT_SCORES}")
  return out


def run_scores(directory: str) -> dict[str, float] | None:
  """Every score of the finished run in `directory`, or None if it is not finished (no
  final_metrics.json or no eval_test.json)."""
  run = workdir_lib.RunDir(directory)
  final_record, test_record = run.final_record(), run.eval_record(TEST_SPLIT)
  if final_record is None or test_record is None:
    return None
  scores = {**_split_scores("val", final_record, run.file(workdir_lib.FINAL_METRICS)),
            **_split_scores("test", test_record, run.eval_file(TEST_SPLIT)),
            "best_step": float(test_record["step"])}
  records = run.metrics()
  scores["train_seconds"] = _nan(records[-1].get("train_seconds")) if records else math.nan
  return scores


def val_curve(directory: str) -> dict[int, float]:
  """{step: val mIoU} of a run's evaluations (metrics.jsonl)."""
  return {r["step"]: _nan(r["miou"]) for r in workdir_lib.RunDir(directory).metrics()
          if r["split"] == "val"}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample std (n - 1) of the non-NaN `values` (NaN where there are too few)."""
  values = np.asarray([v for v in values if not math.isnan(v)], np.float64)
  mean = float(values.mean()) if values.size else math.nan
  std = float(values.std(ddof=1)) if values.size > 1 else math.nan
  return mean, std


def setting_row(setting: str, runs: Sequence[dict[str, float]], model: dict[str, Any] | None
                ) -> dict[str, Any]:
  """One results.csv row: setting, n, `<score>_mean` / `<score>_std` of every score, params and
  GFLOPs (NaN when model.json is missing)."""
  row: dict[str, Any] = {"setting": setting, "n": len(runs)}
  for score in dict.fromkeys(k for run in runs for k in run):  # first-seen order
    row[f"{score}_mean"], row[f"{score}_std"] = mean_std([run.get(score, math.nan)
                                                          for run in runs])
  row["params"] = model["params"] if model else math.nan
  row["gflops"] = model["gflops"] if model else math.nan
  return row


def read_model(workdir: str, setting: str) -> dict[str, Any] | None:
  """DIR/<setting>/model.json (written by the sweep runner), or None."""
  path = storage.join(workdir, setting, MODEL_JSON)
  return workdir_lib.read_json(path)


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
  columns = list(dict.fromkeys(k for row in rows for k in row))
  out = io.StringIO()
  writer = csv.DictWriter(out, columns, restval=math.nan, lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  return out.getvalue()


def mean_std_text(mean: float, std: float) -> str:
  """"mean ± std" (3 decimals), the mean alone without a std (one run), "-" without a mean."""
  if math.isnan(mean):
    return "-"
  return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def cell(row: dict[str, Any], score: str) -> str:
  """`mean_std_text` of a score of a results row."""
  return mean_std_text(row.get(f"{score}_mean", math.nan), row.get(f"{score}_std", math.nan))


def duration(seconds: float) -> str:
  """"1m05s" / "42s" of a number of seconds, or "-" for NaN."""
  if math.isnan(seconds):
    return "-"
  minutes, secs = divmod(int(round(seconds)), 60)
  return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def main_scores(excluded: Sequence[str]) -> tuple[tuple[str, str], ...]:
  """(score, heading) of the main table: `MAIN_SCORES`, and where runs leave classes out of
  their means (`excluded`, the names), the mIoUs without them, the names in the heading."""
  if not excluded:
    return MAIN_SCORES
  without = f"w/o {', '.join(excluded)}"
  return (MAIN_SCORES[:2] + (("val_miou_excluding", f"val mIoU {without}"),
                             ("test_miou_excluding", f"test mIoU {without}")) + MAIN_SCORES[2:])


def excluded_classes(directory: str) -> tuple[str, ...]:
  """The classes the finished run in `directory` leaves out of its `_excluding` means."""
  final = workdir_lib.RunDir(directory).final_record() or {}
  return tuple(final.get("exclude_classes", ()))


def markdown(rows: Sequence[dict[str, Any]], missing: Sequence[str], image_size: Any,
             excluded: Sequence[str] = ()) -> str:
  """The tables of results.md: main scores, model size and time, then IoU per class.

  `excluded` names the classes the `_excluding` scores leave out (the same in every run).
  """
  scores = main_scores(excluded)
  main = []
  for row in rows:
    params = "-" if math.isnan(row["params"]) else f"{int(row['params']):,}"
    gflops = "-" if math.isnan(row["gflops"]) else f"{row['gflops']:.3g}"
    main.append([row["setting"], row["n"], *(cell(row, s) for s, _ in scores), params,
                 gflops, duration(row.get("train_seconds_mean", math.nan))])
  size = "x".join(str(s) for s in image_size) if image_size else "the config's size"
  parts = [
      "Mean ± std over the n seeds of each setting (sample std). val: the last step on the val "
      "split; test: the checkpoint with the best val mIoU, evaluated on the test split. GFLOPs: "
      f"one forward pass of one {size} image, from XLA's cost analysis of the compiled "
      "eval-mode forward (a multiply-add counts 2). Train time: wall time of one run's training "
      "loop (compilation, evaluations and checkpoints included; S replicas trained in one "
      "program count 1/S of its time each).",
      writers.markdown_table(
          ["setting", "n", *(h for _, h in scores), "params", "GFLOPs", "train time"], main)]
  for split in ("test", "val"):
    prefix = f"{split}_iou_"
    classes = list(dict.fromkeys(k[len(prefix):-len("_mean")] for row in rows for k in row
                                 if k.startswith(prefix) and k.endswith("_mean")))
    if classes:
      parts.append(f"IoU per class, {split}:")
      parts.append(writers.markdown_table(
          ["setting", "n", *classes],
          [[r["setting"], r["n"], *(cell(r, prefix + c) for c in classes)] for r in rows]))
  if missing:
    parts.append("Not finished (left out of the table): " + ", ".join(missing) + ".")
  return "\n\n".join(parts)


def summarize(workdir: str, settings: Mapping[str, Sequence[int]],
              readme: str = "") -> list[dict[str, Any]]:
  """Writes results.csv, results.md and curves.png of the sweep in `workdir` ({setting: its
  seeds}, in table order); returns the rows.

  curves.png holds val mIoU against step per setting, and test mIoU against train time, one
  point per setting (mean ± std over its seeds). With `readme`, the tables also replace the
  generated "results" section of that Markdown file and curves.png is written beside it.
  """
  rows, missing, curves, image_size, excluded = [], [], {}, None, set()
  for setting, seeds in settings.items():
    runs, steps = [], {}
    for seed in seeds:
      directory = run_dir(workdir, setting, seed)
      scores = run_scores(directory)
      if scores is None:
        missing.append(f"{setting} seed {seed}")
        continue
      runs.append(scores)
      excluded.add(excluded_classes(directory))
      for step, miou in val_curve(directory).items():
        steps.setdefault(step, []).append(miou)
    model = read_model(workdir, setting)
    image_size = image_size or (model or {}).get("image_size")
    rows.append(setting_row(setting, runs, model))
    if steps:
      x = sorted(steps)
      mean, std = zip(*(mean_std(steps[s]) for s in x))
      curves[f"{setting} (n={len(runs)})"] = (x, mean, std)
  excluded -= {()}
  if len(excluded) > 1:  # settings that leave out different classes
    names = ("the classes each run's eval.exclude_classes names",)
  else:
    names = excluded.pop() if excluded else ()
  text = markdown(rows, missing, image_size, names)
  writers.write_text(storage.join(workdir, RESULTS_CSV), _csv_text(rows))
  writers.write_text(storage.join(workdir, RESULTS_MD), f"# Results of {workdir}\n\n{text}\n")
  pngs = [storage.join(workdir, CURVES_PNG)]
  if readme:
    alt = "val mIoU against step; test mIoU against train time"
    writers.write_section(readme, text + f"\n\n![{alt}]({CURVES_PNG})", "results")
    pngs.append(os.path.join(os.path.dirname(os.path.abspath(readme)), CURVES_PNG))
  if curves:
    panels = [viz.Curves(curves, title="val mIoU against step", xlabel="step",
                         ylabel="val mIoU", markers=True, ylim=viz.SCORE_RANGE),
              viz.Curves(cost_points(rows), title="test mIoU against train time",
                         xlabel="train time (minutes)", ylabel="test mIoU", errorbars=True)]
    for png in pngs:
      viz.save_curve_panels(panels, png, ncols=2, title="mean ± std over seeds",
                            panel_inches=6.0)
  return rows


def cost_points(rows: Sequence[dict[str, Any]]) -> dict[str, tuple[list, list, list]]:
  """{setting (n=...): ([train minutes], [test mIoU], [its std])} of the settings with a
  finished run: one point each, for the panel of test mIoU against train time."""
  return {f"{r['setting']} (n={r['n']})": ([r["train_seconds_mean"] / 60],
                                            [r["test_miou_mean"]], [r["test_miou_std"]])
          for r in rows if r["n"] and not math.isnan(r.get("train_seconds_mean", math.nan))}
