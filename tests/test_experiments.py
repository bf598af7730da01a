"""The course experiments: each entry point runs at toy size and rewrites only its README section;
the helpers they share check what they promise."""

import importlib
import os
import re
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np
from PIL import Image
import pytest

from experiments import common
from experiments import sweeps
from seg_jax import errors
from seg_jax import state as state_lib
from seg_jax import sweep as sweep_lib
from seg_jax import writers
from seg_jax.data import preprocess
from tests.data import fixtures

# The real Dubai tiles when this checkout has them, otherwise a synthetic scene.
DATA_ROOT = fixtures.SHARED_DUBAI if os.path.isdir(fixtures.SHARED_DUBAI) else ""

# (module, README section name, figures it writes, whether it reads images)
EXPERIMENTS = (
    ("experiments.convolution.run", "",
     ("filters.png", "correlate_vs_convolve.png", "padding_stride.png", "dilation.png",
      "filter_bank.png"), True),
    ("experiments.pooling_and_arithmetic.run", "",
     ("pooling.png", "transposed.png", "receptive_field.png"), True),
    ("experiments.activations.run", "", ("activations.png", "softmax.png"), False),
    ("experiments.augmentation.samples", "samples", ("samples.png",), True),
)
# Experiments that train, run at toy size by their own tests.
TRAINED = (("experiments.mlp_vs_cnn.run", "", ("shift.png",), True),)
# Experiments that train (a toy sweep or run: compilation of a few small programs, ~30 s each).
TRAINING_EXPERIMENTS = (
    ("experiments.regularisation.run", "", ("curves.png",), True),
    ("experiments.augmentation.run", "training", ("curves.png",), True),
    ("experiments.feature_maps.run", "",
     ("filters.png", "feature_maps.png", "se_images.png", "se_gates.png", "aspp.png"), True),
)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tempdir(test: absltest.TestCase) -> str:
  return test.enterContext(tempfile.TemporaryDirectory())


def run_toy(test: absltest.TestCase, module: str, section: str, figures, out: str,
            data_root: str) -> str:
  """Runs ``module --toy --out=out --data_root=data_root``; checks it rewrote only its README
  section, which shows its ``figures``; returns that README."""
  begin, end = writers.section_markers(section)
  with open(os.path.join(out, "README.md"), "w") as f:
    f.write(f"question\n\n{begin}\nstale table\n{end}\n\nreading\n")
  folder = os.path.join(REPO, *module.split(".")[:2])
  importlib.import_module(module).run(common.options(folder, out=out, toy=True,
                                                     data_root=data_root))
  with open(os.path.join(out, "README.md")) as f:
    readme = f.read()
  test.assertTrue(readme.startswith(f"question\n\n{begin}\n"), readme[:200])
  test.assertTrue(readme.endswith(f"\n{end}\n\nreading\n"), readme[-200:])
  test.assertNotIn("stale table", readme)
  test.assertIn(f"`python -m {module} --toy --out={out}`", readme)
  test.assertCountEqual(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme), figures)
  for name in figures:
    with Image.open(os.path.join(out, name)) as image:
      test.assertGreater(min(image.size), 100, name)
  return readme


class ExperimentTest(parameterized.TestCase):

  @parameterized.named_parameters(
      (module.split(".", 1)[1].replace(".", "_"), module, section, figures, images)
      for module, section, figures, images in EXPERIMENTS)
  def test_toy_run_writes_its_figures_and_only_its_readme_section(self, module, section,
                                                                     figures, images):
    run_toy(self, module, section, figures, _tempdir(self), DATA_ROOT if images else "")

  @parameterized.named_parameters(
      (module.split(".", 1)[1].replace(".", "_"), module, section, figures, images)
      for module, section, figures, images in TRAINING_EXPERIMENTS)
  @pytest.mark.slow
  def test_toy_training_run_writes_its_figures_and_only_its_readme_section(
      self, module, section, figures, images):
    run_toy(self, module, section, figures, _tempdir(self), DATA_ROOT if images else "")

  @parameterized.named_parameters(
      (module.split(".", 1)[1].replace(".", "_"), module, section, figures)
      for module, section, figures, _ in EXPERIMENTS + TRAINING_EXPERIMENTS + TRAINED)
  def test_committed_readme_shows_its_committed_figures(self, module, section, figures):
    folder = os.path.join(os.path.dirname(__file__), "..", *module.split(".")[:2])
    with open(os.path.join(folder, "README.md")) as f:
      readme = f.read()
    begin, end = writers.section_markers(section)
    generated = readme.split(begin, 1)[1].split(end, 1)[0]
    # Made by the full command, into the experiment's own folder.
    self.assertRegex(generated, rf"`python -m {re.escape(module)}( --out=\S+)?` in")
    self.assertCountEqual(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", generated), figures)
    for name in figures:
      self.assertTrue(os.path.isfile(os.path.join(folder, name)), name)

  def test_toy_never_writes_into_the_experiments_own_folder(self):
    # The toy figures must never replace the committed ones.
    folder = _tempdir(self)
    with self.assertRaises(errors.FlagError):
      common.options(folder, out=folder, toy=True)

  def test_without_out_a_new_temporary_folder_not_the_clone(self):
    folder = os.path.join(REPO, "experiments", "activations")
    opts = common.options(folder)
    self.addCleanup(os.rmdir, opts.out)
    self.assertNotEqual(os.path.abspath(opts.out), os.path.abspath(folder))
    self.assertEqual(os.path.dirname(opts.out), tempfile.gettempdir())
    self.assertEqual(os.listdir(opts.out), [])
    self.assertEqual(common.options(folder, out=folder).out, folder)  # in place when asked

  def test_the_command_line_is_seg_jax_s(self):
    # A user error is one line on stderr and exit code 2, before anything is written.
    proc = subprocess.run([sys.executable, "-m", "experiments.activations.run", "--toy",
                           "--out=experiments/activations"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    self.assertEqual(proc.returncode, errors.EXIT_USER_ERROR, proc.stderr[-2000:])
    self.assertEqual(proc.stderr.strip().splitlines(),
                     ["error (flags): --toy with --out=experiments/activations, the experiment's "
                      "own folder: its figures would replace the committed ones; give another "
                      "--out or none (--verbosity=1 shows the traceback)"])

  def test_missing_data_root_is_an_error_naming_it(self):
    with self.assertRaisesRegex(ValueError, "no_such_folder"):
      common.read_scene("/no_such_folder")

  def test_synthetic_scene_without_data_root(self):
    scene = common.read_scene("").crop(32)
    self.assertEqual(scene.image.shape, (32, 32, 3))
    self.assertEqual(scene.gray().shape, (32, 32))
    self.assertIn("synthetic", scene.source)


class EncoderLayersTest(absltest.TestCase):
  """The receptive-field table reads the layer list from the model's own fields."""

  def _model(self, **kwargs):
    from seg_jax import models  # pylint: disable=g-import-not-at-top
    return models.create("asym_unet", num_classes=2,
                         backbone_kwargs={"widths": (8, 16, 32), "blocks": (1, 2, 3)},
                         decoder_kwargs={"widths": (16, 8)}, **kwargs)

  def test_stages_and_aspp_branches(self):
    run = importlib.import_module("experiments.pooling_and_arithmetic.run")
    stages, branches = run.encoder_layers(self._model(neck_kwargs={"rates": (2, 5)}))
    self.assertEqual(stages, [("stage0", [(3, 1, 1)]),
                              ("stage1", [(2, 2, 1), (3, 1, 1), (3, 1, 1)]),
                              ("stage2", [(2, 2, 1), (3, 1, 1), (3, 1, 1), (3, 1, 1)])])
    self.assertEqual(branches, [("ASPP rate 2", (3, 1, 2)), ("ASPP rate 5", (3, 1, 5))])

  def test_no_branches_without_aspp(self):
    run = importlib.import_module("experiments.pooling_and_arithmetic.run")
    self.assertEqual(run.encoder_layers(self._model(neck="none"))[1], [])

  def test_gradient_reaches_exactly_the_receptive_field(self):
    run = importlib.import_module("experiments.pooling_and_arithmetic.run")
    stack = [(3, 1, 1), (2, 2, 1), (3, 1, 1), (3, 1, 2)]  # Field 3, 4, 8, 16 pixels.
    grad = run.gradient_map(stack, 32)
    rows, cols = np.nonzero(grad.any(axis=1))[0], np.nonzero(grad.any(axis=0))[0]
    self.assertEqual((np.ptp(rows) + 1, np.ptp(cols) + 1), (16, 16))


class TransferLearningTest(absltest.TestCase):
  """The transfer-learning driver: its runs are configs a user can launch, its tables read them."""

  def setUp(self):
    super().setUp()
    self.run = importlib.import_module("experiments.transfer_learning.run")

  def test_every_run_is_a_config_and_a_command(self):
    runs = "/runs"
    for name in ("pretrain", *self.run.ARMS):
      overrides = self.run.overrides_for(name, 1, 150, runs, False, "/data/dubai")
      config = self.run.make_config(overrides, name)  # raises on a field the config lacks
      self.assertEqual(config.seed, 1)
      self.assertEqual(config.model.init_from, "" if name in ("pretrain", "scratch")
                       else "/runs/pretrain")
      line = self.run.command(f"/runs/{name}", overrides)
      self.assertStartsWith(line, "python -m seg_jax.main --config=configs/dubai.py:asym_unet "
                            f"--workdir=/runs/{name} --config.seed=1 ")
    self.assertEqual(self.run.make_config(self.run.overrides_for(
        "frozen", 0, 150, runs, False, ""), "frozen").optim.backbone, "freeze")

  def test_toy_runs_are_configs_of_the_toy_budget(self):
    for name in ("pretrain", *self.run.ARMS):
      config = self.run.make_config(
          self.run.overrides_for(name, 0, 150, "/runs", True, "/data/dubai"), name)
      self.assertEqual((config.train.num_steps, tuple(config.data.image_size)), (2, (32, 32)))

  @pytest.mark.slow  # pretrains, then fine-tunes and tests 4 arms at toy size (~1 min warm)
  def test_toy_run(self):
    root, out = _tempdir(self), _tempdir(self)
    fixtures.make_tile_layout(root, tiles=tuple(range(1, 9)))
    readme = run_toy(self, "experiments.transfer_learning.run", "", ("curves.png",), out, root)
    for arm in self.run.ARMS:
      self.assertRegex(readme, rf"\n\| {arm} \| 0 \| 0\.\d{{3}} \(step 2\) \| 0\.\d{{3}} \| ")
    self.assertIn(f"--workdir={out}/runs/frozen_seed0 ", readme)

  def test_tables_pair_each_arm_with_scratch_at_the_same_seed(self):
    classes = {"building": 0.1, "land": 0.2, "road": 0.3, "vegetation": 0.4, "water": 0.5,
               "unlabeled": 0.0}
    timing = {"seconds": 90.0, "load_start": 1.0, "load_end": 2.0}

    def result(mious, test):
      val = [{"step": 25 * (i + 1), "miou": m, "loss": 1.0 - m} for i, m in enumerate(mious)]
      return {"val": val, "test": {"miou": test, "pixel_accuracy": 0.5, "iou": classes},
              "timing": timing}

    results = {}
    for seed, offset in ((0, 0.0), (1, 0.1)):
      for i, arm in enumerate(self.run.ARMS):
        results[(arm, seed)] = result([0.1 + offset, 0.2 + 0.1 * i + offset], 0.3 + 0.1 * i)
    per_run, per_arm = self.run.tables(results, result([0.5, 0.6], 0.0), 1024)[1:3]
    self.assertIn("| frozen | 1 | 0.400 (step 50) | 0.400 | 0.400 | 0.500 | 1m30s | 1.0 / 2.0 |",
                  per_run)
    self.assertIn("| full | 0.550 | 0.500-0.600 | +0.300 / +0.300 | 0.600 | 0.600-0.600 | "
                  "+0.300 / +0.300 |", per_arm)
    curves = self.run.mean_curves(results)
    self.assertEqual([round(r["miou"], 6) for r in curves["low_lr (mean of 2)"]], [0.15, 0.45])

  def test_committed_readme_was_generated_by_the_full_command(self):
    folder = os.path.join(os.path.dirname(__file__), "..", "experiments", "transfer_learning")
    with open(os.path.join(folder, "README.md")) as f:
      begin, end = writers.section_markers()
      generated = f.read().split(begin, 1)[1].split(end, 1)[0]
    self.assertIn("Generated by `python -m experiments.transfer_learning.run` in", generated)
    self.assertEqual(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", generated), ["curves.png"])
    self.assertTrue(os.path.isfile(os.path.join(folder, "curves.png")))


class MlpVsCnnTest(absltest.TestCase):
  """The MLP-vs-CNN experiment trains its classifiers through the sweep runner."""

  @pytest.mark.slow  # trains and tests three classifiers (compiles dominate: ~15 s warm)
  def test_toy_run(self):
    root, out = _tempdir(self), _tempdir(self)
    fixtures.make_tile_layout(root, tiles=tuple(range(1, 9)))
    readme = run_toy(self, *TRAINED[0][:3], out, root)
    for setting in ("mlp", "cnn", "locally_connected"):
      self.assertRegex(readme, rf"\n\| {setting} \| `(mlp|simple_cnn)` .*\| 1 \| 0\.\d{{3}} \|")
      self.assertRegex(readme, rf"\n\| {setting} accuracy \| 0\.\d{{3}} \| 0\.\d{{3}} \| ")
      self.assertTrue(os.path.isfile(os.path.join(out, "runs", setting, "seed0",
                                                  "eval_test.json")))
    self.assertIn(f"--workdir={out}/runs --config.data.root={root}", readme)

  def test_shifted_windows_are_cut_from_the_image(self):
    run = importlib.import_module("experiments.mlp_vs_cnn.run")
    root = _tempdir(self)
    written = fixtures.make_tile_layout(root, tiles=(1, 2, 3))
    shift_set = run.shift_windows(run.base_config(root, toy=True).data, (0, 1, 2), 10, 0, 6)
    self.assertEqual(sorted(shift_set.crops), sorted(
        [(0, 0)] + [(d * r, d * c) for d in (1, 2) for r, c in run.DIRECTIONS]))
    # Tile 3 holds a 49x56 and a 50x58 image; of their 16x16 test patches, those 2 px inside the
    # border start at row 16 (and 32 in the second image), column 16 or 32. Each covers 4 label
    # blocks of 8x8, so its majority class covers at least the toy purity, 20 %.
    self.assertEqual((shift_set.candidates, len(shift_set.labels)), (6, 6))
    (image, label), _ = (written[f"tile3/image_part_00{i}"] for i in (1, 2))
    np.testing.assert_array_equal(shift_set.crops[0, 0][1], image[16:32, 32:48])
    np.testing.assert_array_equal(shift_set.crops[0, -2][1], image[16:32, 30:46])
    np.testing.assert_array_equal(shift_set.crops[2, 0][0], image[18:34, 16:32])
    classes, _ = preprocess.majority_classes(label[None, 16:32, 32:48], 6, 0.2)
    self.assertEqual(shift_set.labels[1], classes[0])


class ToySweepTest(absltest.TestCase):

  def test_toy_lays_its_overrides_over_the_settings_it_names_on_the_first_seed(self):
    sweep = sweep_lib.Sweep({"a": {"x.y": 1, "x.z": 2}, "b": {"x.y": 3}}, (4, 5))
    self.assertEqual(sweeps.toy(sweep, {"a": {"x.z": 0, "x.w": 1}}),
                     sweep_lib.Sweep({"a": {"x.y": 1, "x.z": 0, "x.w": 1}}, (4,)))


class RegularisationSweepTest(absltest.TestCase):
  """Every setting of the regularisation sweep builds the model it names."""

  def test_each_setting_changes_one_regulariser(self):
    from configs import dubai as dubai_config  # pylint: disable=g-import-not-at-top
    from seg_jax import models  # pylint: disable=g-import-not-at-top
    from seg_jax.models import summary  # pylint: disable=g-import-not-at-top
    module = importlib.import_module("experiments.regularisation.sweep")
    sweep = sweep_lib.check_sweep(module.get_sweep(), "regularisation")
    runs = sweep_lib.expand(dubai_config.get_config(), sweep, _tempdir(self))
    built = {}
    for run in runs[::len(sweep.seeds)]:
      variables = summary.abstract_variables(state_lib.build_model(run.config, num_classes=6),
                                             (1, *run.config.data.image_size, 3))
      built[run.setting] = (run.config, variables)
    self.assertEqual(list(built), ["baseline", "weight_decay", "dropout", "group_norm",
                                   "no_norm"])
    baseline, variables = built["baseline"]
    self.assertEqual((baseline.data.train_subset, baseline.data.augment.enabled,
                      baseline.optim.weight_decay), (8, False, 0.0))
    self.assertEqual(models.count_params(variables), 169_990)
    self.assertEqual(built["weight_decay"][0].optim.weight_decay, module.WEIGHT_DECAY)
    backbone = built["dropout"][0].model.kwargs.backbone_kwargs
    self.assertEqual((backbone.dropout_rate, built["dropout"][0].model.kwargs.neck_kwargs
                      .dropout_rate), (0.5, 0.5))
    paths = {name: {"/".join(str(getattr(k, "key", k)) for k in path)
                    for path, _ in jax.tree_util.tree_flatten_with_path(v)[0]}
             for name, (_, v) in built.items()}
    self.assertTrue(any("/bn/" in p for p in paths["baseline"]))
    for name, norm in (("group_norm", "/gn/"), ("no_norm", None)):
      self.assertFalse(any("/bn/" in p or p.startswith("batch_stats") for p in paths[name]),
                       name)
      self.assertEqual(any(norm in p for p in paths[name]) if norm else False, bool(norm), name)
    self.assertEqual(models.count_params(built["group_norm"][1]), 169_990)  # scale, bias: as BN
    self.assertLess(models.count_params(built["no_norm"][1]), 169_990)  # conv biases only


class FeatureMapsTest(absltest.TestCase):

  def test_water_and_city_images_are_picked_by_their_labels(self):
    run = importlib.import_module("experiments.feature_maps.run")
    names = ("building", "land", "road", "vegetation", "water", "unlabeled")
    labels = np.full((5, 4, 4), 1, np.uint8)  # land everywhere
    labels[0, :3] = 4  # 75 % water
    labels[1, :2] = 4  # 50 % water, and 25 % road
    labels[1, 2] = 2
    labels[2, :1] = 0  # 25 % building
    labels[3, :3] = 2  # 75 % road
    labels[4, :] = 255  # nothing labelled: no share of anything
    water, city, shares = run.pick_images(labels, names, 2)
    self.assertEqual((water, city), ([0, 1], [3, 2]))
    np.testing.assert_allclose(shares[4], 0.0)
    np.testing.assert_allclose(shares[1], [0, 0.25, 0.25, 0, 0.5, 0])


class CheckShapeTest(absltest.TestCase):

  def test_an_experiment_stops_when_an_array_disagrees_with_the_arithmetic(self):
    run = importlib.import_module("experiments.convolution.run")
    # Only the experiment's own call is wrong; correlate computes its padding elsewhere.
    with mock.patch.object(run.layers, "conv_output_size", lambda *args: 1):
      with self.assertRaisesRegex(AssertionError, "padding='valid' stride=1.*has shape"):
        run.padding_and_stride(np.zeros((16, 16), np.float32), _tempdir(self), 3)

  def test_returns_the_matching_shape(self):
    self.assertEqual(common.check_shape("x", np.zeros((3, 4)), [3, 4]), (3, 4))

  def test_mismatch_raises_with_both_shapes(self):
    with self.assertRaisesRegex(AssertionError, r"conv.*\(3, 4\).*\(3, 5\)"):
      common.check_shape("conv", np.zeros((3, 4)), (3, 5))


class ReadmeSectionTest(absltest.TestCase):

  def _write(self, folder, text):
    with open(os.path.join(folder, "README.md"), "w") as f:
      f.write(text)

  def _read(self, folder):
    with open(os.path.join(folder, "README.md")) as f:
      return f.read()

  def test_replaces_only_the_named_section(self):
    folder = _tempdir(self)
    self._write(folder, "a\n<!-- generated:begin -->\nold\n<!-- generated:end -->\nb\n"
                        "<!-- generated:x:begin -->\nkeep\n<!-- generated:x:end -->\n")
    common.write_readme_section(folder, "| new |")
    self.assertEqual(self._read(folder),
                     "a\n<!-- generated:begin -->\n| new |\n<!-- generated:end -->\nb\n"
                     "<!-- generated:x:begin -->\nkeep\n<!-- generated:x:end -->\n")

  def test_appends_the_section_to_a_readme_without_it(self):
    folder = _tempdir(self)
    self._write(folder, "text")
    common.write_readme_section(folder, "new", name="x")
    self.assertEqual(self._read(folder),
                     "text\n<!-- generated:x:begin -->\nnew\n<!-- generated:x:end -->\n")

  def test_one_marker_alone_is_an_error(self):
    folder = _tempdir(self)
    self._write(folder, "<!-- generated:begin -->\nold\n")
    with self.assertRaisesRegex(ValueError, "lacks <!-- generated:end -->"):
      common.write_readme_section(folder, "new")
    self.assertEqual(self._read(folder), "<!-- generated:begin -->\nold\n")

  def test_markdown_table_escapes_pipes(self):
    self.assertEqual(writers.markdown_table(["max |x|", "n"], [[1, 2]]),
                     "| max \\|x\\| | n |\n|---|---|\n| 1 | 2 |")


if __name__ == "__main__":
  absltest.main()
