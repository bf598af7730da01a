"""Raster scenes through the trainer: N-band models, nodata out of every score, scenes scored
window by window, and a 20000x20000 scene trained on and scored in bounded memory."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

from absl.testing import absltest
import jax
import ml_collections
import numpy as np

from seg_jax import checks
from seg_jax import data
from seg_jax import errors
from seg_jax import evaluate
from seg_jax import inference
from seg_jax import scenes
from seg_jax import state as state_lib
from seg_jax import steps
from seg_jax import workdir as workdir_lib
from tests.data import raster_fixtures as rf
from tests.train_testing import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The smallest U-Net: two stages of one convolution each (quick to compile).
TINY_UNET = {"backbone_kwargs": {"widths": (4, 8), "blocks": 1}, "decoder_kwargs": {"blocks": 1}}


def raster_config(root, palette, **overrides):
  """A tiny U-Net on the raster folder `root`: 32-pixel windows, slide evaluation."""
  return tiny_config("unet", **{
      "model.kwargs": ml_collections.ConfigDict(TINY_UNET), "data.name": "raster",
      "data.root": root, "data.palette": palette, "data.prep": "windows",
      "data.patch_size": 32, "data.windows_per_epoch": 4, "data.rgb_bands": (1, 2, 3),
      "eval.predict.mode": "slide", "eval.predict.blend": "smooth",
      "eval.predict.batch_size": 3, **overrides})


def _one_piece(predict, image, window, overlap):
  """Probabilities of a whole image from every window at once, blended "smooth" in one array
  (inference's slide mode written out for any band count)."""
  ys, xs = inference._grid(image.shape[:2], (window,) * 2, (overlap,) * 2)
  weights = inference._axis_weights(ys, window, "smooth"), inference._axis_weights(
      xs, window, "smooth")
  boxes = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
  total, weight_sum = 0.0, np.zeros(image.shape[:2], np.float32)
  for start in range(0, len(boxes), 3):
    chunk = boxes[start:start + 3]
    windows = np.zeros((3, window, window, image.shape[-1]), image.dtype)
    for k, (i, j) in enumerate(chunk):
      windows[k] = image[ys[i]:ys[i] + window, xs[j]:xs[j] + window]
    probs = np.asarray(predict(windows))
    for k, (i, j) in enumerate(chunk):
      weight = np.zeros(image.shape[:2], np.float32)
      weight[ys[i]:ys[i] + window, xs[j]:xs[j] + window] = np.outer(weights[0][i], weights[1][j])
      placed = np.zeros((*image.shape[:2], probs.shape[-1]), np.float32)
      placed[ys[i]:ys[i] + window, xs[j]:xs[j] + window] = probs[k]
      total = total + placed * weight[..., None]
      weight_sum += weight
  return total / weight_sum[..., None]


class ScenesTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp()
    cls.root = os.path.join(cls.tmp, "data")
    cls.files = rf.split_layout(cls.root, per_split=(2, 1, 1), size=(70, 90), border=5,
                                nodata=0)
    cls.palette = os.path.join(cls.tmp, "classes.json")
    with open(cls.palette, "w") as f:
      json.dump(rf.PALETTE, f)
    cls.config = raster_config(cls.root, cls.palette)
    cls.trainer = steps.Trainer(cls.config)
    state = cls.trainer.initial_state()
    state, _ = cls.trainer.train_step(state, next(cls.trainer.train_pipeline()),
                                      cls.trainer.step_key())
    cls.state = state

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def test_the_model_reads_every_band_and_the_run_folder_records_them(self):
    kernels = [x.shape for x in jax.tree.leaves(self.state.params) if x.ndim == 4]
    self.assertIn(4, [k[2] for k in kernels])  # the first convolution takes the 4 bands
    run_dir = workdir_lib.RunDir(os.path.join(self.tmp, "run"))
    run_dir.makedirs()
    run_dir.save_data_info(self.trainer.dataset)
    info = run_dir.data_info()
    self.assertEqual((info.bands, info.rgb_bands, info.scale), ((1, 2, 3, 4), (1, 2, 3), 1.0))
    np.testing.assert_allclose(info.mean, self.trainer.dataset.mean)
    abstract = state_lib.abstract_state(self.config, 6, info.image_size,
                                        num_bands=len(info.bands))
    self.assertEqual(jax.tree.map(lambda x: x.shape, abstract.params),
                     jax.tree.map(lambda x: x.shape, self.state.params))
    # A dataset.json of an RGB run written before bands were recorded reads as RGB.
    old = {k: v for k, v in info.to_dict().items() if k not in ("bands", "rgb_bands", "scale")}
    old.update(mean=[1.0, 2.0, 3.0], std=[1.0, 1.0, 1.0])
    self.assertEqual(workdir_lib.DataInfo.from_dict(old).bands, (1, 2, 3))

  def _labelled(self, split):
    """Pixels of `split`'s scenes with a class whose image is not nodata."""
    return sum(int(((image != 0).all(axis=0) & (label < rf.NUM_CLASSES)).sum())
               for image, label in self.files[split])

  def test_nodata_never_reaches_the_confusion_matrix(self):
    evaluation = self.trainer.evaluate(self.state, "val")
    windows = self.trainer.dataset.val
    counted = sum(int((windows[i]["label"] < rf.NUM_CLASSES).sum()) for i in range(len(windows)))
    self.assertEqual(int(evaluation.matrix.sum()), counted)
    examples = data.full_resolution_examples(self.config.data, "val")
    _, matrix = evaluate.evaluate_full_resolution(
        self.trainer, self.state, examples, evaluate.full_resolution_options(self.trainer))
    self.assertEqual(int(matrix.sum()), self._labelled("val"))

  def test_a_scene_scored_window_by_window_equals_the_scene_in_one_piece(self):
    example, = data.full_resolution_examples(self.config.data, "test")
    scene = example["scene"]
    d = self.trainer.dataset
    options = dict(evaluate.full_resolution_options(self.trainer), mean=d.mean, std=d.std,
                   scale=1.0, dtype=np.float32)
    variables = state_lib.variables(self.state)
    counts = {}
    parts = list(scenes.strips(self.trainer.model, variables, scene, ignore_index=255,
                               counts=counts, **options))
    self.assertGreater(len(parts), 1)  # several strips
    whole = scene.read(0, 0, *scene.shape)
    predict = inference.window_predictor(self.trainer.model, variables, tta="none", mean=d.mean,
                                         std=d.std, dtype=np.float32)
    probs = _one_piece(predict, whole["image"], 32, 8)
    for top, part, labels in parts:
      np.testing.assert_allclose(part, probs[top:top + len(part)], rtol=1e-5, atol=1e-6)
      np.testing.assert_array_equal(labels, whole["label"][top:top + len(part)])
    self.assertEqual(sum(len(p) for _, p, _ in parts), scene.shape[0])
    kw = dict(num_classes=6, ignore_index=255, loss_fn=self.trainer.loss_fn)
    cms, sums = scenes.score_scene(self.trainer.model, variables, scene, **kw, **options)
    one_cm, one_sums = scenes.score_probabilities(probs, whole["label"], **kw)
    self.assertEqual(self.trainer.scores(cms, sums)[1].tolist(),
                     self.trainer.scores([one_cm], [one_sums])[1].tolist())
    np.testing.assert_allclose(self.trainer.scores(cms, sums)[0]["loss"],
                               self.trainer.scores([one_cm], [one_sums])[0]["loss"], rtol=1e-5)

  def test_a_scene_smaller_than_a_window_is_padded_by_reflection(self):
    example, = data.full_resolution_examples(self.config.data, "test")
    d = self.trainer.dataset
    variables = state_lib.variables(self.state)
    (top, probs, labels), = scenes.strips(
        self.trainer.model, variables, example["scene"], mean=d.mean, std=d.std, scale=1.0,
        dtype=np.float32, ignore_index=255, window=(80, 96), overlap=0.25, blend="uniform",
        tta="none", batch_size=2, counts={})
    whole = example["scene"].read(0, 0, 70, 90)
    padded = np.pad(whole["image"], ((0, 10), (0, 6), (0, 0)), mode="reflect")
    predict = inference.window_predictor(self.trainer.model, variables, tta="none", mean=d.mean,
                                         std=d.std, dtype=np.float32)
    self.assertEqual(top, 0)
    np.testing.assert_allclose(probs, np.asarray(predict(padded[None]))[0, :70, :90],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels, whole["label"])

  def test_scenes_are_scored_in_slide_mode_only(self):
    config = raster_config(self.root, self.palette, **{
        "train.mode": "eval", "eval.resolution": "full", "eval.predict.mode": "resize"})
    with self.assertRaisesRegex(errors.ConfigError, r"window by window: eval.predict.mode must "
                                r"be 'slide'"):
      checks.check_setup(config, self.trainer.dataset, 1)

  def test_colour_jitter_needs_rgb_bands(self):
    config = raster_config(self.root, self.palette, **{"data.rgb_bands": ()})
    dataset = data.get_dataset(config.data)
    with self.assertRaisesRegex(errors.ConfigError, r"name none: set data.rgb_bands"):
      checks.check_setup(config, dataset, 1)


# Writes a 20000x20000x4 uint16 scene (tiled, DEFLATE, sparse: nodata but for a 700x900
# labelled patch) as the train and the val scene, trains one epoch of random windows and scores
# the val scene at full resolution, then prints the peak RSS.
BIG_SCENE = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window
    from seg_jax import data, evaluate, steps
    from tests.test_scenes import raster_config

    root, palette = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(0)
    patch = {"img": rng.integers(1, 4000, (4, 700, 900)).astype(np.uint16),
             "mask": rng.integers(0, 6, (1, 700, 900)).astype(np.uint8)}
    for kind, nodata in (("img", 0), ("mask", 255)):
      path = os.path.join(root, "train", kind, "scene_1.tif")
      os.makedirs(os.path.dirname(path))
      with rasterio.open(path, "w", driver="GTiff", width=20000, height=20000,
                         count=len(patch[kind]), dtype=patch[kind].dtype.name, tiled=True,
                         blockxsize=512, blockysize=512, compress="deflate", sparse_ok=True,
                         nodata=nodata, crs="EPSG:32633",
                         transform=from_origin(500000, 4000000, 10, 10)) as ds:
        ds.write(patch[kind], window=Window(12000, 9000, 900, 700))
      os.makedirs(os.path.join(root, "val", kind))
      os.symlink(path, os.path.join(root, "val", kind, "scene_1.tif"))
    config = raster_config(root, palette, **{"data.patch_size": 128,
                                             "eval.predict.batch_size": 4})
    trainer = steps.Trainer(config)
    state, batches = trainer.initial_state(), trainer.train_pipeline()
    for _ in range(len(trainer.dataset.train) // config.train.global_batch_size):
      state, _ = trainer.train_step(state, next(batches), trainer.step_key())
    _, matrix = evaluate.evaluate_full_resolution(
        trainer, state, data.full_resolution_examples(config.data, "val"),
        evaluate.full_resolution_options(trainer))
    # VmHWM, not getrusage's ru_maxrss: Linux carries the forking parent's peak into
    # ru_maxrss across exec, so under a large test worker it reports the worker's memory.
    with open("/proc/self/status") as f:
      peak_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    print(json.dumps({"peak_rss_mb": peak_kb / 1024, "scored": int(matrix.sum())}))
    """)


class BigSceneTest(absltest.TestCase):

  def test_a_scene_larger_than_memory_trains_and_scores_in_bounded_memory(self):
    tmp = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, tmp)
    palette = os.path.join(tmp, "classes.json")
    with open(palette, "w") as f:
      json.dump(rf.PALETTE, f)
    proc = subprocess.run([sys.executable, "-c", BIG_SCENE, os.path.join(tmp, "data"), palette],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    self.assertEqual(result["scored"], 700 * 900)  # every labelled pixel, once
    # The scene is 3.2 GB as stored (uint16) and its class probabilities 9.6 GB (float32).
    self.assertLess(result["peak_rss_mb"], 1500, result)


if __name__ == "__main__":
  absltest.main()
