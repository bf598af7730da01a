"""The predict command on rasters: GeoTIFFs on the input's grid, window by window equal to the
scene in one piece, COGs, probability rasters, bad rasters named before anything compiles."""

import contextlib
import io
import json
import os
import shutil
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image
import rasterio

from seg_jax import errors
from seg_jax import predict
from seg_jax import train
from seg_jax.data import geotiff
from seg_jax.data import raster
from tests.data import raster_fixtures as rf
from tests.test_scenes import raster_config

OPTIONS = dict(mode="resize", overlap=0.25, blend="smooth", tta="none", scales=(),
               batch_size=3)
_RUN = None


def raster_run() -> str:
  """A run folder of a tiny U-Net trained 1 step on 4-band uint16 rasters with nodata borders
  (32-pixel windows)."""
  global _RUN
  if _RUN is None:
    _RUN = tempfile.mkdtemp()
    root, palette = os.path.join(_RUN, "data"), os.path.join(_RUN, "classes.json")
    rf.split_layout(root, per_split=(1, 1, 0), size=(40, 48), border=3, nodata=0)
    with open(palette, "w") as f:
      json.dump(rf.PALETTE, f)
    config = raster_config(root, palette, **{
        "train.num_steps": 1, "train.eval_every": 1, "train.checkpoint_every": 1,
        "eval.num_images": 0})
    train.train_and_evaluate(config, os.path.join(_RUN, "run"))
  return os.path.join(_RUN, "run")


def _run(input_spec, output, **overrides):
  """predict.run on the raster run with the flag defaults; returns (exit code, stderr)."""
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    code = predict.run(raster_run(), input_spec, output, checkpoint="best", window=None,
                       save_probs=overrides.pop("save_probs", False), **{**OPTIONS, **overrides})
  return code, err.getvalue()


def _scene(path, size=(70, 90), bands=4, dtype="uint16", crs_index=0, seed=0, **kwargs):
  """Writes a random raster with a nodata border of 5 pixels (nodata 0); returns its pixels."""
  crs, corner = rf.CRSS[crs_index] if crs_index is not None else (None, (0.0, 0.0))
  image, _ = rf.scene(np.random.default_rng(seed), bands=bands, dtype=dtype, size=size,
                      border=5, nodata=0)
  rf.write(path, image, crs=crs, corner=corner, pixel=0.6, nodata=0, **kwargs)
  return image


def _in_memory(path, **options):
  """Classes (H, W) of raster `path` predicted in one piece by `inference.predict` (slide mode),
  nodata as `geotiff.CLASS_NODATA`."""
  trained = predict.load_workdir(raster_run())
  info = raster.describe(path)
  with raster.open_raster(path) as ds:
    image, nodata = raster.read_pixels(ds, path, trained.info.bands, info.nodata, None)
  image[nodata] = raster.fill_values(trained.info.mean, trained.info.scale, info.dtype)
  probs = trained.predict(image, mode="slide", overlap=0.25, blend="smooth", batch_size=3,
                          **options)
  return geotiff.encode_classes(probs.argmax(-1), nodata)[0], probs


class RasterPredictTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("utm33n_uint16", 0, "uint16"), ("nad83_utm17n_uint8", 1, "uint8"),
      ("web_mercator_float32", 2, "float32"), ("no_crs_uint8", None, "uint8"))
  def test_classes_geotiff_is_on_the_input_grid_and_equals_the_scene_in_one_piece(
      self, crs_index, dtype):
    inputs, out = tempfile.mkdtemp(), tempfile.mkdtemp()
    path = os.path.join(inputs, "scene.tif")
    image = _scene(path, dtype=dtype, crs_index=crs_index)
    code, err = _run(path, out)
    self.assertEqual(code, errors.EXIT_OK, err)
    self.assertCountEqual(os.listdir(out), ["scene_classes.tif", "scene_overlay.png"])
    with raster.open_raster(path) as src, \
        raster.open_raster(os.path.join(out, "scene_classes.tif")) as ds:
      self.assertEqual((ds.crs, ds.transform, ds.width, ds.height),
                       (src.crs, src.transform, src.width, src.height))
      self.assertEqual((ds.count, ds.dtypes[0], ds.nodata), (1, "uint8", 255))
      self.assertEqual((ds.profile["tiled"], ds.profile["compress"]), (True, "deflate"))
      colours = ds.colormap(1)
      classes = ds.read(1)
    palette = predict.load_workdir(raster_run()).info.palette
    self.assertEqual([colours[i][:3] for i in range(6)], list(palette.colors))
    expected, _ = _in_memory(path)
    np.testing.assert_array_equal(classes, expected)  # window by window = one piece, exactly
    nodata = (image == 0).any(axis=0)  # a band holds nodata: the border, and a few inside
    self.assertTrue(nodata[:5].all() and nodata[:, -5:].all())
    np.testing.assert_array_equal(classes == 255, nodata)
    self.assertTrue((classes[~nodata] < 6).all())
    overlay = Image.open(os.path.join(out, "scene_overlay.png"))
    self.assertEqual(overlay.width, 90)

  def test_cog_with_overviews_and_a_probability_raster(self):
    inputs, out, plain = tempfile.mkdtemp(), tempfile.mkdtemp(), tempfile.mkdtemp()
    path = os.path.join(inputs, "big.tif")
    _scene(path, size=(300, 280), bands=4, dtype="uint16", crs_index=1)
    self.assertEqual(_run(path, plain)[0], errors.EXIT_OK)
    code, err = _run(path, out, cog=True, save_probs=True, batch_size=8)
    self.assertEqual(code, errors.EXIT_OK, err)
    with rasterio.open(os.path.join(out, "big_classes.tif")) as ds, \
        rasterio.open(os.path.join(plain, "big_classes.tif")) as tiff:
      self.assertEqual(ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"], "COG")
      self.assertNotEmpty(ds.overviews(1))
      np.testing.assert_array_equal(ds.read(1), tiff.read(1))
      self.assertEqual(ds.colormap(1), tiff.colormap(1))
      classes = ds.read(1)
    with rasterio.open(os.path.join(out, "big_probs.tif")) as ds:
      self.assertEqual((ds.count, ds.dtypes[0], ds.nodata), (6, "uint8", 255))
      self.assertEqual(ds.descriptions, tuple(rf.PALETTE))
      np.testing.assert_allclose(ds.scales, [1 / 254] * 6)
      stored = ds.read()
    _, probs = _in_memory(path)
    valid = classes != 255
    self.assertTrue((stored[:, ~valid] == 255).all())
    np.testing.assert_allclose(stored[:, valid].T / 254, probs[valid], atol=0.5 / 254 + 1e-6)

  def test_bad_rasters_are_named_on_one_line_before_anything_compiles(self):
    inputs, out = tempfile.mkdtemp(), tempfile.mkdtemp()
    three = os.path.join(inputs, "a_three_bands.tif")
    _scene(three, bands=3)
    _scene(os.path.join(inputs, "b_good.tif"), size=(40, 48))
    cut = os.path.join(inputs, "c_cut.tif")
    _scene(cut, size=(64, 64), tiled=True, blockxsize=16, blockysize=16, compress="deflate")
    with open(cut, "r+b") as f:
      f.truncate(os.path.getsize(cut) // 2)
    empty = os.path.join(inputs, "d_empty.vrt")
    with open(empty, "w") as f:
      f.write('<VRTDataset rasterXSize="48" rasterYSize="40"></VRTDataset>')
    with self.assertLogs(level="INFO") as logs:
      code, err = _run(inputs, out)
    self.assertEqual(code, errors.EXIT_SOME_FAILED)
    failed = err.split("3 failed:")[1].strip().splitlines()
    self.assertLen(failed, 3)
    self.assertStartsWith(failed[0].strip(), f"{three}: 3 bands, but the model was trained on 4")
    self.assertStartsWith(failed[1].strip(), f"{cut}: the file is cut short")
    # GDAL refuses a VRT without bands itself; describe() refuses one it opens.
    self.assertRegex(failed[2].strip(), rf"^{empty}: .*(no bands|bands on VRTDataset)")
    messages = [r.getMessage() for r in logs.records]
    predicted = next(i for i, m in enumerate(messages) if m.startswith(f"{inputs}/b_good.tif"))
    errors_logged = [i for i, m in enumerate(messages) if m.startswith((three, cut, empty))]
    self.assertLess(max(errors_logged), predicted)  # every bad file named before predicting
    self.assertCountEqual(os.listdir(out), ["b_good_classes.tif", "b_good_overlay.png"])

  def test_scales_other_than_1_are_refused_for_rasters(self):
    inputs = tempfile.mkdtemp()
    _scene(os.path.join(inputs, "a.tif"), size=(40, 48))
    code, err = _run(inputs, tempfile.mkdtemp(), scales=(0.5,))
    self.assertEqual(code, errors.EXIT_USER_ERROR)
    self.assertIn("raster inputs are predicted window by window at their own resolution", err)

  def test_an_artifact_takes_uint8_rasters_only(self):
    info = raster.RasterInfo("x.tif", 8, 8, 4, "uint16", None, (1, 0, 0, 0, -1, 0), None, ())
    model = predict.ExportedModel.__new__(predict.ExportedModel)
    model.artifact = type("A", (), {"path": "m.onnx"})()
    with self.assertRaisesRegex(ValueError, r"^x.tif: uint16 pixels, but m.onnx takes uint8"):
      model.check_raster(info)


def _quarters(folder, image, *, overlap=4, crs_index=1, pixel=0.6, skip=(), shift=(0.0, 0.0)):
  """Writes the quarters of (C, H, W) `image` as tiles q<row><col>.tif on one grid (each
  `overlap` pixels into its neighbours), leaving out the quarters in `skip`; `shift` moves the
  last tile written by (x, y) pixels."""
  crs, (left, top) = rf.CRSS[crs_index]
  _, h, w = image.shape
  rows = ((0, h // 2 + overlap), (h // 2 - overlap, h))
  cols = ((0, w // 2 + overlap), (w // 2 - overlap, w))
  written = []
  for i, (r0, r1) in enumerate(rows):
    for j, (c0, c1) in enumerate(cols):
      if (i, j) not in skip:
        written.append((os.path.join(folder, f"q{i}{j}.tif"), image[:, r0:r1, c0:c1],
                        (left + c0 * 0.6, top - r0 * 0.6)))
  for k, (path, tile, (x, y)) in enumerate(written):
    dx, dy = shift if k == len(written) - 1 else (0.0, 0.0)
    rf.write(path, tile, crs=crs, corner=(x + dx * pixel, y - dy * pixel), pixel=pixel,
             nodata=0)
  return [path for path, _, _ in written]


class MosaicTest(parameterized.TestCase):

  def test_tiles_predicted_as_one_scene_equal_the_stitched_raster_in_one_piece(self):
    inputs, out, whole = tempfile.mkdtemp(), tempfile.mkdtemp(), tempfile.mkdtemp()
    image = _scene(os.path.join(whole, "scene.tif"), size=(70, 90), crs_index=1)
    _quarters(inputs, image, skip=((1, 1),))
    stitched = image.copy()
    stitched[:, 39:, 49:] = 0  # what the other tiles leave of the quarter left out is nodata
    rf.write(os.path.join(whole, "stitched.tif"), stitched, crs=rf.CRSS[1][0],
             corner=rf.CRSS[1][1], pixel=0.6, nodata=0)
    code, err = _run(os.path.join(inputs, "*.tif"), out, mosaic="area")
    self.assertEqual(code, errors.EXIT_OK, err)
    self.assertCountEqual(os.listdir(out), ["area_classes.tif", "area_overlay.png"])
    with raster.open_raster(os.path.join(whole, "stitched.tif")) as src, \
        raster.open_raster(os.path.join(out, "area_classes.tif")) as ds:
      self.assertEqual((ds.crs, ds.width, ds.height), (src.crs, src.width, src.height))
      self.assertTrue(ds.transform.almost_equals(src.transform, precision=1e-6))
      classes = ds.read(1)
    expected, _ = _in_memory(os.path.join(whole, "stitched.tif"))
    np.testing.assert_array_equal(classes, expected)  # windows span the tiles' edges
    self.assertTrue((classes[39:, 49:] == 255).all())
    np.testing.assert_array_equal(classes == 255, (stitched == 0).any(axis=0))

  @parameterized.named_parameters(
      ("another_crs", dict(crs_index=2), "coordinate reference system"),
      ("another_pixel_size", dict(pixel=0.5), "pixel size 0.5"),
      ("off_the_grid", dict(shift=(0.3, 0.0)), "not on the same pixel grid"))
  def test_a_tile_that_does_not_fit_is_named_before_anything_is_predicted(self, change, words):
    inputs, out = tempfile.mkdtemp(), tempfile.mkdtemp()
    image, _ = rf.scene(np.random.default_rng(0), bands=4, size=(70, 90))
    first = _quarters(inputs, image, skip=((1, 0), (1, 1)))[0]
    odd = _quarters(inputs, image, skip=((0, 0), (0, 1), (1, 0)), **change)[0]
    with mock.patch.object(predict, "predict_raster", side_effect=AssertionError):
      code, err = _run(inputs, out, mosaic="area")
    self.assertEqual(code, errors.EXIT_USER_ERROR)
    line = err.strip().splitlines()[-1]
    self.assertIn(f"{odd}: ", line)
    self.assertIn(words, line)
    if change.get("crs_index") or change.get("pixel"):
      self.assertIn(first, line)
    self.assertEmpty(os.listdir(out))

  def test_a_mosaic_of_a_picture_or_a_bad_raster_names_it(self):
    inputs, out = tempfile.mkdtemp(), tempfile.mkdtemp()
    image, _ = rf.scene(np.random.default_rng(0), bands=4, size=(70, 90))
    _quarters(inputs, image, skip=((1, 1),))
    three = os.path.join(inputs, "q9.tif")
    _scene(three, bands=3, crs_index=1)
    code, err = _run(inputs, out, mosaic="area")
    self.assertEqual(code, errors.EXIT_USER_ERROR)
    self.assertRegex(err.strip().splitlines()[-1],
                     rf"--mosaic=area: {three}: 3 bands, but the model was trained on 4")
    os.remove(three)
    Image.new("RGB", (8, 8)).save(os.path.join(inputs, "photo.png"))
    code, err = _run(inputs, out, mosaic="area")
    self.assertEqual(code, errors.EXIT_USER_ERROR)
    self.assertIn("photo.png is not a raster", err)

  @classmethod
  def tearDownClass(cls):
    global _RUN
    if _RUN is not None:
      shutil.rmtree(_RUN, ignore_errors=True)
      _RUN = None
    super().tearDownClass()


if __name__ == "__main__":
  absltest.main()
