"""Tests of seg_jax.viz pictures: overlays, legends, prediction grids, run curves."""

import os
import re
import tempfile
from unittest import mock

from absl.testing import absltest
import numpy as np
from PIL import Image

from seg_jax import viz
from seg_jax.data import palettes

PALETTE = palettes.DUBAI_AERIAL
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _colour_pixels(picture, color):
  return int(np.all(picture == np.asarray(color, np.uint8), axis=-1).sum())


class OverlayTest(absltest.TestCase):

  def test_blends_class_colours_and_leaves_unlabelled_pixels(self):
    image = np.full((2, 3, 3), 100, np.uint8)
    labels = np.array([[0, 1, 255], [2, 3, 4]])
    out = viz.overlay(image, labels, PALETTE, alpha=0.25)
    self.assertEqual((out.shape, out.dtype), ((2, 3, 3), np.uint8))
    expected = np.round(0.75 * 100 + 0.25 * np.asarray(PALETTE.colors[1], np.float32))
    np.testing.assert_array_equal(out[0, 1], expected)
    np.testing.assert_array_equal(out[0, 2], [100, 100, 100])


class LegendTest(absltest.TestCase):

  def test_shows_every_colour_and_wraps_when_narrow(self):
    wide = viz.legend(PALETTE, 800, extra=(("error", viz.ERROR_COLOR),))
    self.assertEqual((wide.shape[1], wide.dtype), (800, np.uint8))
    for color in PALETTE.colors + (viz.ERROR_COLOR,):
      self.assertGreater(_colour_pixels(wide, color), 20)
    narrow = viz.legend(PALETTE, 120)
    self.assertEqual(narrow.shape[1], 120)
    self.assertGreater(narrow.shape[0], 2 * wide.shape[0])

  def test_with_legend_keeps_the_picture_on_top(self):
    picture = np.zeros((30, 200, 3), np.uint8)
    out = viz.with_legend(picture, PALETTE)
    np.testing.assert_array_equal(out[:30], picture)
    self.assertEqual(out.shape[1], 200)


class PredictionGridTest(absltest.TestCase):

  def test_errors_are_red_where_scored(self):
    image = np.full((4, 4, 3), 80, np.uint8)
    labels = np.array([[0, 0, 1, 255]] * 4)
    preds = np.array([[0, 1, 1, 2]] * 4)
    out = viz.error_map(image, labels, preds, PALETTE.num_classes)
    red = np.all(out == viz.ERROR_COLOR, axis=-1)
    np.testing.assert_array_equal(red, np.array([[False, True, False, False]] * 4))
    self.assertTrue(np.all(out[:, 0] == out[0, 0, 0]))  # grey

  def test_rows_of_four_panels_with_header_and_legend(self):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8) for _ in range(3)]
    labels = [rng.integers(0, 6, (40, 60)) for _ in range(3)]
    preds = [rng.integers(0, 6, (40, 60)) for _ in range(3)]
    out = viz.prediction_grid(images, labels, preds, PALETTE, gap=4)
    self.assertEqual(out.shape[1], 4 * 60 + 3 * 4)
    self.assertGreater(out.shape[0], 3 * (40 + 4))
    # The first row sits below the header; its truth panel is the coloured labels.
    top = next(y for y in range(out.shape[0]) if np.array_equal(out[y, :60], images[0][0]))
    np.testing.assert_array_equal(out[top:top + 40, 64:124],
                                  palettes.encode_mask(labels[0], PALETTE))

  def test_mismatched_sizes_are_refused(self):
    with self.assertRaisesRegex(ValueError, "share one"):
      viz.prediction_grid([np.zeros((8, 8, 3))], [np.zeros((8, 9))], [np.zeros((8, 8))],
                          PALETTE)


class RunCurvesTest(absltest.TestCase):

  def test_writes_a_png_with_and_without_train_records(self):
    evals = [{"step": s, "split": "val", "loss": 1.0 / s, "miou": s / 400} for s in (100, 200)]
    train = [{"step": s, "split": "train", "loss": 2.0 / s} for s in range(10, 210, 10)]
    for records in (evals, train + evals):
      path = os.path.join(tempfile.mkdtemp(), "curves.png")
      viz.save_run_curves(records, path, title="run")
      with Image.open(path) as im:
        self.assertEqual(im.size, (1000, 380))

  def test_score_axes_span_zero_to_one(self):
    # A flat mIoU curve of 0.0003-0.0015 must look flat, not like a climb.
    evals = [{"step": s, "split": "val", "loss": 1.0 / s, "miou": s / 1e5} for s in (30, 150)]
    figures = []
    real_save = viz._save_quantized

    def keep_limits(fig, path, bottom=0.0):
      figures.append([(ax.get_ylabel(), ax.get_ylim()) for ax in fig.axes if ax.get_visible()])
      real_save(fig, path, bottom)

    folder = tempfile.mkdtemp()
    with mock.patch.object(viz, "_save_quantized", keep_limits):
      viz.save_run_curves(evals, os.path.join(folder, "curves.png"))
      viz.save_curves({"run": evals}, os.path.join(folder, "runs.png"))
    run_curves, runs = (dict(f) for f in figures)
    self.assertEqual(run_curves["mIoU"], (0.0, 1.0))
    self.assertEqual(runs["val miou"], (0.0, 1.0))
    self.assertLess(runs["val loss"][1], 1.0)  # losses keep their own range


class ImportTest(absltest.TestCase):

  def test_only_viz_imports_matplotlib(self):
    package = os.path.join(REPO, "seg_jax")
    importers = []
    for root, _, files in os.walk(package):
      for name in files:
        if name.endswith(".py"):
          with open(os.path.join(root, name)) as f:
            if re.search(r"^\s*(import|from) matplotlib", f.read(), re.MULTILINE):
              importers.append(os.path.relpath(os.path.join(root, name), package))
    self.assertEqual(importers, ["viz.py"])


if __name__ == "__main__":
  absltest.main()
