"""Tests of the inspect command and its helpers."""

import os
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest
import numpy as np
from PIL import Image

from seg_jax import data
from seg_jax.data import inspect as inspect_lib
from tests.data import fixtures

REPO = os.path.join(os.path.dirname(__file__), "..", "..")


class InspectTest(absltest.TestCase):

  def test_class_histogram_counts_ignore_last(self):
    labels = np.array([[[0, 1, 255], [1, 5, 5]]], np.uint8)
    src = data.ArraySource(np.zeros((1, 2, 3, 3), np.uint8), labels)
    np.testing.assert_array_equal(inspect_lib.class_histogram(src, 6), [1, 2, 0, 0, 0, 2, 1])

  def test_overlay_grid_columns(self):
    label = np.array([[0, 1], [2, 255]], np.uint8)
    image = np.full((2, 2, 3), 100, np.uint8)
    grid = inspect_lib.overlay_grid([{"image": image, "label": label}],
                                    data.palettes.DUBAI_AERIAL)
    np.testing.assert_array_equal(grid[:2, :2], image)
    np.testing.assert_array_equal(grid[:2, 6:8],
                                  data.encode_mask(label, data.palettes.DUBAI_AERIAL))
    expected = (image * 0.5 + grid[:2, 6:8] * 0.5).astype(np.uint8)
    np.testing.assert_array_equal(grid[:2, 12:14], expected)

  def _run(self, *args):
    """Runs the inspect command in a fresh working directory; returns (stdout, that folder)."""
    cwd = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, cwd, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=os.path.abspath(REPO))
    run = subprocess.run([sys.executable, "-m", "seg_jax.data.inspect", *args], cwd=cwd,
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    self.assertEqual(run.returncode, 0, run.stderr[-2000:])
    return run.stdout, cwd

  def test_default_config_counts_and_png_in_working_directory(self):
    # No --config and no --out: configs/default.py's data group, a picture in the cwd.
    stdout, cwd = self._run("--config.data.image_size=(24, 32)", "--config.data.num_train=3",
                            "--config.data.num_val=2", "--config.data.num_test=1",
                            "--num_images=2")
    lines = stdout.splitlines()
    self.assertStartsWith(lines[0], "synthetic_aerial: image_size=(24, 32)")
    self.assertTrue(any(l.startswith("train       3") for l in lines), stdout)
    self.assertTrue(any(l.startswith("test        1") for l in lines), stdout)
    with Image.open(os.path.join(cwd, "inspect_synthetic_aerial.png")) as im:
      self.assertEqual(im.size, (3 * 32 + 8, 2 * (24 + 4) + 18))

  def test_data_of_a_given_config(self):
    root = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, root, ignore_errors=True)
    fixtures.make_tile_layout(root)
    out = os.path.join(root, "grid.png")
    stdout, _ = self._run(f"--config={os.path.abspath(REPO)}/configs/dubai.py:unet",
                          f"--config.data.root={root}", "--config.data.image_size=(16, 24)",
                          "--num_images=1", f"--out={out}")
    self.assertStartsWith(stdout, "dubai_aerial: image_size=(16, 24)")
    self.assertIn("train       2", stdout)
    with Image.open(out) as im:
      self.assertEqual(im.size, (3 * 24 + 8, 16 + 4 + 18))


if __name__ == "__main__":
  absltest.main()
