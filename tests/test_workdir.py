"""Tests of seg_jax.workdir: the stored config, loading it back and refusing a changed one, and
the dataset info."""

import os
import tempfile

from absl.testing import absltest
import numpy as np

from seg_jax import errors
from seg_jax import workdir as workdir_lib
from seg_jax import writers
from seg_jax.data import palettes
from tests.train_testing import LOOP_MODEL
from tests.train_testing import tiny_config
from tests.train_testing import tiny_dataset


class WorkdirTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.workdir = tempfile.mkdtemp()
    self.config = tiny_config("deeplabv3")
    workdir_lib.RunDir(self.workdir).save_config(self.config)

  def test_load_config_restores_tuples_and_locks(self):
    loaded = workdir_lib.RunDir(self.workdir).load_config()
    self.assertEqual(loaded.to_dict(), self.config.to_dict())
    self.assertEqual(loaded.data.image_size, (32, 32))
    self.assertEqual(loaded.model.kwargs.backbone_kwargs.stage_sizes, (1, 1, 1, 1))
    with self.assertRaises(AttributeError):
      loaded.train.num_step = 3

  def test_load_config_errors_name_the_file(self):
    with self.assertRaisesRegex(errors.WorkdirError, "config.json does not exist"):
      workdir_lib.RunDir(tempfile.mkdtemp()).load_config()
    with open(workdir_lib.RunDir(self.workdir).file(workdir_lib.CONFIG_FILE), "w") as f:
      f.write("{")
    with self.assertRaisesRegex(errors.WorkdirError, "config.json is unreadable"):
      workdir_lib.RunDir(self.workdir).load_config()

  def test_allowed_fields_may_change(self):
    self.assertTrue(workdir_lib.RunDir(self.workdir).check_config(self.config))
    self.assertFalse(workdir_lib.RunDir(tempfile.mkdtemp()).check_config(self.config))
    changed = tiny_config("deeplabv3", **{
        "train.num_steps": 40, "train.log_every": 7, "train.eval_every": 9,
        "train.checkpoint_every": 3, "train.keep_checkpoints": 5,
        "train.compilation_cache_dir": "/tmp/cache", "eval.num_images": 0,
        "eval.global_batch_size": 4, "data.keep_on_device": True})
    workdir_lib.RunDir(self.workdir).check_config(changed)
    evaluation = tiny_config("deeplabv3", **{"train.mode": "eval", "eval.split": "test",
                                             "eval.output_dir": "/tmp/out",
                                             "data.root": "/data/moved",
                                             "eval.resolution": "full",
                                             "eval.predict.mode": "slide",
                                             "eval.predict.window": (64, 64),
                                             "eval.predict.scales": (0.5, 1.0)})
    workdir_lib.RunDir(self.workdir).check_config(evaluation)

  def test_other_changes_are_refused_with_every_difference(self):
    other = tiny_config("unet", **{"optim.learning_rate": 0.01, "eval.split": "test"})
    with self.assertRaises(errors.WorkdirError) as caught:
      workdir_lib.RunDir(self.workdir).check_config(other)
    message = str(caught.exception)
    for part in ("model.name: 'deeplabv3' -> 'unet'", "optim.learning_rate: 0.003 -> 0.01",
                 "eval.split: 'val' -> 'test'",
                 "model.kwargs.backbone_kwargs.widths: '<absent>' -> [4, 8, 16]",
                 "model.kwargs.neck_kwargs.features: 8 -> '<absent>'", "use a new --workdir"):
      self.assertIn(part, message)
    self.assertNotIn("\n", message)

  def test_differences_compare_tuples_as_stored(self):
    stored = {"data": {"image_size": [32, 32]}, "seed": 0}
    diff = {k: (old, new) for k, old, new in workdir_lib.differences(stored, tiny_config())}
    self.assertNotIn("data.image_size", diff)
    self.assertNotIn("seed", diff)
    self.assertEqual(diff["model.name"], ("<absent>", LOOP_MODEL))
    allowed = workdir_lib.differences(stored, tiny_config(), allowed=tuple(diff))
    self.assertEqual(allowed, [])

  def test_schedule_length_is_the_first_launchs(self):
    fresh = workdir_lib.RunDir(tempfile.mkdtemp()).resolve_schedule(tiny_config())
    self.assertEqual(fresh.optim.schedule_steps, 4)  # train.num_steps of the first launch
    run_dir = workdir_lib.RunDir(tempfile.mkdtemp())
    run_dir.save_config(fresh)
    extended = run_dir.resolve_schedule(tiny_config(**{"train.num_steps": 40}))
    self.assertEqual(extended.optim.schedule_steps, 4)
    run_dir.check_config(extended)
    stretched = tiny_config(**{"train.num_steps": 40, "optim.schedule_steps": 40})
    self.assertIs(run_dir.resolve_schedule(stretched), stretched)
    run_dir.check_config(stretched)  # a rerun may stretch the schedule, when it says so

  def test_config_of_a_run_from_before_a_field_existed(self):
    stored = tiny_config(**{"train.num_steps": 7}).to_dict()
    del stored["optim"]["schedule_steps"], stored["eval"]["exclude_classes"]
    del stored["train"]["xla_cpu_ynnpack"]
    run_dir = workdir_lib.RunDir(tempfile.mkdtemp())
    writers.write_json(run_dir.file(workdir_lib.CONFIG_FILE), stored)
    loaded = run_dir.load_config()
    self.assertEqual(loaded.optim.schedule_steps, 7)  # the schedule it was trained with
    self.assertEqual(loaded.eval.exclude_classes, ())
    self.assertTrue(loaded.train.xla_cpu_ynnpack)  # XLA's default then
    run_dir.check_config(tiny_config(**{"train.num_steps": 7}))  # resumes with its default
    self.assertEqual(run_dir.resolve_schedule(tiny_config()).optim.schedule_steps, 7)

  def test_eval_names_hold_every_setting_that_changes_the_scores(self):
    name = workdir_lib.eval_name
    self.assertEqual(name("test"), "test")  # the names of the defaults are as they were
    self.assertEqual(name("val", full={"mode": "slide"}), "val_full_slide")
    self.assertEqual(name("test", checkpoint="latest"), "test_latest")
    self.assertEqual(
        name("val", checkpoint="latest", full={"mode": "slide", "scales": (0.5,),
                                               "tta": "flips", "window": (144, 256),
                                               "overlap": 0.5, "blend": "smooth"}),
        "val_full_slide_w144x256_o0.5_blend-smooth_s0.5_tta-flips_latest")
    self.assertEqual(name("val", full={"mode": "resize", "scales": (0.25, 1)}),
                     "val_full_resize_s0.25-1")
    with self.assertRaisesRegex(ValueError, "no name for the prediction options"):
      name("val", full={"mode": "slide", "gamma": 2})


class DataInfoTest(absltest.TestCase):

  def test_round_trip_through_the_workdir(self):
    dataset = tiny_dataset()
    workdir = tempfile.mkdtemp()
    workdir_lib.RunDir(workdir).save_data_info(dataset)
    info = workdir_lib.RunDir(workdir).data_info()
    self.assertEqual(info.palette, dataset.palette)
    self.assertEqual(info.class_names, dataset.class_names)
    np.testing.assert_allclose(info.mean, dataset.mean, rtol=1e-6)
    np.testing.assert_allclose(info.std, dataset.std, rtol=1e-6)
    self.assertEqual(info.image_size, (32, 32))

  def test_black_class_colour_survives(self):
    palette = palettes.Palette(names=("a", "b"), colors=((0, 0, 0), (9, 9, 9)),
                               ignore_color=(255, 0, 255))
    info = workdir_lib.DataInfo(palette, (1.0, 2.0, 3.0), (4.0, 5.0, 6.0), (8, 8))
    self.assertEqual(workdir_lib.DataInfo.from_dict(info.to_dict()), info)

  def test_training_scale_is_kept_and_older_files_read_as_1(self):
    info = workdir_lib.DataInfo(palettes.DUBAI_AERIAL, (1.0, 2.0, 3.0), (4.0, 5.0, 6.0),
                                (144, 256), training_scale=0.1875)
    stored = info.to_dict()
    self.assertEqual(stored["training_scale"], 0.1875)
    self.assertEqual(workdir_lib.DataInfo.from_dict(stored), info)
    del stored["training_scale"]  # dataset.json written before the scale was recorded
    self.assertEqual(workdir_lib.DataInfo.from_dict(stored).training_scale, 1.0)

  def test_bad_file_is_named(self):
    workdir = tempfile.mkdtemp()
    path = os.path.join(workdir, workdir_lib.DATA_INFO_FILE)
    with open(path, "w") as f:
      f.write('{"mean": [1, 2, 3]}')
    with self.assertRaisesRegex(errors.WorkdirError, path):
      workdir_lib.RunDir(workdir).data_info()


if __name__ == "__main__":
  absltest.main()
