"""Image grids and line-plot grids of seg_jax.viz: sizes, scales, legends and bad input."""

import os
import tempfile

from absl.testing import absltest
import numpy as np
from PIL import Image

from seg_jax import viz


class SavePanelsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.path = os.path.join(self.enterContext(tempfile.TemporaryDirectory()), "grid.png")

  def _read(self) -> np.ndarray:
    with Image.open(self.path) as image:
      return np.asarray(image.convert("RGB")).astype(int)

  def _blue_pixels_per_half(self, same_scale: bool) -> tuple[int, int]:
    blue = np.zeros((40, 40, 3))
    blue[..., 2] = 1.0
    viz.save_panels([[viz.Panel(blue), viz.Panel(blue[:10, :10])]], self.path,
                    same_scale=same_scale)
    pixels = self._read()
    found = np.abs(pixels - np.array([0, 0, 255])).sum(axis=-1) < 30
    half = found.shape[1] // 2
    return int(found[:, :half].sum()), int(found[:, half:].sum())

  def test_same_scale_keeps_relative_sizes(self):
    big, small = self._blue_pixels_per_half(same_scale=True)
    # 16 times the area, less the edges that axis lines and antialiasing take.
    self.assertBetween(big / small, 11, 17)

  def test_without_same_scale_each_panel_fills_its_cell(self):
    big, small = self._blue_pixels_per_half(same_scale=False)
    self.assertAlmostEqual(big / small, 1, delta=0.1)

  def test_size_empty_cells_and_legend_colours(self):
    colours = {"red": (220, 20, 30), "teal": (40, 200, 180)}
    viz.save_panels([[viz.Panel(np.ones((8, 8, 3)), "rgb"), None],
                     [viz.Panel(np.eye(4), "annotated", cmap="RdBu_r", symmetric=True,
                                annotate=True, boxes=[(0, 0, 2, 2)])]],
                    self.path, panel_inches=2.0, legend=colours)
    pixels = self._read()
    self.assertEqual(pixels.shape[1], 400)  # Two columns of 2 inches at 100 dpi.
    for name, colour in colours.items():
      distance = np.abs(pixels - np.asarray(colour)).sum(axis=-1)
      self.assertLess(distance.min(), 12, name)

  def test_no_panel_is_an_error(self):
    with self.assertRaisesRegex(ValueError, "no Panel"):
      viz.save_panels([[None]], self.path)
    self.assertFalse(os.path.exists(self.path))

  def test_no_curves_is_an_error(self):
    with self.assertRaisesRegex(ValueError, "no Curves"):
      viz.save_curve_panels([], self.path)

  def test_bad_image_shape_names_the_panel(self):
    with self.assertRaisesRegex(ValueError, r"'wrong'.*\(4, 4, 2\)"):
      viz.save_panels([[viz.Panel(np.zeros((4, 4, 2)), "wrong")]], self.path)


class SaveCurvePanelsTest(absltest.TestCase):

  def test_writes_a_grid_of_plots(self):
    path = os.path.join(self.enterContext(tempfile.TemporaryDirectory()), "curves.png")
    x = np.linspace(-1, 1, 5)
    panels = [viz.Curves({"x": (x, x), "x^2": (x, x**2)}, title="a", xlabel="x"),
              viz.Curves({"p": (np.arange(3), [0.2, 0.5, 0.3])}, xticklabels=["u", "v", "w"],
                         markers=True),
              viz.Curves({"c": (x, 0 * x)})]
    viz.save_curve_panels(panels, path, ncols=2, panel_inches=2.5)
    with Image.open(path) as image:
      self.assertEqual(image.size[0], 500)  # Two columns of 2.5 inches at 100 dpi.
      self.assertGreater(image.size[1], 300)  # Two rows.


if __name__ == "__main__":
  absltest.main()
