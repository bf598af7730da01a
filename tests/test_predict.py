"""Tests of seg_jax.predict (the CLI and its workdir loading) on a tiny trained workdir."""

import contextlib
import io
import os
import shutil
import stat
import subprocess
import sys
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image

from seg_jax import errors
from seg_jax import predict
from seg_jax import train
from seg_jax import viz
from seg_jax import workdir as workdir_lib
from seg_jax.data import palettes
from tests import test_train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS = dict(mode="resize", overlap=0.25, blend="uniform", tta="none", scales=(1.0,),
               batch_size=8)
_WORKDIR = None


def trained_workdir() -> str:
  """A workdir trained for 2 steps at 32x32 (best and latest checkpoint at step 2), at a learning
  rate that leaves few pixels with tied classes."""
  global _WORKDIR
  if _WORKDIR is None:
    _WORKDIR = tempfile.mkdtemp()
    config = test_train.tiny_config(**{"train.num_steps": 2, "optim.learning_rate": 0.03})
    train.train_and_evaluate(config, _WORKDIR, test_train.tiny_dataset())
  return _WORKDIR


def _write(path, array, mode=None):
  Image.fromarray(array, mode).save(path)
  return path


def _rgb(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _run(workdir, input_spec, output, window=None, save_probs=False, **overrides):
  """predict.run with the flag defaults; returns (exit code, stderr)."""
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    code = predict.run(workdir, input_spec, output, checkpoint="best", window=window,
                       save_probs=save_probs, **{**OPTIONS, **overrides})
  return code, err.getvalue()


def _files(folder):
  """{path: (mtime, size)} of everything under `folder`."""
  out = {}
  for root, dirs, files in os.walk(folder):
    for name in dirs + files:
      st = os.stat(os.path.join(root, name))
      out[os.path.join(root, name)] = (st.st_mtime_ns, st.st_size)
  return out


class PredictCommandTest(parameterized.TestCase):

  def test_folder_with_a_corrupt_file_predicts_the_rest_and_fails(self):
    inputs, out = tempfile.mkdtemp(), tempfile.mkdtemp()
    _write(os.path.join(inputs, "odd.png"), _rgb(45, 71))
    with open(os.path.join(inputs, "broken.jpg"), "wb") as f:
      f.write(b"\xff\xd8\xff not a jpeg")
    _write(os.path.join(inputs, "z_grey.png"), _rgb(33, 40)[..., 0])
    result = subprocess.run(
        [sys.executable, "-m", "seg_jax.predict", f"--workdir={trained_workdir()}",
         f"--input={inputs}", f"--output={out}", "--mode=slide"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    self.assertEqual(result.returncode, errors.EXIT_SOME_FAILED, result.stderr)
    self.assertIn(os.path.join(inputs, "broken.jpg"), result.stderr.split("1 failed:")[-1])
    # Orbax's warnings about the read-only checkpoint folder are library chatter.
    self.assertNotIn("read only", result.stderr)
    self.assertNotIn("read_only", result.stderr)
    self.assertIn("predicted 2 of 3 images", result.stdout)
    self.assertCountEqual(os.listdir(out), ["odd_mask.png", "odd_overlay.png",
                                            "z_grey_mask.png", "z_grey_overlay.png"])
    self.assertEqual(Image.open(os.path.join(out, "odd_mask.png")).size, (71, 45))

  @parameterized.named_parameters(
      ("resize", dict(mode="resize")),
      ("slide_smooth_flips", dict(mode="slide", blend="smooth", tta="flips")),
      ("slide_scales", dict(mode="slide", scales=(0.75, 1.25), batch_size=3)),
  )
  def test_outputs_have_the_input_size_and_class_colours(self, options):
    inputs, out = tempfile.mkdtemp(), tempfile.mkdtemp()
    _write(os.path.join(inputs, "odd.png"), _rgb(45, 71))
    code, err = _run(trained_workdir(), os.path.join(inputs, "*.png"), out, save_probs=True,
                     **options)
    self.assertEqual(code, errors.EXIT_OK, err)
    probs = np.load(os.path.join(out, "odd_probs.npy"))
    self.assertEqual(probs.shape, (45, 71, 6))
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    mask = Image.open(os.path.join(out, "odd_mask.png"))
    self.assertEqual((mask.mode, mask.size), ("P", (71, 45)))
    np.testing.assert_array_equal(np.asarray(mask), probs.argmax(-1))
    colours = test_train.tiny_dataset().palette.as_array()
    self.assertEqual(mask.getpalette()[:colours.size], colours.ravel().tolist())
    overlay = np.asarray(Image.open(os.path.join(out, "odd_overlay.png")))
    self.assertEqual(overlay.shape[1], 71)
    self.assertGreater(overlay.shape[0], 45)  # the legend sits below the image

  def test_contrast_overlay_palette_keeps_the_mask_in_the_dataset_colours(self):
    inputs, dataset_out, contrast_out = tempfile.mkdtemp(), tempfile.mkdtemp(), tempfile.mkdtemp()
    image = _write(os.path.join(inputs, "a.png"), _rgb(40, 52))
    self.assertEqual(_run(trained_workdir(), inputs, dataset_out)[0], errors.EXIT_OK)
    code, err = _run(trained_workdir(), inputs, contrast_out, overlay_palette="contrast")
    self.assertEqual(code, errors.EXIT_OK, err)
    masks = [Image.open(os.path.join(out, "a_mask.png")) for out in (dataset_out, contrast_out)]
    self.assertEqual(masks[0].getpalette(), masks[1].getpalette())
    np.testing.assert_array_equal(np.asarray(masks[0]), np.asarray(masks[1]))
    contrast = palettes.high_contrast(test_train.tiny_dataset().palette)
    overlay = np.asarray(Image.open(os.path.join(contrast_out, "a_overlay.png")))
    expected = viz.overlay(np.asarray(Image.open(image)), np.asarray(masks[1]), contrast)
    np.testing.assert_array_equal(overlay[:40], expected)
    code, err = _run(trained_workdir(), inputs, contrast_out, overlay_palette="bogus")
    self.assertEqual(code, errors.EXIT_USER_ERROR)
    self.assertIn("--overlay_palette must be one of ('dataset', 'contrast')", err)

  def test_same_stem_twice_is_refused_not_overwritten(self):
    inputs, out = tempfile.mkdtemp(), tempfile.mkdtemp()
    _write(os.path.join(inputs, "a.png"), _rgb(40, 40))
    _write(os.path.join(inputs, "a.jpg"), _rgb(40, 40))
    code, err = _run(trained_workdir(), inputs, out)
    self.assertEqual(code, errors.EXIT_SOME_FAILED)
    self.assertIn(f"{os.path.join(inputs, 'a.png')}: its outputs would overwrite", err)

  def test_missing_config_is_named(self):
    code, err = _run(tempfile.mkdtemp(), tempfile.mkdtemp(), tempfile.mkdtemp())
    self.assertEqual(code, errors.EXIT_USER_ERROR)
    self.assertIn("config.json does not exist", err)

  def test_missing_checkpoint_is_named(self):
    workdir = tempfile.mkdtemp()
    for name in ("config.json", workdir_lib.DATA_INFO_FILE):
      shutil.copy(os.path.join(trained_workdir(), name), workdir)
    code, err = _run(workdir, tempfile.mkdtemp(), tempfile.mkdtemp())
    self.assertEqual(code, errors.EXIT_USER_ERROR)
    self.assertIn(f"no 'best' checkpoint in {os.path.join(workdir, 'checkpoints')}", err)

  def test_window_below_the_model_minimum_is_refused(self):
    inputs = tempfile.mkdtemp()
    _write(os.path.join(inputs, "a.png"), _rgb(40, 40))
    code, err = _run(trained_workdir(), inputs, tempfile.mkdtemp(), window=(16, 32))
    self.assertEqual(code, errors.EXIT_USER_ERROR)
    self.assertIn("smaller than the model accepts (32 pixels)", err)

  @parameterized.named_parameters(
      ("no_run_in_workdir", (), "workdir", "config.json does not exist"),
      ("bad_window", ("--window=a,b",), "flags", "--window must be H,W integers"),
      ("missing_output", None, "flags", "--output"))
  def test_nothing_ran_is_one_line_and_exit_code_2(self, args, kind, expected):
    workdir, inputs = tempfile.mkdtemp(), tempfile.mkdtemp()
    _write(os.path.join(inputs, "a.png"), _rgb(40, 40))
    output = () if args is None else (f"--output={tempfile.mkdtemp()}", *args)
    result = subprocess.run(
        [sys.executable, "-m", "seg_jax.predict", f"--workdir={workdir}", f"--input={inputs}",
         *output], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    self.assertEqual(result.returncode, errors.EXIT_USER_ERROR, result.stderr)
    lines = result.stderr.strip().splitlines()
    self.assertStartsWith(lines[-1], f"error ({kind}): ")
    self.assertIn(expected, lines[-1])
    self.assertFalse(any("Traceback" in line for line in lines), result.stderr)


class WorkdirTest(absltest.TestCase):

  def test_training_writes_the_dataset_info(self):
    info = workdir_lib.RunDir(trained_workdir()).data_info()
    self.assertEqual(info, workdir_lib.DataInfo.from_dataset(test_train.tiny_dataset()))

  def test_restore_writes_nothing_and_works_on_a_read_only_workdir(self):
    workdir = os.path.join(tempfile.mkdtemp(), "run")
    shutil.copytree(trained_workdir(), workdir)
    before = _files(workdir)
    for path in list(before) + [workdir]:
      os.chmod(path, os.stat(path).st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
      for which in ("best", "latest"):
        trained = predict.load_workdir(workdir, which)
        self.assertEqual(trained.step, 2)
    finally:
      for path in list(before) + [workdir]:
        os.chmod(path, os.stat(path).st_mode | stat.S_IWUSR)
    self.assertEqual(_files(workdir), before)
    probs = trained.predict(_rgb(40, 50))
    self.assertEqual(probs.shape, (40, 50, 6))

  def test_workdir_without_dataset_info_is_named(self):
    workdir = os.path.join(tempfile.mkdtemp(), "run")
    shutil.copytree(trained_workdir(), workdir)
    path = os.path.join(workdir, workdir_lib.DATA_INFO_FILE)
    os.remove(path)
    with self.assertRaisesRegex(errors.WorkdirError, f"{path} does not exist"):
      predict.load_workdir(workdir)


class PredictionScalesTest(absltest.TestCase):

  INFO = workdir_lib.DataInfo(palettes.DUBAI_AERIAL, (1.0, 2.0, 3.0), (4.0, 5.0, 6.0),
                              (144, 256), training_scale=0.25)

  def test_slide_mode_defaults_to_the_training_scale_and_says_so(self):
    with self.assertLogs(level="INFO") as logs:
      self.assertEqual(predict.prediction_scales(self.INFO, "slide", ()), (0.25,))
    self.assertIn("slide mode at scale 0.25, the training scale in dataset.json", logs.output[0])
    with self.assertLogs(level="INFO") as logs:
      self.assertEqual(predict.prediction_scales(self.INFO, "resize", ()), (1.0,))
    self.assertIn("resize mode", logs.output[0])

  def test_a_slide_scale_more_than_2_times_off_is_warned_about(self):
    with self.assertLogs(level="INFO") as logs:
      self.assertEqual(predict.prediction_scales(self.INFO, "slide", (1.0, 0.5)), (1.0, 0.5))
    warnings = [line for line in logs.output if line.startswith("WARNING")]
    self.assertLen(warnings, 1)  # 1.0 is 4 times the training scale; 0.5 is 2 times
    self.assertIn("--scales=1 shows objects at 4 times the size the model learned", warnings[0])


class ReadImageTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("rgb", "RGB", False), ("grey", "L", True), ("rgba", "RGBA", False),
      ("grey_alpha", "LA", True), ("palette", "P", False), ("bilevel", "1", True))
  def test_modes_become_rgb(self, mode, grey):
    rgb = _rgb(20, 30)
    path = os.path.join(tempfile.mkdtemp(), "x.png")
    Image.fromarray(rgb).convert(mode).save(path)
    with self.assertLogs(level="WARNING") if grey else contextlib.nullcontext() as logs:
      image = predict.read_image(path)
    self.assertEqual((image.shape, image.dtype), ((20, 30, 3), np.uint8))
    expected = np.asarray(Image.fromarray(rgb).convert(mode).convert("RGB"))
    np.testing.assert_array_equal(image, expected)
    if grey:
      self.assertIn("greyscale", logs.output[0])
      np.testing.assert_array_equal(image[..., 0], image[..., 2])

  def test_transparent_pixels_are_reported(self):
    rgba = np.concatenate([_rgb(10, 10), np.full((10, 10, 1), 255, np.uint8)], axis=-1)
    rgba[:2, :, 3] = 0
    path = _write(os.path.join(tempfile.mkdtemp(), "x.png"), rgba)
    with self.assertLogs(level="WARNING") as logs:
      image = predict.read_image(path)
    self.assertIn(f"{path}: alpha channel dropped; 20 of 100", logs.output[0])
    np.testing.assert_array_equal(image, rgba[..., :3])

  @parameterized.named_parameters(
      ("sixteen_bit", lambda p: Image.fromarray(np.zeros((8, 8), np.uint16)).save(p),
       "mode 'I;16'"),
      ("float", lambda p: Image.fromarray(np.zeros((8, 8), np.float32)).save(p), "mode 'F'"),
      ("corrupt", lambda p: open(p, "wb").write(b"II*\x00junk"), "cannot read image"))
  def test_unusable_file_is_named(self, write, expected):
    path = os.path.join(tempfile.mkdtemp(), "x.tif")
    write(path)
    with self.assertRaisesRegex(ValueError, f"{path}: .*{expected}"):
      predict.read_image(path)

  def test_find_images(self):
    folder = tempfile.mkdtemp()
    for name in ("b.png", "a.JPG", "notes.txt"):
      open(os.path.join(folder, name), "wb").close()
    os.mkdir(os.path.join(folder, "sub.png"))
    with self.assertLogs(level="WARNING") as logs:
      self.assertEqual(predict.find_images(folder),
                       [os.path.join(folder, "a.JPG"), os.path.join(folder, "b.png")])
    self.assertIn("notes.txt", logs.output[0])
    self.assertEqual(predict.find_images(os.path.join(folder, "*.png")),
                     [os.path.join(folder, "b.png")])
    self.assertEqual(predict.find_images(os.path.join(folder, "b.png")),
                     [os.path.join(folder, "b.png")])
    a, b = os.path.join(folder, "a.JPG"), os.path.join(folder, "b.png")
    self.assertEqual(predict.find_images(f"{b},{a},{os.path.join(folder, '*.png')}"), [b, a])
    with self.assertRaisesRegex(ValueError, "missing.png: no such file"):
      predict.find_images(f"{a},{os.path.join(folder, 'missing.png')}")
    for spec in (os.path.join(folder, "missing.png"), os.path.join(folder, "*.tif")):
      with self.assertRaisesRegex(ValueError, spec.replace("*", r"\*")):
        predict.find_images(spec)


if __name__ == "__main__":
  absltest.main()
