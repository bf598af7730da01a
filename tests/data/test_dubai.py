"""Tests of the Dubai-layout reader, splits and preprocessing on generated fixtures."""

import json
import os
import shutil
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np
from PIL import Image

from seg_jax import data
from seg_jax.data import dubai
from seg_jax.data import pipeline
from seg_jax.data import preprocess
from tests.data import fixtures


def _config(root, **overrides):
  fields = dict(name="dubai_aerial", root=root, image_size=(16, 24), patch_size=16)
  return fixtures.data_config(**{**fields, **overrides})


class DubaiReaderTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.root = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.root, ignore_errors=True)

  def test_tile_layout_reads_rgb_and_palette_masks(self):
    written = fixtures.make_tile_layout(self.root)
    pairs = dubai.find_pairs(self.root)
    self.assertEqual([p.name for p in pairs], sorted(written))
    self.assertEqual([p.tile for p in pairs], [1, 1, 2, 2, 3, 3])
    c = fixtures.data_config()
    for pair in pairs:
      image, label = dubai.read_pair(pair, fixtures.PALETTE, ignore_index=c.ignore_index,
                                     max_unknown_fraction=c.max_unknown_fraction)
      np.testing.assert_array_equal(image, written[pair.name][0])
      np.testing.assert_array_equal(label, written[pair.name][1])
    self.assertEqual(Image.open(pairs[2].mask_path).mode, "P")

  def test_each_file_is_decoded_once_however_many_epochs_are_read(self):
    fixtures.make_tile_layout(self.root)
    opened = []
    real_open = Image.open

    def counting_open(path, *args, **kwargs):
      opened.append(path)
      return real_open(path, *args, **kwargs)

    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
    with mock.patch.object(Image, "open", side_effect=counting_open):
      ds = data.get_dataset(_config(self.root, split="image", seed=1))
      batches = pipeline.InputPipeline(
          ds.train, global_batch_size=1, num_epochs=3, seed=0,
          sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
      self.assertLen(list(batches), 3 * len(ds.train))
    self.assertLen(opened, 12)  # 6 images and 6 masks, each once
    self.assertLen(set(opened), 12)

  def test_flat_layout_and_image_split(self):
    written = fixtures.make_flat_layout(self.root, n=8)
    ds = data.get_dataset(_config(self.root, split="image", seed=1))
    self.assertEqual((len(ds.train), len(ds.val), len(ds.test)), (6, 1, 1))
    names = ds.train.names + ds.val.names + ds.test.names
    self.assertCountEqual(names, written)
    ds_again = data.get_dataset(_config(self.root, split="image", seed=1))
    self.assertEqual(ds.val.names, ds_again.val.names)
    with self.assertRaisesRegex(ValueError, "flat images/ folder has no tiles"):
      data.get_dataset(_config(self.root, split="tile"))

  def test_tile_split_resize_and_train_statistics(self):
    written = fixtures.make_tile_layout(self.root)
    ds = data.get_dataset(_config(self.root))
    self.assertEqual(ds.train.names, ["tile2/image_part_001", "tile2/image_part_002"])
    self.assertEqual(ds.val.names, ["tile1/image_part_001", "tile1/image_part_002"])
    self.assertEqual(ds.test.names, ["tile3/image_part_001", "tile3/image_part_002"])
    self.assertEqual(ds.train[0]["image"].shape, (16, 24, 3))
    image, label = written["tile2/image_part_001"]
    exp_img, exp_lbl = preprocess.resize_pair(image, label, (16, 24))
    np.testing.assert_array_equal(ds.train[0]["image"], exp_img)
    np.testing.assert_array_equal(ds.train[0]["label"], exp_lbl)
    # Nearest resizing keeps labels among the original values.
    self.assertTrue(set(np.unique(exp_lbl)) <= set(np.unique(label)))
    px = np.concatenate([ds.train[i]["image"].reshape(-1, 3) for i in range(2)])
    np.testing.assert_allclose(ds.mean, px.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_allclose(ds.std, px.astype(np.float64).std(0), rtol=1e-5)

  def test_training_scale_is_the_median_shrink_of_the_training_images(self):
    written = fixtures.make_tile_layout(self.root, per_tile=3)
    ds = data.get_dataset(_config(self.root))  # training split: tile 2, shrunk to 16x24
    shrinks = [np.sqrt(16 * 24 / np.prod(written[f"tile2/image_part_00{i}"][1].shape))
               for i in (1, 2, 3)]
    self.assertAlmostEqual(ds.training_scale, float(np.median(shrinks)), places=6)
    self.assertLess(ds.training_scale, 0.5)
    self.assertEqual(data.get_dataset(_config(self.root, prep="patches")).training_scale, 1.0)

  @parameterized.parameters(("flat",), ("tile",))
  def test_singular_image_and_mask_folders_are_read(self, layout):
    if layout == "flat":
      written = fixtures.make_flat_layout(self.root, n=3)
      parents = [self.root]
    else:
      written = fixtures.make_tile_layout(self.root)
      parents = [os.path.join(self.root, f"Tile {t}") for t in (1, 2, 3)]
    for parent in parents:
      os.rename(os.path.join(parent, "images"), os.path.join(parent, "image"))
      os.rename(os.path.join(parent, "masks"), os.path.join(parent, "mask"))
    self.assertEqual([p.name for p in dubai.find_pairs(self.root)], sorted(written))

  def test_an_unknown_layout_names_the_accepted_ones(self):
    os.makedirs(os.path.join(self.root, "pictures"))
    with self.assertRaisesRegex(ValueError, r"'image/', 'mask/'.*holds \['pictures'\]"):
      dubai.find_pairs(self.root)

  def test_train_subset_keeps_that_many_training_examples_drawn_by_the_seed(self):
    fixtures.make_flat_layout(self.root, n=10)
    full = data.get_dataset(_config(self.root, split="image", seed=1))
    kept = {}
    for seed in range(4):  # data.seed also assigns the splits: a subset of its own train split
      ds = data.get_dataset(_config(self.root, split="image", seed=seed, train_subset=3))
      self.assertLen(ds.train, 3)
      self.assertTrue(set(ds.train.names) <= set(
          data.get_dataset(_config(self.root, split="image", seed=seed)).train.names))
      kept[seed] = ds.train.names
    self.assertGreater(len({tuple(names) for names in kept.values()}), 1)
    ds = data.get_dataset(_config(self.root, split="image", seed=1, train_subset=3))
    self.assertEqual(ds.train.names, kept[1])  # the same draw again
    self.assertEqual((ds.val.names, ds.test.names), (full.val.names, full.test.names))
    px = ds.train.images.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(ds.mean, px.mean(0), rtol=1e-6)  # statistics of what trains

  @parameterized.parameters(
      (dict(train_subset=9), r"data.train_subset=9 but the train split holds only 8"),
      (dict(train_subset=-1), r"data.train_subset must be >= 0"),
      (dict(name="synthetic_aerial", train_subset=2), r"train_subset=2 .*data.num_train"))
  def test_bad_train_subset_is_named(self, fields, message):
    fixtures.make_flat_layout(self.root, n=10)
    with self.assertRaisesRegex(ValueError, message):
      data.get_dataset(_config(self.root, split="image", seed=1, **fields))

  @parameterized.parameters("resize", "patches")
  def test_full_resolution_examples_are_the_files_unresized(self, prep):
    written = fixtures.make_tile_layout(self.root)
    examples = list(data.full_resolution_examples(_config(self.root, prep=prep), "test"))
    self.assertEqual([e["name"] for e in examples],
                     ["tile3/image_part_001", "tile3/image_part_002"])
    for e in examples:  # tile 3 holds 49x56 and 50x58 images
      np.testing.assert_array_equal(e["image"], written[e["name"]][0])
      np.testing.assert_array_equal(e["label"], written[e["name"]][1])

  def test_full_resolution_examples_read_with_the_same_checks(self):
    fixtures.make_tile_layout(self.root)
    path = os.path.join(self.root, "Tile 1", "images", "image_part_001.png")
    with open(path, "wb") as f:
      f.write(b"\x89PNG not really")
    examples = data.full_resolution_examples(_config(self.root), "val")
    with self.assertRaisesRegex(ValueError, r"Tile 1/images/image_part_001.png: cannot read"):
      list(examples)
    skipping = data.full_resolution_examples(_config(self.root, on_bad_file="skip"), "val")
    self.assertEqual([e["name"] for e in skipping], ["tile1/image_part_002"])
    with self.assertRaisesRegex(ValueError, "random_patch.*data.split='tile' or 'image'"):
      data.full_resolution_examples(_config(self.root, split="random_patch"), "val")
    with self.assertRaisesRegex(ValueError, "prepared TFDS dataset.*data.root"):
      data.full_resolution_examples(_config(self.root, name="tfds:dubai_aerial/x"), "val")

  def test_patches_cover_image(self):
    written = fixtures.make_tile_layout(self.root)
    ds = data.get_dataset(_config(self.root, prep="patches", patch_size=16, patch_overlap=4))
    image, label = written["tile2/image_part_001"]  # 46 x 56
    starts_y = preprocess.patch_starts(46, 16, 4)
    starts_x = preprocess.patch_starts(56, 16, 4)
    self.assertEqual(starts_y, [0, 12, 24, 30])
    self.assertEqual(starts_x, [0, 12, 24, 36, 40])
    self.assertEqual(ds.image_size, (16, 16))
    k = 0
    for y in starts_y:
      for x in starts_x:
        np.testing.assert_array_equal(ds.train[k]["label"], label[y:y + 16, x:x + 16])
        np.testing.assert_array_equal(ds.train[k]["image"], image[y:y + 16, x:x + 16])
        k += 1
    self.assertEqual(ds.train.names[k - 1], "tile2/image_part_001/0019")

  def test_patchify_pads_small_images_with_ignore(self):
    ims, lbs = preprocess.patchify(np.ones((5, 7, 3), np.uint8), np.zeros((5, 7), np.uint8), 8)
    self.assertEqual(ims.shape, (1, 8, 8, 3))
    self.assertEqual(int(lbs[0, 6, 0]), 255)
    self.assertEqual(int(lbs[0, 0, 7]), 255)
    self.assertEqual(int(ims[0, 6, 0, 0]), 0)

  def test_random_patch_split_warns(self):
    fixtures.make_tile_layout(self.root)
    with self.assertWarnsRegex(UserWarning, "random_patch"):
      ds = data.get_dataset(_config(self.root, split="random_patch", prep="patches"))
    # 80 patches of 16x16; val and test take 12.5% each.
    self.assertEqual((len(ds.train), len(ds.val), len(ds.test)), (60, 10, 10))

  def test_missing_mask_names_file_or_is_skipped(self):
    fixtures.make_tile_layout(self.root)
    os.remove(os.path.join(self.root, "Tile 2", "masks", "image_part_002.png"))
    with self.assertRaisesRegex(ValueError, r"Tile 2/images/image_part_002.png.*no mask"):
      data.get_dataset(_config(self.root))
    ds = data.get_dataset(_config(self.root, on_bad_file="skip"))
    self.assertLen(ds.skipped, 1)
    self.assertIn("image_part_002.png", ds.skipped[0][0])
    self.assertLen(ds.train, 1)

  def test_mask_without_image(self):
    fixtures.make_tile_layout(self.root)
    os.remove(os.path.join(self.root, "Tile 3", "images", "image_part_001.png"))
    with self.assertRaisesRegex(ValueError, r"Tile 3/masks/image_part_001.png.*no image"):
      data.get_dataset(_config(self.root))

  def test_corrupt_file(self):
    fixtures.make_tile_layout(self.root)
    path = os.path.join(self.root, "Tile 1", "images", "image_part_001.png")
    with open(path, "wb") as f:
      f.write(b"\x89PNG not really")
    with self.assertRaisesRegex(ValueError, r"Tile 1/images/image_part_001.png: cannot read"):
      data.get_dataset(_config(self.root))
    ds = data.get_dataset(_config(self.root, on_bad_file="skip"))
    self.assertLen(ds.skipped, 1)
    self.assertLen(ds.val, 1)

  def test_size_mismatch(self):
    fixtures.make_tile_layout(self.root)
    path = os.path.join(self.root, "Tile 1", "masks", "image_part_002.png")
    Image.open(path).crop((0, 0, 20, 20)).save(path)
    with self.assertRaisesRegex(ValueError, r"image_part_002.png: mask size 20x20 differs"):
      data.get_dataset(_config(self.root))

  def test_unknown_colours_above_threshold(self):
    fixtures.make_tile_layout(self.root)
    path = os.path.join(self.root, "Tile 3", "masks", "image_part_001.png")
    rgb = np.asarray(Image.open(path).convert("RGB")).copy()
    rgb[:10] = (1, 2, 3)
    Image.fromarray(rgb).save(path)
    with self.assertRaisesRegex(ValueError, r"Tile 3/masks/image_part_001.png: .*outside"):
      data.get_dataset(_config(self.root))
    ds = data.get_dataset(_config(self.root, max_unknown_fraction=0.5))
    self.assertLen(ds.test, 2)

  def test_other_file_types_are_reported_and_webp_is_read(self):
    written = fixtures.make_tile_layout(self.root)
    images, masks = (os.path.join(self.root, "Tile 1", d) for d in ("images", "masks"))
    # A WebP pair (lossless, so the mask keeps its colours) replaces image_part_002's PNGs.
    for folder in (images, masks):
      path = os.path.join(folder, "image_part_002.png")
      Image.open(path).save(path[:-4] + ".webp", lossless=True)
      os.remove(path)
    bad = [os.path.join(images, "image_part_009.gif"), os.path.join(images, "notes.txt"),
           os.path.join(masks, "image_part_001.jpg"), os.path.join(images, "extra")]
    Image.new("RGB", (8, 8)).save(bad[0])
    open(bad[1], "w").close()
    Image.new("RGB", (8, 8)).save(bad[2])
    os.makedirs(bad[3])
    open(os.path.join(images, ".DS_Store"), "w").close()  # hidden: not data, passed over
    with self.assertRaisesRegex(ValueError, r"Tile 1/images/extra: not a file"):
      data.get_dataset(_config(self.root))
    ds = data.get_dataset(_config(self.root, on_bad_file="skip"))
    reasons = dict(ds.skipped)
    self.assertCountEqual(reasons, bad)
    self.assertIn("unsupported image file type '.gif'", reasons[bad[0]])
    self.assertIn("unsupported image file type '.txt'", reasons[bad[1]])
    self.assertIn("JPEG is lossy", reasons[bad[2]])
    self.assertEqual(ds.val.names, ["tile1/image_part_001", "tile1/image_part_002"])
    image, label = written["tile1/image_part_002"]
    np.testing.assert_array_equal(
        ds.val[1]["label"], preprocess.resize_pair(image, label, (16, 24))[1])

  def test_two_files_with_one_stem_are_reported(self):
    fixtures.make_tile_layout(self.root)
    path = os.path.join(self.root, "Tile 3", "images", "image_part_001")
    Image.open(path + ".png").save(path + ".tif")
    with self.assertRaisesRegex(ValueError, r"image_part_001.tif: a second image named"):
      data.get_dataset(_config(self.root))
    ds = data.get_dataset(_config(self.root, on_bad_file="skip"))
    self.assertEqual([p for p, _ in ds.skipped], [path + ".tif"])
    self.assertLen(ds.test, 2)

  def test_all_black_mask_is_a_bad_file(self):
    fixtures.make_tile_layout(self.root)
    path = os.path.join(self.root, "Tile 3", "masks", "image_part_002.png")
    with Image.open(path) as im:
      Image.new("RGB", im.size).save(path)
    with self.assertRaisesRegex(ValueError, r"Tile 3/masks/image_part_002.png: no pixel has a "
                                r"class colour"):
      data.get_dataset(_config(self.root))
    ds = data.get_dataset(_config(self.root, on_bad_file="skip"))
    self.assertLen(ds.skipped, 1)
    self.assertIn("image_part_002.png: no pixel has a class colour", ds.skipped[0][1])
    self.assertEqual(ds.test.names, ["tile3/image_part_001"])

  def test_split_with_many_ignored_pixels_is_refused(self):
    written = fixtures.make_tile_layout(self.root)
    for i, rows in ((1, 30), (2, 10)):  # train masks: ~65% and ~21% black
      path = os.path.join(self.root, "Tile 2", "masks", f"image_part_00{i}.png")
      label = written[f"tile2/image_part_00{i}"][1].copy()
      label[:rows] = 255
      fixtures.save_mask(path, label, "RGB")
    with self.assertRaisesRegex(
        ValueError, r"4\d\.\d% of the mask pixels of the train split are ignored .*"
        r"max_ignored_fraction=0.25; most ignored: .*Tile 2/masks/image_part_001.png \(6\d%\)"):
      data.get_dataset(_config(self.root))
    ds = data.get_dataset(_config(self.root, max_ignored_fraction=0.5))
    self.assertLen(ds.train, 2)

  def test_own_palette_with_a_black_class(self):
    rng = np.random.default_rng(0)
    palette_path = os.path.join(self.root, "classes.json")
    with open(palette_path, "w") as f:  # the classes.json layout of labelling tools
      json.dump({"classes": [{"title": "shadow", "color": "#000000"},
                             {"title": "roof", "color": "#FF0000"}]}, f)
    labels = {}
    for i in range(3):
      label = rng.integers(0, 2, (12, 16)).astype(np.uint8)
      mask = np.where(label[..., None] == 0, (0, 0, 0), (255, 0, 0)).astype(np.uint8)
      mask[0, 0] = (255, 255, 255)  # white: pixels of no class
      labels[f"img{i}"] = np.where(np.arange(16)[None] + np.arange(12)[:, None] == 0, 255, label)
      for folder, array in (("images", rng.integers(0, 256, (12, 16, 3), np.uint8)),
                            ("masks", mask)):
        os.makedirs(os.path.join(self.root, folder), exist_ok=True)
        Image.fromarray(array).save(os.path.join(self.root, folder, f"img{i}.png"))
    with self.assertRaisesRegex(ValueError, "classes.json: .*#000000.*'shadow'.*ignore_color"):
      data.get_dataset(_config(self.root, split="image", palette=palette_path))
    ds = data.get_dataset(_config(self.root, split="image", palette=palette_path,
                                  ignore_color="#FFFFFF", image_size=(12, 16)))
    self.assertEqual(ds.class_names, ("shadow", "roof"))
    self.assertEqual(ds.palette.ignore_color, (255, 255, 255))
    for source in (ds.train, ds.val, ds.test):
      for i, name in enumerate(source.names):
        np.testing.assert_array_equal(source[i]["label"], labels[name])
    # No ignore colour: white is an unknown colour, allowed up to max_unknown_fraction.
    ds = data.get_dataset(_config(self.root, split="image", palette=palette_path,
                                  ignore_color="none", image_size=(12, 16)))
    self.assertIsNone(ds.palette.ignore_color)

  @parameterized.parameters(("empty",), ("missing",))
  def test_empty_or_missing_folder(self, kind):
    root = self.root if kind == "empty" else os.path.join(self.root, "nope")
    with self.assertRaisesRegex(ValueError, root):
      data.get_dataset(_config(root))
    os.makedirs(os.path.join(self.root, "images"))
    os.makedirs(os.path.join(self.root, "masks"))
    with self.assertRaisesRegex(ValueError, "no image/mask pairs"):
      data.get_dataset(_config(self.root, split="image"))

  def test_bad_config_values(self):
    with self.assertRaisesRegex(ValueError, "data.split.*'bogus'"):
      data.get_dataset(_config(self.root, split="bogus"))
    with self.assertRaisesRegex(ValueError, "data.name.*'nope'"):
      data.get_dataset(_config(self.root, name="nope"))
    with self.assertRaisesRegex(ValueError, "patch_overlap"):
      preprocess.patch_starts(100, 16, 16)


if __name__ == "__main__":
  absltest.main()
