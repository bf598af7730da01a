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

  def test_black_class_with_another_ignore_colour_or_none(self):
    mapping = {"shadow": "#000000", "road": "#808080"}
    rgb = np.array([[[0, 0, 0], [128, 128, 128], [255, 255, 255], [1, 2, 3]]], np.uint8)
    white = data.load_palette(mapping, ignore_color="#FFFFFF")
    self.assertEqual(white.ignore_color, (255, 255, 255))
    labels, unknown = data.decode_mask(rgb, white, 255, return_unknown=True)
    np.testing.assert_array_equal(labels, [[0, 1, 255, 255]])
    self.assertEqual(unknown, 1)  # (1, 2, 3); white is ignored, not unknown
    np.testing.assert_array_equal(data.encode_mask(labels, white), [[[0, 0, 0], [128] * 3,
                                                                      [255] * 3, [255] * 3]])
    none = data.load_palette(mapping, ignore_color="none")
    self.assertIsNone(none.ignore_color)
    labels, unknown = data.decode_mask(rgb, none, 255, return_unknown=True)
    np.testing.assert_array_equal(labels, [[0, 1, 255, 255]])
    self.assertEqual(unknown, 2)  # every colour outside the palette is unknown
    # Ignored pixels are drawn in a grey that no class has.
    self.assertEqual(none.display_ignore_color, (1, 1, 1))
    np.testing.assert_array_equal(data.encode_mask(labels, none)[0, 2], (1, 1, 1))

  def test_classes_json_layout(self):
    p = data.load_palette({"classes": [{"title": "Water", "color": "#50E3C2", "shape": "x"},
                                       {"title": "Land", "color": "#F5A623"}], "tags": []})
    self.assertEqual(p.names, ("Water", "Land"))
    self.assertEqual(p.colors, ((0x50, 0xE3, 0xC2), (0xF5, 0xA6, 0x23)))

  def test_bad_palette_values(self):
    with self.assertRaisesRegex(ValueError, "'a'.*#12"):
      data.load_palette({"a": "#12"})
    with self.assertRaisesRegex(ValueError, "distinct"):
      data.load_palette({"a": "#010101", "b": "#010101"})
    with self.assertRaisesRegex(ValueError, "ignore colour #000000 .* class 'a'.*ignore_color"):
      data.load_palette({"a": "#000000"})
    with self.assertRaisesRegex(ValueError, "data.ignore_color.*'#12345'"):
      data.load_palette({"a": "#010101"}, ignore_color="#12345")
    with self.assertRaisesRegex(ValueError, r"classes\[1\] must hold 'title' and 'color'"):
      data.load_palette({"classes": [{"title": "a", "color": "#010101"}, {"title": "b"}]})
    with self.assertRaisesRegex(ValueError, r"\(H, W, 3\)"):
      data.decode_mask(np.zeros((4, 4), np.uint8), palettes.DUBAI_AERIAL)


if __name__ == "__main__":
  absltest.main()
