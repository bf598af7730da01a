"""Tests of `seg_jax.models.summary`: the command and the FLOP count of a function."""

import json
import os
import subprocess
import sys
import tempfile

from absl.testing import absltest
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from seg_jax import errors
from seg_jax import workdir as workdir_lib
from seg_jax import writers
from seg_jax.data import palettes
from seg_jax.models import summary
from tests.train_testing import LOOP_MODEL, tiny_config

REPO = os.path.join(os.path.dirname(__file__), "..", "..")
# The proposal at its smallest widths, so the forward pass compiles in a moment.
TINY_ASYM_UNET = {"backbone_kwargs": {"widths": [4, 8], "blocks": 1, "se_reduction": 2},
                  "neck_kwargs": {"features": 4}, "decoder_kwargs": {"widths": [4]}}


def _summary(*args):
  """`python -m seg_jax.models.summary args` from the repository root."""
  env = dict(os.environ, PYTHONPATH=os.path.abspath(REPO), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "seg_jax.models.summary", *args],
                        capture_output=True, text=True, env=env, timeout=120, check=False)


class SummaryCommandTest(absltest.TestCase):

  def test_without_model_flag_summarises_the_proposal(self):
    run = _summary("--height=32", "--width=32", f"--kwargs={json.dumps(TINY_ASYM_UNET)}")
    self.assertEqual(run.returncode, 0, run.stderr[-2000:])
    lines = run.stdout.splitlines()
    self.assertEqual(lines[0], "asym_unet at 1x32x32x3")
    self.assertIn(["total", "2,054"], [line.split() for line in lines])

  def test_config_names_the_model_and_input_size(self):
    config = os.path.join(os.path.abspath(REPO), "tests", "train_testing.py")
    run = _summary(f"--config={config}", "--config.data.image_size=(32, 48)")
    self.assertEqual(run.returncode, 0, run.stderr[-2000:])
    self.assertEqual(run.stdout.splitlines()[0], f"{LOOP_MODEL} at 1x32x48x3")

  def test_workdir_names_the_runs_model_classes_bands_and_size(self):
    # A run folder's config.json and dataset.json (4 classes, 4 bands at 40x56), no --config.
    run_dir = workdir_lib.RunDir(tempfile.mkdtemp())
    config = tiny_config("asym_unet", **{"model.kwargs": ml_collections.ConfigDict(TINY_ASYM_UNET)})
    run_dir.save_config(config)
    palette = palettes.Palette(names=("a", "b", "c", "d"), colors=((1, 1, 1), (2, 2, 2),
                                                                    (3, 3, 3), (4, 4, 4)),
                               ignore_color=(0, 0, 0))
    info = workdir_lib.DataInfo(palette, (1.0, 2.0, 3.0, 4.0), (4.0, 5.0, 6.0, 7.0), (40, 56),
                                bands=(1, 2, 3, 4))
    writers.write_json(run_dir.file(workdir_lib.DATA_INFO_FILE), info.to_dict())
    run = _summary(f"--workdir={run_dir.path}")
    self.assertEqual(run.returncode, 0, run.stderr[-2000:])
    lines = run.stdout.splitlines()
    self.assertEqual(lines[0], "asym_unet at 1x40x56x4")
    # The proposal's 2,054 parameters with 6 classes and 3 bands, less the head's 2 x (4 + 1) of
    # 2 classes, plus the first 3x3 convolution's kernels (4 features) of the fourth band.
    self.assertIn(["total", f"{2_054 - 2 * 5 + 9 * 4:,}"], [line.split() for line in lines])

  def test_bands_flag_sets_the_input_channels(self):
    run = _summary("--height=32", "--width=32", "--bands=4",
                   f"--kwargs={json.dumps(TINY_ASYM_UNET)}")
    self.assertEqual(run.returncode, 0, run.stderr[-2000:])
    lines = run.stdout.splitlines()
    self.assertEqual(lines[0], "asym_unet at 1x32x32x4")
    self.assertIn(["total", f"{2_054 + 9 * 4:,}"], [line.split() for line in lines])

  def test_config_and_model_flag_is_one_line_error(self):
    config = os.path.join(os.path.abspath(REPO), "tests", "train_testing.py")
    run = _summary(f"--config={config}", "--model=unet")
    self.assertEqual(run.returncode, errors.EXIT_USER_ERROR, run.stderr[-2000:])
    self.assertStartsWith(run.stderr, "error (flags): --model and --config")


class MatmulFlopsTest(absltest.TestCase):

  def test_convolution_and_its_kernel_gradient(self):
    x = jnp.ones((2, 8, 8, 3))
    conv = nn.Conv(4, (3, 3))
    variables = jax.eval_shape(conv.init, jax.random.key(0), x)
    forward = 2 * (2 * 8 * 8 * 4) * (3 * 3 * 3)  # 2 x outputs x taps per output
    self.assertEqual(summary.matmul_flops(lambda v: conv.apply(v, x), variables), forward)
    # The kernel gradient is one more convolution of the same size (no gradient of x).
    self.assertEqual(summary.matmul_flops(jax.grad(lambda v: conv.apply(v, x).sum()),
                                          variables), 2 * forward)

  def test_grouped_convolution_dense_layer_and_scan(self):
    x = jnp.ones((1, 4, 4, 8))
    grouped = nn.Conv(8, (3, 3), feature_group_count=8)  # depthwise
    v = jax.eval_shape(grouped.init, jax.random.key(0), x)
    self.assertEqual(summary.matmul_flops(lambda v: grouped.apply(v, x), v),
                     2 * (4 * 4 * 8) * 9)
    a, b = jnp.ones((5, 6)), jnp.ones((6, 7))
    self.assertEqual(summary.matmul_flops(jnp.dot, a, b), 2 * 5 * 7 * 6)
    # A jitted function with its own compiler options (seg_jax's train and eval steps) cannot
    # be traced inside another jit; it is counted from its own trace.
    jitted = jax.jit(jnp.dot, compiler_options={"xla_cpu_experimental_ynn_fusion_type": ""})
    self.assertEqual(summary.matmul_flops(jitted, a, b), 2 * 5 * 7 * 6)

    def body(carry, _):
      return carry @ jnp.ones((6, 6)), None
    self.assertEqual(summary.matmul_flops(lambda a: jax.lax.scan(body, a, None, length=3), a),
                     3 * 2 * 5 * 6 * 6)


if __name__ == "__main__":
  absltest.main()
