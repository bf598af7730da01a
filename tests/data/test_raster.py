"""Tests of raster datasets: bands, types, nodata, statistics, pixel grids, bad files, windows."""

import json
import os
import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np
import rasterio
from rasterio.enums import ColorInterp

from seg_jax import data
from seg_jax.data import pipeline
from seg_jax.data import raster
from seg_jax.data import windows
from tests.data import fixtures
from tests.data import raster_fixtures as rf

NAIP = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "naip_rgbn",
                    "dataset_split")
IGNORE = 255


class RasterTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.tmp)
    self.root = os.path.join(self.tmp, "data")
    self.palette = os.path.join(self.tmp, "classes.json")
    with open(self.palette, "w") as f:
      json.dump(rf.PALETTE, f)

  def config(self, **fields):
    """The raster data group of the test's folder: 32-pixel patches, no jitter."""
    return fixtures.data_config(**{"name": "raster", "root": self.root, "palette": self.palette,
                                   "prep": "patches", "patch_size": 32, **fields})

  def path(self, split, kind, n):
    return os.path.join(self.root, split, kind, f"{'tile' if kind == 'img' else 'mask'}_{n}.tif")

  @parameterized.parameters(("uint8", 4, 0, 0), ("uint16", 13, 1, 0), ("int16", 1, 2, -9999),
                            ("float32", 4, 1, -9999.0), ("float32", 13, 2, float("nan")),
                            ("uint16", 1, 0, 65535))
  def test_types_bands_and_crs_keep_values_and_statistics_skip_nodata(self, dtype, bands, crs,
                                                                      nodata):
    scenes = rf.split_layout(self.root, dtype=dtype, bands=bands, crs_index=crs, border=3,
                             nodata=nodata)
    ds = data.get_dataset(self.config())
    self.assertEqual(ds.bands.numbers, tuple(range(1, bands + 1)))
    pixels = np.concatenate([im.reshape(bands, -1) for im, _ in scenes["train"]], axis=1)
    valid = ~(np.isnan(pixels) if np.isnan(nodata) else pixels == nodata).any(axis=0)
    np.testing.assert_allclose(ds.mean, pixels[:, valid].astype(np.float64).mean(axis=1),
                               rtol=1e-5)
    np.testing.assert_allclose(ds.std, pixels[:, valid].astype(np.float64).std(axis=1),
                               rtol=1e-5)
    # The first window of the first scene: values as stored, nodata filled with the means.
    image, label = scenes["train"][0]
    window = ds.train[0]
    self.assertEqual(window["image"].dtype, np.dtype(dtype))
    stored = np.moveaxis(image[:, :32, :32], 0, -1)
    nodata_px = ~valid[:image[0].size].reshape(image.shape[1:])[:32, :32]
    np.testing.assert_array_equal(window["image"][~nodata_px], stored[~nodata_px])
    fill = ds.mean if dtype == "float32" else np.round(ds.mean)
    np.testing.assert_allclose(window["image"][nodata_px], np.broadcast_to(
        fill.astype(dtype), window["image"][nodata_px].shape), rtol=1e-6)
    np.testing.assert_array_equal(window["label"], np.where(nodata_px, IGNORE, label[:32, :32]))

  def test_bands_by_number_and_description_in_the_order_named(self):
    rng = np.random.default_rng(0)
    image, label = rf.scene(rng, bands=13)
    names = [f"B{b}" for b in range(1, 14)]
    rf.write(self.path("train", "img", 0), image, descriptions=names)
    rf.write(self.path("train", "mask", 0), label)
    ds = data.get_dataset(self.config(bands=(4, "b3", 2), rgb_bands=(4, 3, 2)))
    self.assertEqual(ds.bands.numbers, (4, 3, 2))
    self.assertEqual(ds.bands.rgb_channels, (0, 1, 2))
    np.testing.assert_array_equal(ds.train[0]["image"],
                                  np.moveaxis(image[[3, 2, 1], :32, :32], 0, -1))
    with self.assertRaisesRegex(ValueError, "names band 5, which the input does not hold"):
      data.get_dataset(self.config(bands=(4, 3, 2), rgb_bands=(4, 3, 5)))

  def test_a_band_tagged_alpha_is_read_as_data(self):
    rng = np.random.default_rng(0)
    image, label = rf.scene(rng, bands=4, dtype="uint8")
    path = rf.write(self.path("train", "img", 0), image, photometric="RGB")
    with rasterio.open(path, "r+") as ds:
      ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    rf.write(self.path("train", "mask", 0), label)
    with rasterio.open(path) as ds:
      self.assertEqual(ds.colorinterp[3], ColorInterp.alpha)
    window = data.get_dataset(self.config()).train[0]["image"]
    np.testing.assert_array_equal(window[..., 3], image[3, :32, :32])

  def test_nodata_from_the_config_and_mask_nodata_become_ignore(self):
    rng = np.random.default_rng(0)
    image, label = rf.scene(rng, bands=2, dtype="int16")
    image[image == -1] = 0
    image[:, :4] = -1  # no nodata in the file: data.nodata names it
    mask = label.astype(np.int16)
    mask[-5:] = -1  # data.mask_nodata
    rf.write(self.path("train", "img", 0), image)
    rf.write(self.path("train", "mask", 0), mask)
    ds = data.get_dataset(self.config(nodata=-1.0, mask_nodata=-1.0))
    expected = np.where(mask < 0, IGNORE, label)
    expected[:4] = IGNORE
    np.testing.assert_array_equal(ds.train[0]["label"], expected[:32, :32])
    np.testing.assert_allclose(ds.mean, image[:, 4:].reshape(2, -1).mean(axis=1), rtol=1e-6)
    with self.assertRaisesRegex(ValueError, r"mask_0.tif: mask value -1 is not a class"):
      data.get_dataset(self.config(nodata=-1.0))

  def test_masks_of_palette_colours_decode_to_classes(self):
    rng = np.random.default_rng(0)
    image, label = rf.scene(rng, bands=4, dtype="uint16")
    label[:2] = IGNORE  # black: the ignore colour
    palette = data.load_palette(rf.PALETTE)
    rgb = np.moveaxis(data.encode_mask(label, palette), -1, 0)
    rf.write(self.path("train", "img", 0), image)
    rf.write(self.path("train", "mask", 0), rgb)
    np.testing.assert_array_equal(data.get_dataset(self.config()).train[0]["label"],
                                  label[:32, :32])
    rgb[:, 10:20] = 7  # a colour of no class on a quarter of the mask
    rf.write(self.path("train", "mask", 0), rgb)
    with self.assertRaisesRegex(ValueError, r"mask_0.tif: 25.00% of pixels have colours "
                                r"outside the palette"):
      data.get_dataset(self.config())

  @parameterized.named_parameters(
      ("crs", dict(crs="EPSG:3857"), r"tile_0.tif and its mask .*mask_0.tif differ in CRS"),
      ("transform", dict(corner=(500010.0, 4000000.0)),
       r"tile_0.tif and its mask .*mask_0.tif differ in transform"),
      ("size", dict(size=(40, 40)), r"tile_0.tif and its mask .*mask_0.tif differ in size"),
      ("missing_crs", dict(crs=None), r"^\S*mask_0.tif: has no CRS, but \S*tile_0.tif of the "
                                      "same pair has EPSG:32633"))
  def test_mismatched_pixel_grids_name_both_files(self, mask_options, message):
    rng = np.random.default_rng(0)
    image, label = rf.scene(rng)
    rf.write(self.path("train", "img", 0), image)
    size = mask_options.pop("size", None)
    rf.write(self.path("train", "mask", 0), label if size is None else label[:, :size[1]],
             **mask_options)
    with self.assertRaisesRegex(ValueError, message):
      data.get_dataset(self.config())

  def _bad(self, kind):
    """Makes pair 1 of a 2-pair train split bad in one way; returns the bad file's path."""
    rf.split_layout(self.root, per_split=(2, 1, 0))
    image, mask = self.path("train", "img", 1), self.path("train", "mask", 1)
    if kind == "truncated":
      rng = np.random.default_rng(1)
      rf.write(image, rf.scene(rng, size=(64, 64))[0], tiled=True, blockxsize=16,
               blockysize=16, compress="deflate")
      rf.write(mask, rf.scene(rng, size=(64, 64))[1])
      with open(image, "r+b") as f:
        f.truncate(os.path.getsize(image) // 2)
      return image
    if kind == "no_bands":
      os.remove(image)
      image = image[:-4] + ".vrt"
      with open(image, "w") as f:
        f.write('<VRTDataset rasterXSize="48" rasterYSize="40"></VRTDataset>')
      return image
    if kind == "class_above_count":
      with rasterio.open(mask, "r+") as ds:
        ds.write(np.full((1, 40, 48), rf.NUM_CLASSES, np.uint8))
      return mask
    if kind == "missing_crs":
      rf.write(mask, np.zeros((40, 48), np.uint8), crs=None)
      return mask
    return image  # band_out_of_range: data.bands=(5,) for 4-band images

  @parameterized.parameters("truncated", "no_bands", "band_out_of_range", "class_above_count",
                            "missing_crs")
  def test_bad_raster_is_a_one_line_error_naming_it_or_is_skipped(self, kind):
    bad = self._bad(kind)
    fields = {"bands": (5,)} if kind == "band_out_of_range" else {}
    with self.assertRaises(ValueError) as raised:
      data.get_dataset(self.config(**fields))
    named = "tile_0.tif" if kind == "band_out_of_range" else os.path.basename(bad)
    self.assertEqual(os.path.basename(str(raised.exception).split(":")[0]), named)
    self.assertNotIn("\n", str(raised.exception))
    if kind != "band_out_of_range":  # that one is every file's
      ds = data.get_dataset(self.config(on_bad_file="skip", **fields))
      self.assertEqual([os.path.basename(p) for p, _ in ds.skipped],
                       ["tile_1.vrt" if kind == "no_bands" else "tile_1.tif"])
      self.assertLen(ds.train, 4)  # the other pair: 4 windows of 32 on 40x48

  def test_flat_layout_splits_whole_scenes_and_pairs_by_stem_or_number(self):
    rng = np.random.default_rng(0)
    for n in range(8):
      image, label = rf.scene(rng, bands=3, dtype="uint8", size=(32, 32))
      rf.write(os.path.join(self.root, "images", f"scene {n}.tif"), image)
      name = f"scene {n}.tif" if n % 2 else f"label_{n:03d}.tif"
      rf.write(os.path.join(self.root, "masks", name), label)
    with self.assertRaisesRegex(ValueError, r"data.split='image'"):
      data.get_dataset(self.config())
    ds = data.get_dataset(self.config(split="image"))
    self.assertEqual((len(ds.train), len(ds.val), len(ds.test)), (6, 1, 1))
    rf.write(os.path.join(self.root, "masks", "other.tif"), np.zeros((32, 32), np.uint8))
    with self.assertRaisesRegex(ValueError, r"other.tif: mask has no image"):
      data.get_dataset(self.config(split="image"))

  def test_random_windows_are_new_each_epoch_and_resume(self):
    rf.split_layout(self.root, per_split=(2, 1, 0), size=(80, 96))
    ds = data.get_dataset(self.config(prep="windows", windows_per_epoch=4, seed=3))
    self.assertLen(ds.train, 4)
    first = [ds.train.at(i, 0)["image"] for i in range(4)]
    for i in range(4):
      np.testing.assert_array_equal(ds.train[i]["image"], first[i])
    self.assertFalse(all(np.array_equal(ds.train.at(i, 1)["image"], first[i]) for i in range(4)))
    sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(jax.devices()[:1], ("data",)),
                                          jax.sharding.PartitionSpec("data"))
    make = lambda: pipeline.InputPipeline(ds.train, global_batch_size=2, sharding=sharding,
                                          seed=0, prefetch=0)
    batches = [np.asarray(b["image"]) for _, b in zip(range(4), make())]
    self.assertEqual(batches[0].dtype, np.uint16)
    epoch0 = {a.tobytes() for b in batches[:2] for a in b}
    self.assertEmpty(epoch0 & {a.tobytes() for b in batches[2:] for a in b})
    resumed = make()
    resumed.set_state({**resumed.get_state(), "next_batch": 3})
    np.testing.assert_array_equal(np.asarray(next(resumed)["image"]), batches[3])

  def test_windows_without_a_labelled_pixel_are_skipped_and_counted(self):
    rng = np.random.default_rng(0)
    image, label = rf.scene(rng, bands=1, dtype="uint8", size=(40, 1100))
    image[:, :, 100:] = 0  # nodata beyond column 100: chunk 1 (columns 512..1023) and 2 empty
    rf.write(self.path("train", "img", 0), image, nodata=0)
    rf.write(self.path("train", "mask", 0), label)
    ds = data.get_dataset(self.config(prep="windows", windows_per_epoch=16))
    self.assertEqual(ds.val.skipped, 0)  # no val scenes
    grid = windows.GridWindows(ds.train.scenes, [raster.scan(ds.train.scenes.pairs[0],
                                                             ds.train.scenes.labels)], 32, 0)
    self.assertEqual((len(grid), grid.skipped), (2 * 16, 2 * 19))  # 16 columns touch chunk 0
    for i in range(16):
      self.assertTrue(np.any(ds.train.at(i, 0)["label"] < rf.NUM_CLASSES))
    self.assertGreater(ds.train.skipped, 0)

  def test_stats_and_labels_survive_pickling_for_worker_processes(self):
    rf.split_layout(self.root, per_split=(1, 0, 0))
    ds = data.get_dataset(self.config(prep="windows", windows_per_epoch=2))
    import pickle  # pylint: disable=g-import-not-at-top
    again = pickle.loads(pickle.dumps(ds.train))
    np.testing.assert_array_equal(again.at(1, 2)["image"], ds.train.at(1, 2)["image"])

  @absltest.skipUnless(os.path.isdir(NAIP), "the NAIP tiles are not in ../shared/data")
  def test_naip_tiles(self):
    with open(self.palette, "w") as f:
      json.dump(rf.PALETTE, f)
    ds = data.get_dataset(self.config(root=NAIP, patch_size=256, rgb_bands=(1, 2, 3)))
    self.assertEqual((len(ds.train), len(ds.val), len(ds.test)), (129, 43, 43))
    self.assertEqual(ds.bands.numbers, (1, 2, 3, 4))
    example = ds.train[0]
    self.assertEqual(example["image"].shape, (256, 256, 4))
    # Band 4 (NIR, tagged alpha) holds data, not an opaque alpha channel.
    self.assertGreater(len(np.unique(example["image"][..., 3])), 10)
    self.assertLess(example["label"].max(), 6)
    pair = ds.train.scenes.pairs[0]
    self.assertEqual(pair.image.crs, "EPSG:26917")
    self.assertEqual(pair.mask.crs, pair.image.crs)


if __name__ == "__main__":
  absltest.main()
