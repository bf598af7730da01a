"""Smoke tests of the benchmarks: each runs at toy size (batch 2, 32 px, one or two steps), so a
benchmark that no longer runs on the public API fails the suite. No figure is checked, only that
each prints its lines."""

import contextlib
import functools
import importlib
import io
import json
import os
import pkgutil
import shutil
import subprocess
import sys
import tempfile

from absl import flags
from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import benchmarks
from benchmarks import common
from benchmarks import compile_bench
from benchmarks import cpu_profile
from benchmarks import cpu_vs_torch
from benchmarks import data_bench
from benchmarks import export_bench
from benchmarks import gpu_bench
from benchmarks import launch_bench
from benchmarks import locally_connected_bench
from benchmarks import loop_bench
from benchmarks import models_bench
from benchmarks import predict_bench
from benchmarks import predict_raster
from benchmarks import replicas_bench
from benchmarks import seg_jax_worker
from benchmarks import ynnpack_bench
from configs import dubai
from seg_jax import compilation
from seg_jax import models
from tests.data import fixtures
from tests.train_testing import REPO, TINY_KWARGS, tiny_config

# Libraries of the optional extras (setup.py) that a benchmark may compare against.
OPTIONAL_LIBRARIES = ("torch", "torchvision", "keras")
try:
  import torch
  from benchmarks import torch_models
except ModuleNotFoundError as e:  # PyTorch (setup.py's bench extra) is not installed
  if e.name != "torch":
    raise
  torch = torch_models = None
NEEDS_TORCH = "needs PyTorch (setup.py's bench extra)"


class BenchmarkTest(absltest.TestCase):

  def printed(self, fn, *args, **kwargs) -> str:
    """What `fn(*args, **kwargs)` prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      fn(*args, **kwargs)
    return out.getvalue()

  def keep_compilation_cache(self):
    """Restores the process's persistent compilation cache folder after the test."""
    self.addCleanup(compilation.use_persistent_cache, jax.config.jax_compilation_cache_dir or "")


class ImportTest(BenchmarkTest):

  def test_importing_a_benchmark_defines_no_flag(self):
    for module in pkgutil.iter_modules(benchmarks.__path__):
      try:
        importlib.import_module(f"benchmarks.{module.name}")
      except ModuleNotFoundError as e:  # a benchmark beside PyTorch or Keras, absent here
        if e.name not in OPTIONAL_LIBRARIES:
          raise
    self.assertEqual([m for m in flags.FLAGS.flags_by_module_dict()
                      if m.startswith("benchmarks")], [])

  def test_a_benchmark_is_a_command_run_from_the_repository(self):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.locally_connected_bench", "--batch=1", "--size=4",
         "--channels=1", "--features=1", "--calls=1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
    self.assertIn("strided slices", proc.stdout)


class LoopBenchTest(BenchmarkTest):

  def test_bare_step_and_loop(self):
    text = self.printed(loop_bench.measure, tiny_config(), "tiny", rounds=1, steps=2)
    self.assertIn("data start-up:", text)
    self.assertIn("round 1: (a) bare step", text)
    self.assertRegex(text, r"per loop block: .* = steps .* \+ evaluate .* \+ checkpoint save .*"
                           r" \+ the rest")

  def test_folder_start_up(self):
    root = tempfile.mkdtemp()
    fixtures.make_tile_layout(root)
    config = dubai.get_config()
    config.data.root, config.data.image_size = root, (32, 32)
    self.assertRegex(self.printed(loop_bench.folder_startup, config),
                     r"data start-up: .* for 6 image/mask pairs .* decode .* resize to \(32, 32\)")


class GpuBenchTest(BenchmarkTest):

  @pytest.mark.slow  # compiles the toy proposal's bf16 step cold, cached, and in its loop
  def test_toy_run_and_report(self):
    self.keep_compilation_cache()
    out = tempfile.mkdtemp()
    text = self.printed(gpu_bench.run, out, ["asym_unet"], toy=True, bare_steps=1)
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    self.assertEqual([r["model"] for r in records], ["asym_unet", "asym_unet_loop"])
    table = self.printed(gpu_bench.report, out)
    self.assertIn("| asym_unet | 2 x 32x64 |", table)
    self.assertIn("asym_unet loop vs bare step (4 steps per block", table)


class ModelsBenchTest(BenchmarkTest):

  def test_a_model_and_the_unet_comparison(self):
    batch = models_bench.Batch(1, 32, 32, 6)
    row = models_bench.bench_model("unet", batch, 1, TINY_KWARGS["unet"])
    self.assertIn("| unet |", self.printed(models_bench.print_table, [row]))
    path = os.path.join(tempfile.mkdtemp(), "bench.json")
    self.printed(models_bench.run, [], batch, 1, compare_base_width=2, compare_steps=1,
                 json_path=path)
    with open(path) as f:
      self.assertGreater(json.load(f)["unet_vs_flax"]["params"], 0)


class DataBenchTest(BenchmarkTest):

  def test_throughput(self):
    text = self.printed(data_bench.throughput, (32, 32), batch=2, batches=1, generated=2)
    self.assertIn("pipeline, keep_on_device", text)
    self.assertIn("augment_batch:", text)

  def test_colour_baseline(self):
    text = self.printed(data_bench.colour_baseline, (32, 32), 2, 1, fit_steps=2)
    self.assertIn("colour histogram, 64^3 bins: val mIoU", text)


class LaunchBenchTest(BenchmarkTest):

  @pytest.mark.slow  # a whole `seg_jax.main` process with empty caches (~15 s on 2 cores)
  def test_one_launch(self):
    text = self.printed(launch_bench.run, os.path.join(REPO, "tests", "train_testing.py"),
                        launches=1, steps=1)
    self.assertRegex(text, r"launch 1 \(empty caches\): first step after .* s, exit after")


class LocallyConnectedBenchTest(BenchmarkTest):

  def test_both_extractions(self):
    text = self.printed(locally_connected_bench.run, 2, 4, 2, 2, 1)
    self.assertIn("strided slices", text)
    self.assertIn("conv_general_dilated_patches", text)


class PredictBenchTest(BenchmarkTest):

  def test_slide_prediction(self):
    model = models.create("asym_unet", num_classes=predict_bench.NUM_CLASSES,
                          **TINY_KWARGS["asym_unet"])
    text = self.printed(predict_bench.run, model, predict_bench.initialised(model, (32, 32)),
                        (40, 72), (32, 32), 0.25, "uniform", 2, ["none"], 1)
    self.assertRegex(text, r"tta=none +\d+ windows x 1 passes: .* MP/s")


class PredictRasterTest(BenchmarkTest):

  def test_a_toy_scene(self):
    scratch = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, scratch)
    text = self.printed(predict_raster.run, 128, 2, True, False, scratch, toy=True)
    self.assertRegex(text, r"scene 128x128x4 uint8 .*window 32x32")
    self.assertRegex(text, r"predict: [\d.]+ s, [\d.]+ MP/s")
    self.assertRegex(text, r"peak RSS \(VmHWM\): \d+ MiB after writing the scene, \d+ MiB after")
    self.assertIn("scene_classes.tif", text)


class ExportBenchTest(BenchmarkTest):

  def test_jax_stablehlo_and_onnxruntime_on_a_toy_model(self):
    text = self.printed(export_bench.run, "unet", TINY_KWARGS["unet"], (32, 32), 1)
    for runtime in ("JAX jit", "StableHLO deserialized", "onnxruntime"):
      self.assertRegex(text, rf"{runtime}.* MiB .* ms/image .*x JAX")


class ReplicasBenchTest(BenchmarkTest):

  def test_one_and_two_replicas(self):
    text = self.printed(replicas_bench.run, tiny_config(), [1, 2], ["vmap"], 1)
    self.assertIn("S=1   -      first step", text)
    self.assertRegex(text, r"S=2   vmap   first step .* images/s  \(\d+\.\d\dx S=1\)")


class CpuVsTorchTest(BenchmarkTest):

  def test_the_seg_jax_side_of_a_toy_case(self):
    text = self.printed(cpu_vs_torch.run, ["unet_naip"], [], rounds=1, steps=1, warmup=1,
                        toy=True)
    self.assertIn("unet_naip: configs/dubai.py:unet, batch 2 x 32x64 x 4 bands", text)
    self.assertRegex(text, r"\| seg_jax \| [\d.]+ \| [\d.]+ \| 1\.00 \| 1\.00 \|")

  @absltest.skipIf(torch is None, NEEDS_TORCH)
  @pytest.mark.slow  # two worker processes, seg_jax's and PyTorch's (~25 s at a load of 5)
  def test_a_toy_case_against_pytorch_eager(self):
    text = self.printed(cpu_vs_torch.run, ["unet_dubai"], ["eager"], rounds=1, steps=1, warmup=1,
                        toy=True)
    self.assertIn("parameters: seg_jax 1,774, torch eager 1,774 (equal)", text)
    self.assertRegex(text, r"\| torch eager \| [\d.]+ \| [\d.]+ \| [\d.]+ \|")


class CpuProfileTest(BenchmarkTest):
  # The whole command at toy size costs about 3.5 s of CPU; what can break unseen is how it
  # sorts XLA's instructions, tested here on a small program.

  def test_kinds_of_the_convolutions_of_a_gradient(self):
    dims = ("NHWC", "HWIO", "NHWC")

    def loss(kernel, up_kernel, x):
      y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=dims)
      y = jax.lax.conv_general_dilated(y, up_kernel, (1, 1), [(1, 1), (1, 1)],
                                       lhs_dilation=(2, 2), dimension_numbers=dims)
      return jnp.sum(y ** 2)

    args = (jnp.ones((3, 3, 4, 4)), jnp.ones((2, 2, 4, 4)), jnp.ones((2, 12, 12, 4)))
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*args).compile().as_text()
    kinds = set(cpu_profile.hlo_kind(hlo).values())
    self.assertContainsSubset({"conv forward", "conv input gradient", "conv kernel gradient",
                               "transposed conv forward", "transposed conv gradients"}, kinds)
    self.assertLessEqual(kinds, set(cpu_profile.KINDS))
    self.assertEqual(cpu_profile.torch_kind(
        "aten::convolution_backward", [[8, 16, 144, 256], [8, 32, 72, 128], [32, 16, 2, 2]]),
        "transposed conv gradients")
    self.assertEqual(cpu_profile.torch_kind("aten::mkldnn_convolution",
                                            [[8, 16, 144, 256], [16, 16, 3, 3]]), "conv forward")


  def test_a_step_whose_convolutions_are_untraced_is_flagged(self):
    # XLA:CPU does not trace the convolutions it runs on Eigen's pool (YNNPACK fusions off).
    ops = {("conv forward", "convolution.1"): 0.002, ("copies and transposes", "copy.1"): 0.1}
    self.assertTrue(cpu_profile.untraced_convolutions(ops, wall=0.8))
    self.assertFalse(cpu_profile.untraced_convolutions(
        {**ops, ("conv kernel gradient", "convolution.2"): 0.3}, wall=0.8))
    case = {**cpu_vs_torch.CASES["unet_dubai"], "toy": True}
    self.assertFalse(seg_jax_worker.case_config(case).train.xla_cpu_ynnpack)
    self.assertTrue(seg_jax_worker.case_config({**case, "ynnpack": True}).train.xla_cpu_ynnpack)


@absltest.skipIf(torch is None, NEEDS_TORCH)
class TorchTwinsTest(BenchmarkTest):

  def test_parameter_counts_equal_seg_jax_ones(self):
    dubai_counts = {"unet": 482_822, "asym_unet": 680_478}  # 3 bands
    for arch, expected in dubai_counts.items():
      kwargs = common.load_config(f"configs/dubai.py:{arch}").model.kwargs.to_dict()
      model = models.create(arch, num_classes=6, **kwargs)
      for bands in (3, 4):
        with self.subTest(arch=arch, bands=bands):
          shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                                  jnp.zeros((1, 144, 256, bands)))
          twin = torch_models.build(models.settings(arch, **kwargs), bands, 6)
          self.assertEqual(torch_models.count_params(twin), models.count_params(shapes))
          if bands == 3:
            self.assertEqual(models.count_params(shapes), expected)

  def test_the_twins_compute_what_seg_jax_computes(self):
    no_dropout = {"neck_kwargs": {**common.TOY_MODEL_KWARGS["asym_unet"]["neck_kwargs"],
                                  "dropout_rate": 0.0}}
    x = np.random.default_rng(0).normal(size=(2, 32, 64, 4)).astype(np.float32)
    for arch, extra in (("unet", {}), ("asym_unet", no_dropout)):
      kwargs = {**common.TOY_MODEL_KWARGS[arch], **extra}
      model = models.create(arch, num_classes=6, **kwargs)
      variables = model.init(jax.random.key(0), x, train=False)
      twin = torch_models.build(models.settings(arch, **kwargs), 4, 6)
      torch_models.load_seg_jax_variables(twin, variables)
      for train in (False, True):  # stored statistics, then the batch's
        with self.subTest(arch=arch, train=train):
          ours = model.apply(variables, x, train=train, mutable=["batch_stats"])[0]
          theirs = twin.train(train)(torch.from_numpy(x).permute(0, 3, 1, 2))
          np.testing.assert_allclose(theirs.detach().permute(0, 2, 3, 1).numpy(), ours,
                                     rtol=1e-4, atol=1e-4)


class YnnpackBenchTest(BenchmarkTest):

  def test_a_toy_convolution_and_train_step_with_and_without(self):
    text = self.printed(ynnpack_bench.run, [4], 1, 8, "configs/naip.py", ["unet"], calls=1,
                        rounds=1, toy=True)
    self.assertRegex(text, r"\| 4 \| \d+ \(\d+\) \| \d+ \(\d+\) \|")
    self.assertRegex(text, r"\| unet \| [\d.]+ \| [\d.]+ \| [\d.]+x \|")


class CompileBenchTest(BenchmarkTest):

  def test_one_step_in_a_fresh_process(self):
    text = self.printed(compile_bench.run, ["configs/default.py"], ["eval"], toy=True)
    self.assertRegex(text, r"\| configs/default.py \| eval \| 2 x 32x64 \| [\d.]+ \| [\d.]+ \| "
                           r"[\d.]+ \| [\d.]+ \|")
    self.assertIn("load average at the end", text)


if __name__ == "__main__":
  absltest.main()
