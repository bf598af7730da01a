"""Tests of seg_jax.sweep and seg_jax.results: sweep files, overrides, shards, skipping finished
runs and the results table of a tiny real sweep."""

import csv
import json
import os
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np
import pytest

from seg_jax import config_files
from seg_jax import errors
from seg_jax import models
from seg_jax import preemption
from seg_jax import results
from seg_jax import state as state_lib
from seg_jax import sweep as sweep_lib
from seg_jax import viz
from seg_jax.models import asym_unet
from seg_jax.models import summary
from seg_jax import workdir as workdir_lib

from tests.train_testing import LOOP_MODEL, REPO, snapshot, tiny_config

TESTS = os.path.join(REPO, "tests")
SWEEP = os.path.join(TESTS, "sweep_testing.py")


def setUpModule():
  jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp())
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def run_sweep(*args):
  """(exit code, stderr) of `python -m seg_jax.sweep` on the tiny config and sweep."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
             JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "seg_jax.sweep", f"--config={os.path.join(TESTS, 'train_testing.py')}",
       f"--sweep={SWEEP}", *args], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=600, check=False)
  return proc.returncode, proc.stderr


def _write_sweep(text):
  path = os.path.join(tempfile.mkdtemp(), "sweep.py")
  with open(path, "w") as f:
    f.write(text)
  return path


def _read_json(path):
  with open(path) as f:
    return json.load(f)


class SweepFileTest(parameterized.TestCase):

  @parameterized.parameters(
      ("x = 1\n", "defines no get_sweep"),
      ("def get_sweep():\n  return {'settings': {'a': {}}}\n", "must return"),
      ("def get_sweep():\n  return {'settings': {}, 'seeds': [0]}\n", "non-empty dict"),
      ("def get_sweep():\n  return {'settings': {'a/b': {}}, 'seeds': [0]}\n",
       "'a/b' is not a folder name"),
      ("def get_sweep():\n  return {'settings': {'a': {'seed': 3}}, 'seeds': [0]}\n",
       "setting 'a' sets 'seed', which the runner sets"),
      ("def get_sweep():\n  return {'settings': {'a': {}}, 'seeds': [0, 0]}\n",
       "distinct integers"),
      ("import no_such_module\n", "cannot load sweep file .*No module named"),
      ("def get_sweep():\n  return {'settings': {'a': {}}, 'seeds': [0], 'seeds_of': {'b': [1]}}\n",
       "seeds_of names 'b', which is not a setting"),
      ("def get_sweep():\n  return {'settings': {'a': {}}, 'seeds': [0], 'seeds_of': {'a': []}}\n",
       r"seeds_of\['a'\] must be a non-empty list"),
      ("def get_sweep():\n  return {'settings': {'a': {}}, 'seeds': [0], 'seed_of': {}}\n",
       "must return"),
  )
  def test_bad_sweep_file(self, text, message):
    with self.assertRaisesRegex(errors.ConfigError, message):
      sweep_lib.load_sweep(_write_sweep(text))

  def test_a_setting_with_its_own_seeds(self):
    sweep = sweep_lib.load_sweep(_write_sweep(
        "def get_sweep():\n  return {'settings': {'a': {}, 'b': {}}, 'seeds': [0, 1],"
        " 'seeds_of': {'b': [2]}}\n"))
    runs = sweep_lib.expand(tiny_config(), sweep, "/tmp/w")
    self.assertEqual([(r.setting, r.seed) for r in runs], [("a", 0), ("a", 1), ("b", 2)])
    self.assertEqual(runs[2].config.seed, 2)
    self.assertEqual(sweep.seeds_by_setting(), {"a": (0, 1), "b": (2,)})

  def test_overrides_have_the_field_types(self):
    config = sweep_lib.apply_overrides(
        tiny_config(), {"optim.learning_rate": 1, "data.image_size": [32, 48],
                        "model.kwargs": {"depth": 2, "base_width": 4}, "model.name": "unet"},
        "s")
    self.assertEqual(config.optim.learning_rate, 1.0)
    self.assertIsInstance(config.optim.learning_rate, float)
    self.assertEqual(config.data.image_size, (32, 48))
    self.assertEqual(config.model.kwargs.to_dict(), {"depth": 2, "base_width": 4})
    self.assertEqual(tiny_config().optim.learning_rate, 3e-3)  # the base is left alone

  @parameterized.parameters(
      ({"optim.learning_rat": 0.1}, r"setting 's', key 'optim.learning_rat': the config has no "
       r"field 'optim.learning_rat'; optim has .*learning_rate"),
      ({"optimizer.name": "sgd"}, "key 'optimizer.name': the config has no group 'optimizer'"),
      ({"train.num_steps": 2.5}, r"key 'train.num_steps': 2.5 \(float\) does not fit the "
       r"field, which holds 4 \(int\)"),
      ({"train.num_steps": True}, r"key 'train.num_steps': True \(bool\) does not fit"),
      ({"model.name": 3}, r"key 'model.name': 3 \(int\) does not fit the field, which holds "
       rf"'{LOOP_MODEL}' \(str\)"),
      ({"data.image_size": 32}, r"key 'data.image_size': 32 \(int\) does not fit the field, "
       r"which holds \(32, 32\) \(tuple\)"),
  )
  def test_bad_override(self, overrides, message):
    with self.assertRaisesRegex(errors.ConfigError, message):
      sweep_lib.apply_overrides(tiny_config(), overrides, "s")

  @parameterized.parameters((5, 2), (4, 2), (7, 3), (2, 3), (1, 1))
  def test_shards_cover_every_run_once(self, n, count):
    runs = list(range(n))
    parts = [sweep_lib.shard(runs, i, count) for i in range(count)]
    self.assertEqual(sorted(r for part in parts for r in part), runs)
    self.assertLessEqual(max(map(len, parts)) - min(map(len, parts)), 1)
    with self.assertRaisesRegex(errors.ConfigError, "0 <= shard_index < shard_count"):
      sweep_lib.shard(runs, count, count)

  def test_bad_key_is_one_line_before_anything_trains(self):
    workdir = os.path.join(tempfile.mkdtemp(), "sweep")
    path = _write_sweep("def get_sweep():\n  return {'settings': {'ok': {}, 'bad': "
                        "{'model.kwargs.widht': 3}}, 'seeds': [0]}\n")
    code, err = run_sweep(f"--workdir={workdir}", f"--sweep={path}")
    self.assertEqual(code, errors.EXIT_USER_ERROR, err[-2000:])
    self.assertTrue(err.strip().splitlines()[-1].startswith(
        "error (config): sweep setting 'bad', key 'model.kwargs.widht': the config has no "
        "field"), err[-2000:])
    self.assertNotIn("Traceback", err)
    self.assertFalse(os.path.exists(workdir))

  def test_bad_value_is_named_with_its_setting_before_anything_trains(self):
    runs = sweep_lib.expand(tiny_config(), sweep_lib.Sweep(
        {"ok": {}, "bad": {"model.name": "unet3d"}}, (0,)), tempfile.mkdtemp())
    runner = sweep_lib.Runner(runs, tempfile.mkdtemp(), 1)
    with self.assertRaisesRegex(errors.ConfigError,
                                "sweep setting 'bad': model.name must be one of"):
      runner.check()
    self.assertFalse(os.path.exists(runs[0].workdir))


class ExperimentSweepsTest(parameterized.TestCase):
  """The committed sweep files: every setting is a valid config whose model builds."""

  def models(self, sweep_file, only=None, config="dubai.py", bands=3):
    """{setting: parameters} of a sweep file's settings for images of `bands` bands (or as many
    as a setting's data.bands names), None for those not in `only` (if given); every setting's
    overrides are applied to configs/`config`."""
    base = config_files.load_module(os.path.join(REPO, "configs", config))
    sweep = sweep_lib.load_sweep(os.path.join(REPO, "experiments", sweep_file))
    runs = sweep_lib.expand(base.get_config(), sweep, tempfile.mkdtemp())
    self.assertLen(runs, len(sweep.settings) * len(sweep.seeds))
    out = {}
    for run in runs[::len(sweep.seeds)]:
      if only is not None and run.setting not in only:
        out[run.setting] = None
        continue
      model = state_lib.build_model(run.config, num_classes=6)
      shape = (1, *run.config.data.image_size, len(run.config.data.bands) or bands)
      variables = summary.abstract_variables(model, shape)
      out[run.setting] = models.count_params(variables)
    return out

  def test_proposal_vs_unet(self):
    self.assertEqual(self.models("dubai_proposal_vs_unet/sweep.py"),
                     {"asym_unet": 680_478, "unet": 482_822})

  @parameterized.named_parameters(("cpu", "sweep.py", 680_478),
                                  ("full_width", "sweep_full_width.py", 12_766_158))
  def test_ablation_baselines_match_the_proposal_in_parameters(self, sweep_file, proposal):
    baselines = ("unet", "deeplabv3plus", "fcn8s")
    params = self.models(f"dubai_ablation/{sweep_file}", only=("full", *baselines))
    self.assertEqual(list(params), [*asym_unet.ABLATIONS, *baselines])
    self.assertEqual(params["full"], proposal)
    for baseline in baselines:
      self.assertAlmostEqual(params[baseline] / params["full"], 1.0, delta=0.004, msg=baseline)

  def test_naip_models_match_in_parameters(self):
    # The 4 bands (RGB + near-infrared) of configs/naip.py, 6 classes: within 1 % of each other.
    params = self.models("naip_rgbn/sweep.py", config="naip.py", bands=4)
    # The proposal's RGB-only arm reads 3 bands: the Dubai proposal's count.
    self.assertEqual(params, {"asym_unet": 680_622, "asym_unet_rgb": 680_478, "unet": 680_567,
                              "unetpp_resnet34": 680_374, "deeplabv3plus": 678_642})
    four_bands = [count for name, count in params.items() if name != "asym_unet_rgb"]
    self.assertLessEqual(max(four_bands) / min(four_bands), 1.01)

  def test_naip_full_size_is_the_published_model_and_the_full_width_proposal(self):
    params = self.models("naip_rgbn/sweep_full_size.py", config="naip.py", bands=4)
    # SMP's UnetPlusPlus("resnet34", in_channels=4, classes=6): ParamCountTest pins its count.
    self.assertEqual(params, {"unetpp_resnet34_full": 26_082_470, "asym_unet_full": 12_766_446})

  def test_naip_budget_is_the_study_setting_at_each_budget(self):
    study = sweep_lib.load_sweep(os.path.join(REPO, "experiments", "naip_rgbn/sweep.py"))
    budget = sweep_lib.load_sweep(os.path.join(REPO, "experiments", "naip_rgbn/budget/sweep.py"))
    module = config_files.load_module(os.path.join(REPO, "experiments", "naip_rgbn/budget/sweep.py"))
    for name, overrides in budget.settings.items():
      self.assertEqual(overrides, {**study.settings[module.SETTING],
                                   "train.num_steps": int(name.removeprefix("steps_"))})
    self.assertEqual([len(budget.seeds_for(name)) for name in budget.settings], [3, 3, 1])

  def test_ablation_pilot(self):
    self.assertEqual(list(self.models("dubai_ablation/pilot.py")), ["full"])


class RunScoresTest(absltest.TestCase):
  """results.run_scores reads the scores of a run folder and nothing else."""

  def test_test_miou_against_train_time_one_point_per_finished_setting(self):
    rows = [results.setting_row("steps400", [{"test_miou": 0.70, "train_seconds": 600.0},
                                             {"test_miou": 0.72, "train_seconds": 660.0}], None),
            results.setting_row("steps2600", [], None)]
    points = results.cost_points(rows)
    self.assertEqual(list(points), ["steps400 (n=2)"])
    (minutes,), (miou,), (std,) = points["steps400 (n=2)"]
    self.assertAlmostEqual(minutes, 10.5)
    self.assertAlmostEqual(miou, 0.71)
    self.assertAlmostEqual(std, 0.02 / np.sqrt(2))
    png = os.path.join(tempfile.mkdtemp(), "c.png")
    viz.save_curve_panels([viz.Curves(points, errorbars=True)], png)
    with open(png, "rb") as f:
      self.assertEqual(f.read(4), b"\x89PNG")

  def write_run(self, test_record):
    directory = tempfile.mkdtemp()
    for name, record in ((workdir_lib.FINAL_METRICS, {"step": 4, "split": "val", "miou": 0.5}),
                         ("eval_test.json", test_record)):
      with open(os.path.join(directory, name), "w") as f:
        json.dump(record, f)
    return directory

  def test_fields_that_describe_the_evaluation_are_not_scores(self):
    scores = results.run_scores(self.write_run({
        "step": 2, "split": "test", "checkpoint": "best", "resolution": "full",
        "predict": {"mode": "slide", "window": [32, 32], "overlap": 0.25},
        "image_size": [32, 64], "miou": 0.25, "iou": {"road": 0.5, "water": None}}))
    self.assertTrue(np.isnan(scores.pop("train_seconds")))  # no metrics.jsonl
    self.assertTrue(np.isnan(scores.pop("test_iou_water")))
    self.assertEqual(scores, {"val_miou": 0.5, "test_miou": 0.25, "test_iou_road": 0.5,
                              "best_step": 2.0})

  def test_scores_without_excluded_classes_are_reported_beside_all_classes(self):
    directory = self.write_run({"step": 2, "split": "test", "miou": 0.25,
                                "miou_excluding": 0.3, "exclude_classes": ["unlabeled"]})
    with open(os.path.join(directory, workdir_lib.FINAL_METRICS), "w") as f:
      json.dump({"step": 4, "split": "val", "miou": 0.5, "miou_excluding": 0.6,
                 "exclude_classes": ["unlabeled"]}, f)
    scores = results.run_scores(directory)
    self.assertEqual((scores["test_miou_excluding"], scores["val_miou_excluding"]), (0.3, 0.6))
    self.assertEqual(results.excluded_classes(directory), ("unlabeled",))
    row = results.setting_row("s", [scores], None)
    table = results.markdown([row], [], (32, 32), ("unlabeled",)).splitlines()
    header = next(line for line in table if line.startswith("| setting"))
    self.assertIn("| val mIoU | test mIoU | val mIoU w/o unlabeled | test mIoU w/o unlabeled |",
                  header)
    self.assertIn("| s | 1 | 0.500 | 0.250 | 0.600 | 0.300 |", table[table.index(header) + 2])

  def test_a_field_that_is_no_score_is_named_with_its_file(self):
    directory = self.write_run({"step": 2, "split": "test", "miou": 0.25, "note": "x"})
    with self.assertRaisesRegex(errors.WorkdirError,
                                "eval_test.json: field 'note' holds 'x'"):
      results.run_scores(directory)


class SweepRunTest(absltest.TestCase):

  def test_each_group_is_tested_as_soon_as_it_is_trained(self):
    # A sweep stopped (preempted, or killed between sessions) after a setting keeps that
    # setting's test scores; runs trained before this command are tested first.
    runs = sweep_lib.expand(tiny_config(), sweep_lib.load_sweep(SWEEP), tempfile.mkdtemp())
    done, events = {runs[0].workdir}, []  # (lr3e-3, seed 0) trained by an earlier command

    def train(runner, group):
      del runner
      events.append(("train", *(f"{r.setting}/{r.seed}" for r in group)))
      done.update(r.workdir for r in group)
      return True

    def test(config, workdir, dataset):
      del config, dataset
      events.append(("test", next(f"{r.setting}/{r.seed}" for r in runs if r.workdir == workdir)))

    with mock.patch.object(sweep_lib.Runner, "_train", train), \
        mock.patch.object(sweep_lib.Runner, "dataset", lambda runner, config: None), \
        mock.patch.object(sweep_lib, "trained", lambda run: run.workdir in done), \
        mock.patch.object(sweep_lib, "tested", lambda run: False), \
        mock.patch.object(sweep_lib.evaluate, "evaluate_checkpoint", test), \
        preemption.PreemptionWatch() as preempt:
      self.assertTrue(sweep_lib.Runner(runs, runs[0].workdir, 1).run(preempt))
    self.assertEqual(events, [("test", "lr3e-3/0"), ("train", "lr3e-3/1"), ("test", "lr3e-3/1"),
                              ("train", "lr1e-2/0"), ("test", "lr1e-2/0"),
                              ("train", "lr1e-2/1"), ("test", "lr1e-2/1")])

  @pytest.mark.slow
  def test_shards_rerun_and_results(self):
    workdir = tempfile.mkdtemp()
    sweep = sweep_lib.load_sweep(SWEEP)
    runs = sweep_lib.expand(tiny_config(), sweep, workdir)
    self.assertEqual([(r.setting, r.seed) for r in runs],
                     [("lr3e-3", 0), ("lr3e-3", 1), ("lr1e-2", 0), ("lr1e-2", 1)])

    def run_shard(index, max_replicas):
      runner = sweep_lib.Runner(sweep_lib.shard(runs, index, 2), workdir, max_replicas)
      runner.check()
      with preemption.PreemptionWatch() as preempt:
        self.assertTrue(runner.run(preempt))
      self.assertEqual(runner.failed, [])

    run_shard(0, max_replicas=2)  # both seeds of lr3e-3 as replicas of one program
    self.assertEqual(sorted(os.listdir(workdir)), ["lr3e-3"])
    first = snapshot(workdir)
    run_shard(1, max_replicas=1)  # lr1e-2 one run at a time
    self.assertEqual(sorted(os.listdir(workdir)), ["lr1e-2", "lr3e-3"])
    self.assertEqual(snapshot(os.path.join(workdir, "lr3e-3")),
                     {(os.path.relpath(p, "lr3e-3"), s, t) for p, s, t in first
                      if p.startswith("lr3e-3" + os.sep)})
    for run in runs:  # every run trained exactly once, tested on its best checkpoint
      with open(os.path.join(run.workdir, "metrics.jsonl")) as f:
        self.assertEqual([json.loads(line)["step"] for line in f], [2, 4])
      test = _read_json(os.path.join(run.workdir, "eval_test.json"))
      self.assertEqual((test["split"], test["checkpoint"]), ("test", "best"))

    # The whole sweep again, by the command: nothing trained or rewritten, results written.
    before = snapshot(workdir)
    code, err = run_sweep(f"--workdir={workdir}")
    self.assertEqual(code, 0, err[-3000:])
    self.assertIn("4 runs in this shard: 4 trained already, 0 to train", err)
    after = {entry for entry in snapshot(workdir) if not entry[0].startswith(
        ("results.", "curves.png"))}
    self.assertEqual(after, before)
    self.check_results(workdir)

  def check_results(self, workdir):
    """results.csv holds each setting's mean and std over seeds of every score; results.md and
    curves.png are written."""
    with open(os.path.join(workdir, results.RESULTS_CSV)) as f:
      rows = {row["setting"]: row for row in csv.DictReader(f)}
    self.assertEqual(list(rows), ["lr3e-3", "lr1e-2"])
    for setting, row in rows.items():
      self.assertEqual(row["n"], "2")
      for split, name in (("val", workdir_lib.FINAL_METRICS), ("test", "eval_test.json")):
        records = [_read_json(os.path.join(workdir, setting, f"seed{s}", name)) for s in (0, 1)]
        checked = 0
        for key, value in records[0].items():
          if key in results.NOT_SCORES:
            continue
          names = ([(f"{split}_{key}", lambda r, k=key: r[k])] if not isinstance(value, dict)
                   else [(f"{split}_{key}_{c}", lambda r, k=key, c=c: r[k][c]) for c in value])
          for column, get in names:
            values = np.array([np.nan if get(r) is None else get(r) for r in records], float)
            if np.isnan(values).any():
              continue
            np.testing.assert_allclose(
                [float(row[f"{column}_mean"]), float(row[f"{column}_std"])],
                [values.mean(), values.std(ddof=1)], rtol=1e-9, atol=1e-12, err_msg=column)
            checked += 1
        self.assertGreater(checked, 20)
      self.assertGreater(float(row["params"]), 0)
      self.assertGreater(float(row["gflops"]), 0)
      self.assertGreater(float(row["train_seconds_mean"]), 0)
    with open(os.path.join(workdir, results.RESULTS_MD)) as f:
      text = f.read()
    self.assertIn("| lr1e-2 | 2 | ", text)
    self.assertIn("IoU per class, test:", text)
    with open(os.path.join(workdir, results.CURVES_PNG), "rb") as f:
      self.assertEqual(f.read(4), b"\x89PNG")


if __name__ == "__main__":
  absltest.main()
