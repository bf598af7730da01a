"""Property-based tests (hypothesis) of the mask decoder and the folder reader.

Arbitrary palettes, RGB / palette / greyscale masks, sizes, colour noise, file types and
corrupt files: the code either works or raises a ValueError naming the file or field at fault,
and every file of a dataset folder is either read or reported in `Dataset.skipped`.
"""

import io
import os
import shutil
import tempfile

from absl.testing import absltest
from hypothesis import given
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
from PIL import Image

from seg_jax import data
from tests.data import fixtures

# Fixed examples (derandomize) keep CI reproducible; the counts keep the file a few seconds.
SETTINGS = dict(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

COLORS = st.tuples(*[st.integers(0, 255)] * 3)


@st.composite
def palettes_and_masks(draw):
  """A palette (distinct colours, an ignore colour or none) and an RGB mask over its colours.

  Mask pixels are class colours, the ignore colour, class colours shifted by a little noise,
  or arbitrary colours.
  """
  colors = draw(st.lists(COLORS, min_size=1, max_size=8, unique=True))
  ignore = draw(st.one_of(st.none(), COLORS.filter(lambda c: c not in colors)))
  h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
  choices = colors + ([] if ignore is None else [ignore])
  noisy = [tuple(int(np.clip(v + d, 0, 255)) for v in c)
           for c, d in zip(choices, draw(st.lists(st.integers(-2, 2), min_size=len(choices),
                                                  max_size=len(choices))))]
  pixel = st.one_of(st.sampled_from(choices), st.sampled_from(noisy), COLORS)
  rgb = np.array(draw(st.lists(pixel, min_size=h * w, max_size=h * w)), np.uint8)
  palette = data.Palette(names=tuple(f"c{i}" for i in range(len(colors))), colors=tuple(colors),
                         ignore_color=ignore)
  return palette, rgb.reshape(h, w, 3)


class DecodeMaskPropertyTest(absltest.TestCase):

  @settings(max_examples=150, **SETTINGS)
  @given(palettes_and_masks(), st.integers(8, 255))
  def test_decode_matches_a_pixel_by_pixel_reference(self, palette_and_mask, ignore_index):
    palette, rgb = palette_and_mask
    labels, unknown = data.decode_mask(rgb, palette, ignore_index, return_unknown=True)
    index = {c: i for i, c in enumerate(palette.colors)}
    expected = [[index.get(tuple(int(v) for v in px), ignore_index) for px in row] for row in rgb]
    np.testing.assert_array_equal(labels, expected)
    self.assertEqual(labels.dtype, np.uint8)
    self.assertEqual(unknown, sum(tuple(int(v) for v in px) not in index
                                  and tuple(int(v) for v in px) != palette.ignore_color
                                  for row in rgb for px in row))
    # Encoding the labels back gives every class pixel its colour again.
    known = labels != ignore_index
    np.testing.assert_array_equal(data.encode_mask(labels, palette)[known], rgb[known])

  @settings(max_examples=60, **SETTINGS)
  @given(st.lists(st.integers(0, 4), min_size=0, max_size=4), st.integers(-5, 300))
  def test_other_shapes_and_ignore_indices_are_value_errors(self, shape, ignore_index):
    rgb = np.zeros(shape, np.uint8)
    try:
      labels = data.decode_mask(rgb, fixtures.PALETTE, ignore_index)
    except ValueError as e:
      self.assertRegex(str(e), "rgb mask must have shape|ignore_index")
    else:
      self.assertEqual(labels.shape, tuple(shape[:2]))


# Readable encodings: RGB, palette ('P') and RGBA masks of the Dubai colours with some black
# and a little colour noise; images in any 8-bit mode. Each pair has at most one fault, and
# half of them none, so that many folders hold a readable dataset beside the bad files.
MASK_MODES = ("RGB", "P", "RGBA")
IMAGE_MODES = ("RGB", "L", "RGBA", "P")
GOOD_EXTENSIONS = (".png", ".tif", ".bmp", ".webp")
FAULTS = ("image_type", "mask_type", "mask_jpeg", "image_16bit", "grey_mask", "noisy_mask",
          "black_mask", "size", "truncate_image", "garble_mask", "no_image", "no_mask")


@st.composite
def pair_files(draw):
  """(image spec, mask spec, fault) of one stem: mode, file type, size, content and damage."""
  h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
  fault = draw(st.sampled_from(("none",) * len(FAULTS) + FAULTS))
  image = dict(mode="I;16" if fault == "image_16bit" else draw(st.sampled_from(IMAGE_MODES)),
               ext=draw(st.sampled_from((".gif", ".txt") if fault == "image_type"
                                        else GOOD_EXTENSIONS + (".jpg",))),
               size=(h, w), damage="truncate" if fault == "truncate_image" else "none")
  mask_ext = {"mask_type": (".gif", ".txt"), "mask_jpeg": (".jpg",)}.get(fault, GOOD_EXTENSIONS)
  mask = dict(mode="L" if fault == "grey_mask" else draw(st.sampled_from(MASK_MODES)),
              ext=draw(st.sampled_from(mask_ext)),
              size=(h + 1, w) if fault == "size" else (h, w),
              damage="garble" if fault == "garble_mask" else "none",
              black=1.0 if fault == "black_mask" else draw(st.sampled_from([0.0, 0.02, 0.2])),
              noise=0.3 if fault == "noisy_mask" else draw(st.sampled_from([0.0, 0.005])))
  return image, mask, fault


def _encode(spec, rng, kind) -> bytes:
  """File bytes of an image or a mask as `spec` describes, damaged as it says."""
  h, w = spec["size"]
  if kind == "image":
    array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    im = Image.fromarray(array)
    if spec["mode"] == "I;16":
      im = Image.fromarray(array[..., 0].astype(np.uint16) * 257)
    elif spec["mode"] != "RGB":
      im = im.convert(spec["mode"])
  else:
    label = fixtures.random_label(rng, h, w, with_black=False)
    label[rng.random((h, w)) < spec["black"]] = 255
    rgb = data.encode_mask(label, fixtures.PALETTE)
    noise = rng.random((h, w)) < spec["noise"]
    rgb[noise] = rng.integers(0, 256, (int(noise.sum()), 3), dtype=np.uint8)
    im = Image.fromarray(rgb)
    if spec["mode"] == "P":
      im = im.quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    elif spec["mode"] != "RGB":
      im = im.convert(spec["mode"])
  buf = io.BytesIO()
  fmt = {".png": "PNG", ".tif": "TIFF", ".bmp": "BMP", ".webp": "WEBP", ".jpg": "JPEG",
         ".gif": "GIF", ".txt": None}[spec["ext"]]
  if fmt is None:
    return b"not an image"
  if fmt in ("JPEG", "BMP") and im.mode in ("RGBA", "P", "I;16"):
    im = im.convert("RGB")
  if fmt == "GIF" and im.mode == "I;16":
    im = im.convert("L")
  im.save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
  raw = buf.getvalue()
  if spec["damage"] == "truncate":
    return raw[:len(raw) // 2]
  if spec["damage"] == "garble":
    return raw[:8] + bytes(rng.integers(0, 256, len(raw) - 8, dtype=np.uint8))
  return raw


class FolderReaderPropertyTest(absltest.TestCase):

  @settings(max_examples=40, **SETTINGS)
  @given(st.lists(pair_files(), min_size=1, max_size=5), st.integers(0, 2 ** 16))
  def test_every_file_is_read_or_reported(self, pairs, seed):
    rng = np.random.default_rng(seed)
    root = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, root, ignore_errors=True)
    files = []
    for k, (image, mask, fault) in enumerate(pairs):
      for kind, spec in (("image", image), ("mask", mask)):
        folder = os.path.join(root, kind + "s")
        os.makedirs(folder, exist_ok=True)
        if fault != "no_" + kind:
          path = os.path.join(folder, f"p{k}{spec['ext']}")
          with open(path, "wb") as f:
            f.write(_encode(spec, rng, kind))
          files.append(path)
    for on_bad_file in ("error", "skip"):
      config = fixtures.data_config(name="dubai_aerial", root=root, split="image",
                                    image_size=(8, 8), on_bad_file=on_bad_file)
      try:
        ds = data.get_dataset(config)
      except ValueError as e:
        # Named: a file or folder of the dataset, or the config field at fault.
        self.assertTrue(root in str(e) or "data." in str(e), str(e))
        continue
      used = set(ds.train.names + ds.val.names + ds.test.names)
      reported = " ".join(f"{path} {reason}" for path, reason in ds.skipped)
      for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        self.assertTrue(stem in used or path in reported,
                        f"{path} neither read nor reported ({on_bad_file}): {ds.skipped}")
      for source in (ds.train, ds.val, ds.test):
        for i in range(len(source)):
          self.assertTrue(set(np.unique(source[i]["label"])) <= {0, 1, 2, 3, 4, 5, 255})


if __name__ == "__main__":
  absltest.main()
