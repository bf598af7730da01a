"""Tests of seg_jax.export and seg_jax.artifact: parity of StableHLO and ONNX artifacts with the
jitted model, prediction from an artifact alone, and broken or mismatched artifacts."""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
from jax import export as jax_export
import jax.numpy as jnp
import numpy as np
import onnxruntime
from PIL import Image

from configs import dubai
from seg_jax import artifact as artifact_lib
from seg_jax import errors
from seg_jax import export
from seg_jax import models
from seg_jax import predict
from seg_jax import workdir as workdir_lib
from tests import test_predict
from tests.models import testing
from tests.train_testing import LOOP_MODEL, REPO, TINY_KWARGS

MEAN, STD = (120.0, 110.0, 100.0), (60.0, 55.0, 50.0)
SEGMENTATION = [n for n in models.available() if models.is_segmentation(n)]
# (name, registry name, model kwargs): every segmentation preset at its tiny widths, and the
# proposal at the widths of configs/dubai.py.
PARITY_CASES = [(n, n, TINY_KWARGS[n]) for n in SEGMENTATION] + [
    ("asym_unet_dubai", "asym_unet", dubai.ARCHITECTURES["asym_unet"])]
TIE = 1e-4  # top-two gap below which two classes count as tied
QUIET = onnxruntime.SessionOptions()
QUIET.log_severity_level = 3  # no shape-merging warnings


def _pixels(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _relative(got, want):
  return float(np.abs(np.asarray(got) - np.asarray(want)).max() / np.abs(want).max())


def _untied(scores):
  """Pixels whose best two classes differ by at least TIE."""
  top2 = np.sort(np.asarray(scores), axis=-1)[..., -2:]
  return top2[..., 1] - top2[..., 0] >= TIE


def _fast(fn, x):
  """`fn` compiled for `x` without XLA's expensive CPU passes, called on it."""
  return jax.jit(fn).lower(x).compile(testing.FAST_COMPILE)(x)


class ParityTest(parameterized.TestCase):

  def test_every_segmentation_preset_is_checked(self):
    self.assertCountEqual(SEGMENTATION, TINY_KWARGS)

  def assertParity(self, got, want, rtol):
    self.assertEqual(got.shape, want.shape)
    self.assertLess(_relative(got, want), rtol)
    untied = _untied(want)
    self.assertGreater(untied.mean(), 0.9)
    np.testing.assert_array_equal(np.argmax(got, -1)[untied], np.argmax(want, -1)[untied])

  @parameterized.named_parameters(*PARITY_CASES)
  def test_artifacts_give_the_jitted_logits(self, name, kwargs):
    model = models.create(name, num_classes=5, **kwargs)
    variables = testing.random_variables(model, jnp.zeros((1, 32, 32, 3)))
    reference = export.serving_fn(model, variables, MEAN, STD)
    blob = export.export_model(model, variables, name, mean=MEAN, std=STD, fmt="stablehlo")
    exported = jax_export.deserialize(bytearray(blob))
    for shape in ((1, 45, 33, 3), (2, 32, 48, 3)):  # symbolic batch, height and width
      x = _pixels(shape)
      want = np.asarray(_fast(reference, x))
      self.assertParity(np.asarray(_fast(exported.call, x)), want, 1e-5)
    blob = export.export_model(model, variables, name, mean=MEAN, std=STD, fmt="onnx",
                               size=(32, 48))
    session = onnxruntime.InferenceSession(blob, QUIET, providers=["CPUExecutionProvider"])
    for batch in (1, 2):  # symbolic batch; the last `want` is that of (2, 32, 48)
      (got,) = session.run(None, {"pixels": x[:batch]})
      self.assertParity(got, want[:batch], 1e-4)

  def test_outputs_and_dtypes(self):
    model = models.create("unet", num_classes=5, **TINY_KWARGS["unet"])
    variables = testing.random_variables(model, jnp.zeros((1, 32, 32, 3)))
    x = _pixels((2, 40, 32, 3))
    logits = np.asarray(_fast(export.serving_fn(model, variables, MEAN, STD), x))
    for outputs in ("probs", "classes"):
      blob = export.export_model(model, variables, "unet", mean=MEAN, std=STD, fmt="stablehlo",
                                 outputs=outputs)
      got = np.asarray(jax_export.deserialize(bytearray(blob)).call(x))
      if outputs == "probs":
        np.testing.assert_allclose(got, jax.nn.softmax(logits, -1), atol=1e-6)
      else:
        self.assertEqual(got.dtype, np.int32)
        untied = _untied(logits)
        np.testing.assert_array_equal(got[untied], logits.argmax(-1)[untied])
    half = models.create("unet", num_classes=5, dtype="bfloat16", **TINY_KWARGS["unet"])
    blob = export.export_model(half, variables, "unet", mean=MEAN, std=STD, fmt="stablehlo",
                               dtype="bfloat16")
    got = np.asarray(jax_export.deserialize(bytearray(blob)).call(x))
    self.assertEqual(got.dtype, np.float32)
    self.assertLess(_relative(got, logits), 0.05)

  def test_a_model_of_fixed_size_is_refused_symbolic_sizes(self):
    model = models.create("mlp", num_classes=5, dense=True, hidden=(8,))  # dense on the pixels
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    with self.assertRaisesRegex(errors.ArtifactError,
                                "model 'mlp' cannot be exported to stablehlo at a symbolic size "
                                r"\(.*\); export at a fixed size with --size=H,W"):
      export.export_model(model, variables, "mlp", mean=MEAN, std=STD, fmt="stablehlo")
    blob = export.export_model(model, variables, "mlp", mean=MEAN, std=STD, fmt="stablehlo",
                               size=(32, 32))
    x = _pixels((2, 32, 32, 3))
    np.testing.assert_allclose(jax_export.deserialize(bytearray(blob)).call(x),
                               export.serving_fn(model, variables, MEAN, STD)(x), rtol=1e-5)


def _image(folder, name, h, w, seed):
  path = os.path.join(folder, name)
  Image.fromarray(_pixels((h, w, 3), seed)).save(path)
  return path


def _predict(output, workdir=None, model_file=None, **options):
  """predict.run on the test images; returns (exit code, stderr)."""
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    code = predict.run(workdir, os.path.join(ArtifactTest.inputs, "*.png"), output,
                       checkpoint="best", window=None, save_probs=True, model_file=model_file,
                       **{**test_predict.OPTIONS, **options})
  return code, err.getvalue()


class ArtifactTest(parameterized.TestCase):
  """Artifacts of the tiny trained workdir of tests/test_predict.py (32x32, 6 classes)."""

  folder = inputs = workdir = None

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.workdir = test_predict.trained_workdir()
    cls.folder, cls.inputs = tempfile.mkdtemp(), tempfile.mkdtemp()
    _image(cls.inputs, "odd.png", 45, 71, 0)
    _image(cls.inputs, "square.png", 40, 40, 1)
    for fmt in artifact_lib.FORMATS:
      export.export_workdir(cls.workdir, cls.path(fmt), fmt=fmt)

  @classmethod
  def path(cls, fmt):
    return os.path.join(cls.folder, f"model.{fmt}")

  def copy(self, fmt):
    """A copy of the `fmt` artifact and its sidecar in a new folder; returns its path."""
    path = os.path.join(tempfile.mkdtemp(), os.path.basename(self.path(fmt)))
    shutil.copy(self.path(fmt), path)
    shutil.copy(artifact_lib.sidecar_path(self.path(fmt)), artifact_lib.sidecar_path(path))
    return path

  def test_sidecar_holds_what_a_consumer_needs(self):
    with open(artifact_lib.sidecar_path(self.path("onnx"))) as f:
      side = json.load(f)
    info = workdir_lib.RunDir(self.workdir).data_info()
    self.assertEqual(side["input"], {"dtype": "uint8", "layout": "NHWC",
                                     "bands": ["R", "G", "B"], "size": [32, 32], "min_size": 32})
    self.assertEqual((side["class_names"], side["mean"], side["image_size"]),
                     (list(info.class_names), list(info.mean), [32, 32]))
    self.assertLen(side["colors"], 6)
    self.assertEqual((side["model"], side["outputs"], side["step"]), (LOOP_MODEL, "logits", 2))
    self.assertLen(side["config_hash"], 16)
    self.assertIn("seg_jax_version", side)
    stablehlo = artifact_lib.read_sidecar(self.path("stablehlo"))
    self.assertIsNone(stablehlo.input_size)
    self.assertEqual(stablehlo.config_hash, side["config_hash"])

  def test_predicting_from_an_artifact_gives_the_workdirs_masks(self):
    # Windows, blending, TTA and scales run as for a workdir (resize mode: test_predict.py).
    options = dict(mode="slide", blend="smooth", tta="flips", scales=(1.0, 1.5), batch_size=3)
    out = {}
    for source in ("workdir", "stablehlo", "onnx"):
      out[source] = tempfile.mkdtemp()
      kwargs = dict(workdir=self.workdir) if source == "workdir" else dict(
          model_file=self.path(source))
      code, err = _predict(out[source], **kwargs, **options)
      self.assertEqual(code, errors.EXIT_OK, err)
    for stem in ("odd", "square"):
      probs = np.load(os.path.join(out["workdir"], f"{stem}_probs.npy"))
      mask = np.asarray(Image.open(os.path.join(out["workdir"], f"{stem}_mask.png")))
      untied = _untied(probs)
      self.assertLess((~untied).sum(), 0.01 * untied.size)  # tied pixels, left out below
      for source in ("stablehlo", "onnx"):
        other = np.asarray(Image.open(os.path.join(out[source], f"{stem}_mask.png")))
        np.testing.assert_array_equal(other[untied], mask[untied])
        np.testing.assert_allclose(np.load(os.path.join(out[source], f"{stem}_probs.npy")),
                                   probs, atol=1e-5)
        self.assertEqual(sorted(os.listdir(out[source])), sorted(os.listdir(out["workdir"])))

  def test_an_artifact_normalises_as_the_workdir_does_when_values_are_scaled(self):
    # A run whose stored pixels are scaled before normalising (data.scale, e.g. 1/255): its
    # dataset.json holds mean and std of the scaled values. Halving scale, mean and std leaves
    # the workdir's normalisation, (x * scale - mean) / std, as it was; the artifact must too.
    workdir = os.path.join(tempfile.mkdtemp(), "run")
    shutil.copytree(self.workdir, workdir)
    info_path = os.path.join(workdir, workdir_lib.DATA_INFO_FILE)
    with open(info_path) as f:
      info = json.load(f)
    info.update(scale=0.5, mean=[m / 2 for m in info["mean"]], std=[s / 2 for s in info["std"]])
    with open(info_path, "w") as f:
      json.dump(info, f)
    path = os.path.join(tempfile.mkdtemp(), "model.stablehlo")
    export.export_workdir(workdir, path, fmt="stablehlo")
    out = {}
    for source, kwargs in (("workdir", dict(workdir=workdir)), ("artifact", dict(model_file=path))):
      out[source] = tempfile.mkdtemp()
      code, err = _predict(out[source], **kwargs)
      self.assertEqual(code, errors.EXIT_OK, err)
    np.testing.assert_allclose(np.load(os.path.join(out["artifact"], "odd_probs.npy")),
                               np.load(os.path.join(out["workdir"], "odd_probs.npy")), atol=1e-5)

  def assertOneLine(self, code, err, *expected):
    self.assertEqual(code, errors.EXIT_USER_ERROR, err)
    self.assertLen(err.strip().splitlines(), 1)
    for text in expected:
      self.assertIn(text, err)

  @parameterized.parameters(*artifact_lib.FORMATS)
  def test_a_cut_short_artifact_is_named(self, fmt):
    path = self.copy(fmt)
    with open(path, "rb") as f:
      data = f.read()[:1000]
    with open(path, "wb") as f:
      f.write(data)
    self.assertOneLine(*_predict(tempfile.mkdtemp(), model_file=path), path,
                       "is not the artifact that", "SHA-256 differs")
    side = artifact_lib.sidecar_path(path)
    with open(side) as f:
      record = json.load(f)
    record["sha256"] = artifact_lib.sha256(data)  # a sidecar written for the cut file
    with open(side, "w") as f:
      json.dump(record, f)
    readable = "ONNX model" if fmt == "onnx" else "StableHLO artifact"
    self.assertOneLine(*_predict(tempfile.mkdtemp(), model_file=path),
                       f"error (artifact): {path}: not a readable {readable}")

  def test_an_onnx_file_of_another_model_is_named(self):
    path = self.copy("onnx")
    model = models.create("unet", num_classes=6, **TINY_KWARGS["unet"])
    variables = testing.host_init(model, jnp.zeros((1, 32, 32, 3)))
    with open(path, "wb") as f:
      f.write(export.export_model(model, variables, "unet", mean=MEAN, std=STD, fmt="onnx",
                                  size=(32, 32)))
    self.assertOneLine(*_predict(tempfile.mkdtemp(), model_file=path), path,
                       "SHA-256 differs")

  def test_wrong_band_count_and_size_are_named(self):
    onnx, stablehlo = (artifact_lib.Artifact(self.path(f)) for f in ("onnx", "stablehlo"))
    for artifact in (onnx, stablehlo):
      with self.assertRaisesRegex(errors.ArtifactError,
                                  f"{artifact.path}: takes NHWC windows of 3 bands"):
        artifact(_pixels((1, 32, 32, 4)))
    with self.assertRaisesRegex(errors.ArtifactError, f"{onnx.path}: takes 32x32 windows only"):
      onnx(_pixels((1, 40, 32, 3)))
    with self.assertRaisesRegex(errors.ArtifactError, f"{stablehlo.path}: windows must be at "
                                "least 32 pixels"):
      stablehlo(_pixels((1, 31, 40, 3)))

  def test_missing_sidecar_class_outputs_and_two_models_are_refused(self):
    path = self.copy("stablehlo")
    side = artifact_lib.sidecar_path(path)
    with open(side) as f:
      record = json.load(f)
    record["outputs"] = "classes"
    with open(side, "w") as f:
      json.dump(record, f)
    self.assertOneLine(*_predict(tempfile.mkdtemp(), model_file=path),
                       f"{path} outputs class indices")
    os.remove(side)
    self.assertOneLine(*_predict(tempfile.mkdtemp(), model_file=path), f"{side} does not exist")
    self.assertOneLine(*_predict(tempfile.mkdtemp(), workdir=self.workdir, model_file=path),
                       "give exactly one of --workdir")

  def test_command(self):
    output = os.path.join(tempfile.mkdtemp(), "sub", "model.stablehlo")
    with self.assertRaisesRegex(errors.FlagError, "--dtype=bfloat16: onnx artifacts compute in "
                                "float32"):
      export.export_workdir(self.workdir, output, fmt="onnx", dtype="bfloat16")
    result = subprocess.run(
        [sys.executable, "-m", "seg_jax.export", f"--workdir={self.workdir}",
         f"--output={output}", "--format=stablehlo", "--outputs=probs", "--size=32,40"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    self.assertEqual(result.returncode, errors.EXIT_OK, result.stderr)
    self.assertIn(f"wrote {output}", result.stdout)
    self.assertEqual(artifact_lib.Artifact(output).sidecar.input_size, (32, 40))


if __name__ == "__main__":
  absltest.main()
