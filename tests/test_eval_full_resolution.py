"""Tests of `--config.train.mode=eval` at full resolution (`eval.resolution="full"`).

A tiny model is trained for 2 steps at 32x32 on a Dubai-layout folder of odd-sized images;
its val images (43x56 and 44x58) are then predicted at their own size and scored against their
masks, which each hold a 1-pixel-wide column of water that resizing to 32x32 would drop.
"""

import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image

from seg_jax import data as data_lib
from seg_jax import errors
from seg_jax import evaluate
from seg_jax import inference
from seg_jax import steps
from seg_jax import train
from seg_jax.data import palettes
from seg_jax.data import preprocess
from seg_jax import workdir as workdir_lib
from tests.data import fixtures
from tests.train_testing import REPO, default_config, tiny_config  # pylint: disable=g-multiple-import

WATER = palettes.DUBAI_AERIAL.names.index("water")
LAND = palettes.DUBAI_AERIAL.names.index("land")


def _folder_config(root, **overrides):
  return tiny_config(**{"data.name": "dubai_aerial", "data.root": root, "train.num_steps": 2,
                        **overrides})


def _eval_config(root, **overrides):
  return _folder_config(root, **{"train.mode": "eval", "eval.resolution": "full", **overrides})


def _add_water_line(mask_path, column):
  """Rewrites a mask with water only in `column`, one pixel wide; returns its label map."""
  with Image.open(mask_path) as im:
    label = data_lib.decode_mask(np.asarray(im.convert("RGB")), fixtures.PALETTE)
  label = np.where(label == WATER, LAND, label).astype(np.uint8)
  label[:, column] = WATER
  fixtures.save_mask(mask_path, label, "RGB")
  return label


def _restored(config, workdir):
  """(trainer, best state) of a workdir, as eval mode restores them."""
  trainer = steps.Trainer(config)
  ckpt = workdir_lib.RunDir(workdir).checkpointer(read_only=True)
  try:
    state, _ = ckpt.restore_state(trainer.abstract_state, "best")
  finally:
    ckpt.close()
  return trainer, state


class FullResolutionEvalTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    fixtures.make_tile_layout(cls.root)  # tile 1 (val): 43x56 and 44x58
    masks = os.path.join(cls.root, "Tile 1", "masks")
    # Column 10 falls between the columns a nearest resize from 56 or 58 to 32 keeps.
    cls.labels = [_add_water_line(os.path.join(masks, f"image_part_00{i}.png"), 10)
                  for i in (1, 2)]
    cls.workdir = tempfile.mkdtemp()
    train.train_and_evaluate(_folder_config(cls.root), cls.workdir)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    shutil.rmtree(cls.workdir, ignore_errors=True)
    super().tearDownClass()

  def test_labels_are_scored_at_their_own_size(self):
    for label in self.labels:  # what resizing would have done to the thin class
      _, small = preprocess.resize_pair(np.zeros((*label.shape, 3), np.uint8), label, (32, 32))
      self.assertNotIn(WATER, small)
    config = _eval_config(self.root)
    trainer, state = _restored(config, self.workdir)
    options = evaluate.full_resolution_options(trainer)
    self.assertEqual(options["window"], (32, 32))
    examples = data_lib.full_resolution_examples(config.data, "val")
    _, cm = evaluate.evaluate_full_resolution(trainer, state, examples, options)
    counts = sum(np.bincount(label[label < 6], minlength=6) for label in self.labels)
    np.testing.assert_array_equal(cm.sum(axis=1), counts)
    self.assertEqual(cm[WATER].sum(), 43 + 44)  # the 1-pixel column of both images

  def test_images_at_the_training_size_score_as_in_training(self):
    # Resize mode on images already at the training size sees what the eval step sees.
    trainer, state = _restored(_eval_config(self.root), self.workdir)
    val = trainer.dataset.val
    examples = ({**val[i], "name": str(i)} for i in range(len(val)))
    result, cm = evaluate.evaluate_full_resolution(trainer, state, examples,
                                                evaluate.full_resolution_options(trainer))
    expected, expected_cm, _ = trainer.evaluate(state)
    np.testing.assert_array_equal(cm, expected_cm)
    self.assertAlmostEqual(result["miou"], expected["miou"], places=6)
    self.assertAlmostEqual(result["loss"], expected["loss"], places=4)

  @parameterized.parameters(
      ({}, "val_full_resize"),
      # Options that change the scores are named too, so one evaluation never overwrites
      # another's (this one was test_full_slide before).
      ({"eval.predict.mode": "slide", "eval.predict.tta": "flips", "eval.split": "test",
        "eval.predict.blend": "smooth"}, "test_full_slide_blend-smooth_tta-flips"))
  def test_outputs_name_the_resolution_and_mode(self, overrides, name):
    output_dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, output_dir, ignore_errors=True)
    record = train.run(_eval_config(self.root, **{"eval.output_dir": output_dir, **overrides}),
                       self.workdir).final
    self.assertEqual(sorted(os.listdir(output_dir)),
                     sorted([f"eval_{name}.json", f"eval_{name}_table.txt",
                             f"confusion_matrix_{name}.png"]))
    with open(os.path.join(output_dir, f"eval_{name}.json")) as f:
      saved = json.load(f)
    self.assertEqual(saved["resolution"], "full")
    self.assertEqual(saved["predict"]["mode"], overrides.get("eval.predict.mode", "resize"))
    self.assertEqual(saved["predict"]["window"], [32, 32])
    self.assertAlmostEqual(saved["miou"], record["miou"])
    self.assertBetween(record["miou"], 0.0, 1.0)
    self.assertTrue(np.isfinite(record["loss"]))

  def test_no_evaluation_overwrites_another(self):
    # Slide mode at scale 1 and at scale 0.5, both leaving "unlabeled" out of the _excluding
    # means: two sets of outputs side by side, each record with both mIoUs.
    output_dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, output_dir, ignore_errors=True)
    records = {}
    for scales, name in (((1.0,), "val_full_slide"), ((0.5,), "val_full_slide_s0.5")):
      records[name] = train.run(_eval_config(self.root, **{
          "eval.output_dir": output_dir, "eval.predict.mode": "slide",
          "eval.predict.scales": scales, "eval.exclude_classes": ("unlabeled",)}),
                                self.workdir).final
    self.assertEqual(sorted(os.listdir(output_dir)), sorted(
        f"{prefix}{name}{suffix}" for name in records
        for prefix, suffix in (("eval_", ".json"), ("eval_", "_table.txt"),
                               ("confusion_matrix_", ".png"))))
    for name, record in records.items():
      with open(os.path.join(output_dir, f"eval_{name}.json")) as f:
        saved = json.load(f)
      self.assertEqual(saved["exclude_classes"], ["unlabeled"])
      iou = [v for k, v in saved["iou"].items() if k != "unlabeled" and v is not None]
      self.assertAlmostEqual(saved["miou_excluding"], np.mean(iou))
      self.assertAlmostEqual(saved["miou_excluding"], record["miou_excluding"])
      with open(os.path.join(output_dir, f"eval_{name}_table.txt")) as f:
        self.assertIn("miou w/o unlabeled", f.read())

  def test_without_config_the_run_is_evaluated_with_its_stored_config(self):
    # No --config: the workdir's config.json, data.root included, with the overrides given.
    output_dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, output_dir, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
               JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "seg_jax.main", f"--workdir={self.workdir}",
         "--config.train.mode=eval", f"--config.eval.output_dir={output_dir}"],
        cwd=tempfile.gettempdir(), env=env, capture_output=True, text=True, timeout=300,
        check=False)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertIn(f"reading data dubai_aerial from {self.root}", proc.stderr)
    with open(os.path.join(output_dir, "eval_val.json")) as f:
      self.assertEqual(json.load(f)["split"], "val")

  def test_a_stored_data_root_that_is_gone_is_named_as_the_stored_one(self):
    workdir = tempfile.mkdtemp()
    gone = os.path.join(workdir, "moved_away")
    workdir_lib.RunDir(workdir).save_config(_folder_config(gone))
    stored = workdir_lib.RunDir(workdir).load_config()
    config = stored.copy_and_resolve_references()
    config.train.mode = "eval"
    with self.assertRaisesRegex(
        errors.DataError, rf"data.root '{gone}' is not a folder.* the one the run was trained "
        rf"with, stored in {workdir}/config.json; .*--config.data.root=DIR"):
      train.run(config, workdir)

  def test_bad_settings_are_named_before_restoring(self):
    empty = tempfile.mkdtemp()  # no checkpoint: every error below comes first
    for overrides, error, message in (
        ({"eval.predict.blend": "gauss"}, errors.ConfigError, "eval.predict.*blend.*'gauss'"),
        ({"eval.predict.window": (16, 16)}, errors.ConfigError,
         r"eval.predict.*window \(16, 16\).*32 pixels"),
        ({"eval.resolution": "native"}, errors.ConfigError, "eval.resolution must be one of"),
        ({"data.split": "random_patch", "data.prep": "patches", "data.patch_size": 32},
         errors.DataError, "random_patch")):
      with self.subTest(overrides=overrides), self.assertRaisesRegex(error, message):
        train.run(_eval_config(self.root, **overrides), empty)
    with self.assertRaisesRegex(errors.ConfigError, "eval.resolution='full' scores a checkpoint"):
      train.run(_folder_config(self.root, **{"eval.resolution": "full"}), empty)
    self.assertEqual(os.listdir(empty), [])


class ConfigTest(absltest.TestCase):

  def test_config_holds_the_predict_defaults(self):
    defaults = inspect.signature(inference.predict).parameters
    options = default_config.get_config().eval.predict
    for name in ("mode", "overlap", "blend", "tta", "scales", "batch_size"):
      self.assertEqual(options[name], defaults[name].default, name)


if __name__ == "__main__":
  absltest.main()
