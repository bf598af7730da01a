"""Tests of on-device augmentation: image and mask stay aligned, masks are never blended."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from seg_jax.data import augment
from tests.data import fixtures

IGNORE = 255


def _geometry_only(**on):
  cfg = fixtures.data_config().augment
  for k in ("hflip", "vflip", "rot90"):
    cfg[k] = False
  cfg.scale_min = cfg.scale_max = 1.0
  for k in ("rotate_degrees", "brightness", "contrast", "saturation", "hue", "noise_std"):
    cfg[k] = 0.0
  for k, v in on.items():
    cfg[k] = v
  return cfg


def _coded_batch(b, h, w, seed=0):
  """Labels in 4x4 blocks and an image whose red channel is 40 * label."""
  rng = np.random.default_rng(seed)
  coarse = rng.integers(0, 6, (b, h // 4, w // 4))
  labels = np.repeat(np.repeat(coarse, 4, 1), 4, 2).astype(np.uint8)
  images = np.zeros((b, h, w, 3), np.uint8)
  images[..., 0] = labels * 40
  images[..., 1] = np.arange(w)[None, None, :]
  images[..., 2] = np.arange(h)[None, :, None]
  return images, labels


def _run(images, labels, cfg, seed=0):
  fn = jax.jit(functools.partial(augment.augment_batch, aug_config=cfg, ignore_index=IGNORE))
  out_img, out_lbl = fn(images, labels, jax.random.key(seed))
  return np.asarray(out_img), np.asarray(out_lbl)


class AugmentTest(parameterized.TestCase):

  def test_disabled_is_a_cast(self):
    images, labels = _coded_batch(2, 16, 24)
    cfg = fixtures.data_config().augment
    cfg.enabled = False
    out_img, out_lbl = _run(images, labels, cfg)
    self.assertEqual(out_img.dtype, np.float32)
    self.assertEqual(out_lbl.dtype, np.int32)
    np.testing.assert_array_equal(out_img, images.astype(np.float32))
    np.testing.assert_array_equal(out_lbl, labels)

  def test_flips_and_rot90_are_exact_pixel_permutations(self):
    images, labels = _coded_batch(8, 16, 16)
    cfg = _geometry_only(hflip=True, vflip=True, rot90=True)
    out_img, out_lbl = _run(images, labels, cfg, seed=3)
    seen = set()
    for i in range(8):
      candidates = []
      for k in range(4):
        for flip in (False, True):
          im, lb = np.rot90(images[i], k), np.rot90(labels[i], k)
          if flip:
            im, lb = im[:, ::-1], lb[:, ::-1]
          candidates.append((k, flip, im, lb))
      match = [(k, f) for k, f, im, lb in candidates
               if np.array_equal(out_img[i], im) and np.array_equal(out_lbl[i], lb)]
      self.assertNotEmpty(match, f"example {i} is not a flip/rotation of its input")
      seen.add(match[0])
    self.assertGreater(len(seen), 2)

  def test_non_square_rot90_keeps_shape(self):
    images, labels = _coded_batch(16, 16, 24)
    out_img, out_lbl = _run(images, labels, _geometry_only(rot90=True), seed=0)
    self.assertEqual(out_img.shape, (16, 16, 24, 3))
    turned = 0
    for i in range(16):
      ok = [np.array_equal(out_lbl[i], np.rot90(labels[i], k)) for k in (0, 2)]
      self.assertTrue(any(ok))
      if ok[1]:
        # The image takes the same half turn as its mask.
        np.testing.assert_array_equal(out_img[i], np.rot90(images[i], 2))
        turned += 1
    # Seed 0 turns some examples; a no-op rot90 would turn none.
    self.assertGreater(turned, 0)

  @parameterized.parameters(
      dict(scale_min=1.0, scale_max=2.0),
      dict(rotate_degrees=20.0),
      dict(scale_min=0.7, scale_max=1.3, rotate_degrees=15.0, hflip=True, vflip=True),
  )
  def test_scale_and_rotation_keep_image_and_mask_aligned(self, **on):
    images, labels = _coded_batch(4, 32, 32)
    out_img, out_lbl = _run(images, labels, _geometry_only(**on), seed=5)
    self.assertTrue(set(np.unique(out_lbl)) <= set(range(6)) | {IGNORE})
    valid = out_lbl != IGNORE
    self.assertGreater(valid.mean(), 0.5)
    # Red encodes the label; bilinear blends only at block borders.
    agree = np.abs(out_img[..., 0] / 40 - out_lbl) < 0.5
    self.assertGreater(agree[valid].mean(), 0.8)
    # The check has teeth: a mask flipped against its image disagrees.
    flipped = out_lbl[:, :, ::-1]
    both = valid & (flipped != IGNORE)
    self.assertLess((np.abs(out_img[..., 0] / 40 - flipped) < 0.5)[both].mean(), 0.5)

  def test_scale_crop_stays_inside(self):
    images, labels = _coded_batch(4, 32, 32)
    _, out_lbl = _run(images, labels, _geometry_only(scale_min=1.2, scale_max=2.0), seed=2)
    self.assertFalse(np.any(out_lbl == IGNORE))
    # The zoom moves most pixels (about 72% of the labels change for seed 2).
    self.assertGreater((out_lbl != labels).mean(), 0.3)

  def test_colour_jitter_leaves_labels_alone(self):
    images, labels = _coded_batch(2, 16, 24)
    cfg = _geometry_only(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1, noise_std=5.0)
    out_img, out_lbl = _run(images, labels, cfg)
    np.testing.assert_array_equal(out_lbl, labels)
    self.assertGreaterEqual(out_img.min(), 0.0)
    self.assertLessEqual(out_img.max(), 255.0)
    self.assertGreater(np.abs(out_img - images).mean(), 1.0)

  @parameterized.parameters("saturation", "hue")
  def test_saturation_and_hue_keep_grey_pixels(self, field):
    grey = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
    images = np.repeat(grey, 3, axis=-1)
    cfg = _geometry_only(**{field: 0.4})
    out, _ = _run(images, np.zeros((2, 8, 8), np.uint8), cfg)
    np.testing.assert_allclose(out, images.astype(np.float32), atol=1e-3)

  def test_brightness_scales_and_contrast_keeps_mean_grey(self):
    images, labels = _coded_batch(2, 16, 24)
    images = np.clip(images.astype(np.int32) // 2 + 40, 0, 255).astype(np.uint8)
    out, _ = _run(images, labels, _geometry_only(brightness=0.3), seed=4)
    ratio = out / images.astype(np.float32)
    for i in range(2):
      np.testing.assert_allclose(ratio[i], ratio[i, 0, 0, 0], rtol=1e-5)
    out, _ = _run(images, labels, _geometry_only(contrast=0.3), seed=4)
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose((out @ luma).mean(axis=(1, 2)),
                               (images.astype(np.float32) @ luma).mean(axis=(1, 2)), rtol=1e-4)
    self.assertGreater(np.abs(out - images).max(), 1.0)

  def test_hue_keeps_luma_and_turns_chroma(self):
    # Mid-range colours stay inside [0, 255] under any hue turn, so nothing clips.
    images = np.random.default_rng(0).integers(96, 160, (4, 8, 8, 3), dtype=np.uint8)
    out, _ = _run(images, np.zeros((4, 8, 8), np.uint8), _geometry_only(hue=0.4))
    x = images.astype(np.float32)
    yiq = np.array([[0.299, 0.587, 0.114],
                    [0.595716, -0.274453, -0.321263],
                    [0.211456, -0.522591, 0.311135]], np.float32)
    np.testing.assert_allclose(out @ yiq[0], x @ yiq[0], atol=1e-3)
    chroma_change = np.abs(out @ yiq[1:].T - x @ yiq[1:].T).mean(axis=(1, 2, 3))
    self.assertTrue(np.all(chroma_change > 1.0), chroma_change)

  def test_normalize(self):
    x = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3)).astype(np.uint8)
    mean = np.array([1.0, 2.0, 3.0], np.float32)
    std = np.array([2.0, 4.0, 8.0], np.float32)
    out = augment.normalize(x, mean, std)
    np.testing.assert_allclose(np.asarray(out), (x - mean) / std, rtol=1e-6)

  def test_any_band_count_jitters_only_the_rgb_bands(self):
    # 5 uint16 bands, red, green, blue at positions 3, 1, 0 (bands 4, 2, 1 of a file).
    images = np.random.default_rng(0).integers(900, 1100, (2, 8, 8, 5)).astype(np.uint16)
    labels = np.zeros((2, 8, 8), np.uint8)

    def run(x, cfg, rgb):
      return np.asarray(jax.jit(functools.partial(
          augment.augment_batch, aug_config=cfg, rgb=rgb, value_range=(0.0, 65535.0)))(
              x, labels, jax.random.key(0))[0])

    cfg = _geometry_only(hflip=True, brightness=0.3, saturation=0.3, hue=0.1)
    out = run(images, cfg, (3, 1, 0))
    flipped = run(images, _geometry_only(hflip=True), ())
    np.testing.assert_array_equal(out[..., [2, 4]], flipped[..., [2, 4]])
    self.assertGreater(np.abs(out[..., [3, 1, 0]] - flipped[..., [3, 1, 0]]).mean(), 1.0)
    self.assertGreater(out.max(), 255.0)  # clipped to the type's range, not to [0, 255]
    # The same jitter as of an RGB image holding those bands in order.
    np.testing.assert_allclose(out[..., [3, 1, 0]], run(images[..., [3, 1, 0]], cfg, (0, 1, 2)),
                               rtol=1e-6)
    with self.assertRaisesRegex(ValueError, "names none: set data.rgb_bands"):
      run(images, cfg, ())

  def test_bad_shapes(self):
    with self.assertRaisesRegex(ValueError, "labels must be"):
      augment.augment_batch(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 8, 9), np.uint8),
                            jax.random.key(0), fixtures.data_config().augment)


if __name__ == "__main__":
  absltest.main()
