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

  def _run(self, *args, code=0):
    """Runs the inspect command in a fresh working directory, its temporary folder another
    fresh one; returns (the process, that working directory, that temporary folder)."""
    cwd, tmp = tempfile.mkdtemp(), tempfile.mkdtemp()
    for folder in (cwd, tmp):
      self.addCleanup(shutil.rmtree, folder, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=os.path.abspath(REPO), TMPDIR=tmp)
    run = subprocess.run([sys.executable, "-m", "seg_jax.data.inspect", *args], cwd=cwd,
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    self.assertEqual(run.returncode, code, run.stderr[-2000:])
    return run, cwd, tmp

  def test_default_config_counts_and_png_in_the_temporary_folder_not_the_cwd(self):
    # No --config and no --out: configs/default.py's data group, a picture in $TMPDIR.
    run, cwd, tmp = self._run("--config.data.image_size=(24, 32)", "--config.data.num_train=3",
                              "--config.data.num_val=2", "--config.data.num_test=1",
                              "--num_images=2")
    lines = run.stdout.splitlines()
    self.assertStartsWith(lines[0], "synthetic_aerial: image_size=(24, 32)")
    self.assertTrue(any(l.startswith("train       3") for l in lines), run.stdout)
    self.assertTrue(any(l.startswith("test        1") for l in lines), run.stdout)
    self.assertEqual(os.listdir(cwd), [])
    out = os.path.join(tmp, "inspect_synthetic_aerial.png")
    self.assertStartsWith(lines[-1], f"wrote {out} ")
    with Image.open(out) as im:
      self.assertEqual(im.size, (3 * 32 + 8, 2 * (24 + 4) + 18))

  def test_data_of_a_given_config_in_singular_image_and_mask_folders(self):
    root = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, root, ignore_errors=True)
    fixtures.make_tile_layout(root)
    for tile in (1, 2, 3):
      for plural in ("images", "masks"):
        os.rename(os.path.join(root, f"Tile {tile}", plural),
                  os.path.join(root, f"Tile {tile}", plural[:-1]))
    out = os.path.join(root, "new", "grid.png")
    run, _, _ = self._run(f"--config={os.path.abspath(REPO)}/configs/dubai.py:unet",
                          f"--config.data.root={root}", "--config.data.image_size=(16, 24)",
                          "--num_images=1", f"--out={out}")
    self.assertStartsWith(run.stdout, "dubai_aerial: image_size=(16, 24)")
    self.assertIn("train       2", run.stdout)
    with Image.open(out) as im:
      self.assertEqual(im.size, (3 * 24 + 8, 16 + 4 + 18))

  def test_a_folder_it_cannot_read_is_one_error_line(self):
    root = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, root, ignore_errors=True)
    os.makedirs(os.path.join(root, "photos"))
    run, _, _ = self._run(f"--config={os.path.abspath(REPO)}/configs/dubai.py",
                          f"--config.data.root={root}", code=2)
    self.assertEqual(len(run.stderr.strip().splitlines()), 1, run.stderr)
    self.assertStartsWith(run.stderr, f"error (data): data root {root} is laid out as neither")


if __name__ == "__main__":
  absltest.main()
