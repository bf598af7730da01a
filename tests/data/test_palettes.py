"""Tests of palettes, decode_mask and encode_mask."""

import json
import os
import tempfile

from absl.testing import absltest
import numpy as np

from seg_jax import data
from seg_jax.data import palettes


class PaletteTest(absltest.TestCase):

  def test_dubai_colours_and_order(self):
    p = palettes.DUBAI_AERIAL
    self.assertEqual(p.names, ("building", "land", "road", "vegetation", "water", "unlabeled"))
    self.assertEqual(p.to_dict(), {"building": "#3C1098", "land": "#8429F6",
                                   "road": "#6EC1E4", "vegetation": "#FEDD3A",
                                   "water": "#E2A929", "unlabeled": "#9B9B9B"})

  def test_decode_encode_roundtrip_and_unknown_count(self):
    rng = np.random.default_rng(0)
    label = rng.integers(0, 6, (20, 30)).astype(np.uint8)
    rgb = data.encode_mask(label, palettes.DUBAI_AERIAL)
    np.testing.assert_array_equal(rgb, palettes.DUBAI_AERIAL.as_array()[label])
    rgb[0, :5] = 0  # Black: ignored, not unknown.
    rgb[1, :3] = (1, 2, 3)  # Unknown colour.
    decoded, unknown = data.decode_mask(rgb, palettes.DUBAI_AERIAL, 255, return_unknown=True)
    expected = label.copy()
    expected[0, :5] = 255
    expected[1, :3] = 255
    np.testing.assert_array_equal(decoded, expected)
    self.assertEqual(unknown, 3)
    back = data.encode_mask(decoded, palettes.DUBAI_AERIAL)
    np.testing.assert_array_equal(back[2:], rgb[2:])
    np.testing.assert_array_equal(back[0, :5], 0)
    np.testing.assert_array_equal(back[1, :3], 0)

  def test_load_palette_from_dict_and_file(self):
    mapping = {"a": "#010203", "b": "#FFFFFE"}
    p = data.load_palette(mapping)
    self.assertEqual(p.names, ("a", "b"))
    self.assertEqual(p.colors, ((1, 2, 3), (255, 255, 254)))
    with tempfile.TemporaryDirectory() as d:
      path = os.path.join(d, "p.json")
      with open(path, "w") as f:
        json.dump(mapping, f)
      self.assertEqual(data.load_palette(path), p)
      with open(path, "w") as f:
        f.write("[1, 2]")
      with self.assertRaisesRegex(ValueError, "p.json"):
        data.load_palette(path)

  def test_bad_palette_values(self):
    with self.assertRaisesRegex(ValueError, "'a'.*#12"):
      data.load_palette({"a": "#12"})
    with self.assertRaisesRegex(ValueError, "distinct"):
      data.load_palette({"a": "#010101", "b": "#010101"})
    with self.assertRaisesRegex(ValueError, "ignore_color"):
      data.load_palette({"a": "#000000"})
    with self.assertRaisesRegex(ValueError, r"\(H, W, 3\)"):
      data.decode_mask(np.zeros((4, 4), np.uint8), palettes.DUBAI_AERIAL)


if __name__ == "__main__":
  absltest.main()
