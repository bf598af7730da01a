"""torchvision layouts: round trips everywhere, forward parity where torch is installed.

The parity tests build each torchvision model with random weights and random BatchNorm
statistics, import its state dict and compare eval-mode logits (and backbone stages) on one
random batch to 1e-4 relative. torch is an optional extra (``pip install -e .[torch]``); without
it those tests are skipped.
"""

import os
import tempfile
import unittest

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np
from safetensors.numpy import save_file

from seg_jax import models
from seg_jax import weights
from seg_jax.weights import torch_layout
from tests.models.testing import random_variables

try:
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top
except ImportError:
  torch = None

needs_torch = unittest.skipIf(torch is None, "needs torch and torchvision (pip install .[torch])")

# Small seg_jax variants of each supported model, for round trips (names map the same way).
TINY = {
    "resnet18": dict(width=4),
    "resnet34": dict(width=4),
    "resnet50": dict(width=4),
    "resnet101": dict(width=4, stage_sizes=(1, 1, 2, 1)),
    "vgg16": dict(widths=(4, 4, 8, 8, 8), hidden=16),
    "googlenet": dict(width_divisor=16, aux_logits=True),
    "fcn_resnet50": dict(backbone_kwargs=dict(width=4), head_kwargs=dict(features=8)),
    "deeplabv3_resnet50": dict(backbone_kwargs=dict(width=4), neck_kwargs=dict(features=8),
                               head_kwargs=dict(features=8)),
}


def tiny_variables(name, num_classes=5):
  model = models.create(name, num_classes=num_classes, **TINY[name])
  return random_variables(model, np.zeros((1, 64, 64, 3), np.float32))


def assert_trees_equal(a, b):
  np.testing.assert_equal(jax.tree.map(np.asarray, a), jax.tree.map(np.asarray, b))


class RoundTripTest(parameterized.TestCase):

  def test_every_supported_model_has_a_tiny_variant(self):
    self.assertCountEqual(torch_layout.SUPPORTED, TINY)

  @parameterized.parameters(*sorted(TINY))
  def test_seg_jax_to_torch_to_seg_jax_is_the_identity(self, name):
    variables = tiny_variables(name)
    state = weights.to_torch(name, variables)
    self.assertTrue(all(isinstance(v, np.ndarray) for v in state.values()))
    assert_trees_equal(weights.from_torch(name, state, **TINY[name]), variables)

  def test_safetensors_file(self):
    variables = tiny_variables("resnet18")
    with tempfile.TemporaryDirectory() as folder:
      path = os.path.join(folder, "resnet18.safetensors")
      save_file(weights.to_torch("resnet18", variables), path)
      assert_trees_equal(weights.from_torch("resnet18", path, **TINY["resnet18"]), variables)

  def test_names_and_layouts(self):
    self.assertEqual(torch_layout.torch_name("resnet50", "params/layer2/block0/downsample/norm/bn/scale"),
                     "layer2.0.downsample.1.weight")
    self.assertEqual(torch_layout.torch_name("googlenet", "params/inception4a/branch4/conv/kernel"),
                     "inception4a.branch4.1.conv.weight")
    self.assertEqual(torch_layout.torch_name("deeplabv3_resnet50",
                                             "batch_stats/neck/atrous2/norm/bn/var"),
                     "classifier.0.convs.3.1.running_var")
    state = weights.to_torch("resnet18", tiny_variables("resnet18"))
    self.assertEqual(state["conv1.weight"].shape, (4, 3, 7, 7))  # OIHW
    self.assertEqual(state["fc.weight"].shape, (5, 32))  # (out, in)
    self.assertEqual(state["bn1.num_batches_tracked"].dtype, np.int64)

  def test_vgg_fc6_reads_torch_channel_major_flattening(self):
    variables = tiny_variables("vgg16")
    kernel = np.asarray(variables["params"]["fc6"]["kernel"])  # (7 * 7 * 8, 16), (h, w, c) rows
    torch_weight = weights.to_torch("vgg16", variables)["classifier.0.weight"]
    h, w, c = 2, 5, 3
    np.testing.assert_array_equal(torch_weight[:, c * 49 + h * 7 + w], kernel[(h * 7 + w) * 8 + c])

  def test_mismatches_are_listed(self):
    state = weights.to_torch("resnet18", tiny_variables("resnet18"))
    del state["layer1.0.conv1.weight"]
    state["layer5.0.conv1.weight"] = np.zeros((1,))
    state["layer2.0.bn1.bias"] = np.zeros((3,))
    with self.assertRaisesRegex(ValueError, r"missing \['layer1.0.conv1.weight'\], unexpected "
                                r"\['layer5.0.conv1.weight'\], mis-shaped \['layer2.0.bn1.bias"):
      weights.from_torch("resnet18", state, **TINY["resnet18"])

  def test_other_architecture_and_bad_sources(self):
    state = weights.to_torch("resnet18", tiny_variables("resnet18"))
    with self.assertRaisesRegex(ValueError, "missing .*layer1.0.conv3.weight"):
      weights.from_torch("resnet50", state, width=4)
    with self.assertRaisesRegex(ValueError, "known for"):
      weights.from_torch("unet", state)
    with self.assertRaisesRegex(ValueError, ".pth, .pt or .safetensors"):
      weights.from_torch("resnet18", "weights.bin")

  def test_skip_drops_named_prefixes_only(self):
    variables = tiny_variables("fcn_resnet50")
    state = weights.to_torch("fcn_resnet50", variables)
    state["aux_classifier.0.weight"] = np.zeros((3, 3, 3, 3))
    with self.assertRaisesRegex(ValueError, "unexpected \\['aux_classifier.0.weight'\\]"):
      weights.from_torch("fcn_resnet50", state, **TINY["fcn_resnet50"])
    imported = weights.from_torch("fcn_resnet50", state, skip=("aux_classifier.",),
                                  **TINY["fcn_resnet50"])
    assert_trees_equal(imported, variables)


def randomise_batch_norm(module, seed=0):
  """Random affine parameters and running statistics for every BatchNorm of ``module``."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for layer in module.modules():
      if isinstance(layer, torch.nn.BatchNorm2d):
        n = layer.num_features
        layer.weight.copy_(1 + 0.2 * torch.randn(n, generator=generator))
        layer.bias.copy_(0.2 * torch.randn(n, generator=generator))
        layer.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
        layer.running_var.copy_(0.5 + torch.rand(n, generator=generator))
  return module.eval()


def assert_close(ours, reference, name):
  reference = np.asarray(reference)
  np.testing.assert_allclose(np.asarray(ours), reference, rtol=1e-4,
                             atol=1e-4 * np.abs(reference).max(), err_msg=name)


def torch_nhwc(tensor):
  return tensor.detach().numpy().transpose(0, 2, 3, 1)


@needs_torch
class ForwardParityTest(parameterized.TestCase):
  """torchvision forward == seg_jax forward on imported weights, eval mode, float32."""

  def run_both(self, name, reference, size, num_classes, stage_modules=()):
    """(input, torch output, seg_jax logits, captured stage outputs) on one random batch."""
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(2, 3, size, size)).astype(
        np.float32))
    with torch.no_grad():
      expected = reference(x)
    variables = weights.from_torch(name, reference.state_dict())
    model = models.create(name, num_classes=num_classes)
    logits, state = jax.jit(lambda v, x: model.apply(
        v, x, train=False, capture_intermediates=lambda m, _: m.name in stage_modules))(
            variables, x.numpy().transpose(0, 2, 3, 1))
    return x, expected, logits, state.get("intermediates", {})

  @parameterized.parameters("resnet18", "resnet34", "resnet50", "resnet101")
  def test_resnet(self, name):
    reference = randomise_batch_norm(getattr(torchvision.models, name)(num_classes=10))
    x, expected, logits, intermediates = self.run_both(name, reference, 64, 10,
                                                       ("layer1", "layer4"))
    assert_close(logits, expected.numpy(), name)
    with torch.no_grad():
      stem = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
      layer1 = reference.layer1(stem)
      layer4 = reference.layer4(reference.layer3(reference.layer2(layer1)))
    assert_close(intermediates["layer1"]["__call__"][0], torch_nhwc(layer1), "layer1")
    assert_close(intermediates["layer4"]["__call__"][0], torch_nhwc(layer4), "layer4")

  def test_pth_file(self):
    reference = randomise_batch_norm(torchvision.models.resnet18(num_classes=10))
    with tempfile.TemporaryDirectory() as folder:
      path = os.path.join(folder, "resnet18.pth")
      torch.save(reference.state_dict(), path)
      assert_trees_equal(weights.from_torch("resnet18", path),
                         weights.from_torch("resnet18", reference.state_dict()))

  def test_vgg16(self):
    reference = torchvision.models.vgg16(num_classes=10).eval()
    _, expected, logits, _ = self.run_both("vgg16", reference, 32, 10)
    assert_close(logits, expected.numpy(), "vgg16")

  def test_googlenet(self):
    reference = randomise_batch_norm(torchvision.models.googlenet(
        num_classes=10, aux_logits=False, init_weights=True))
    _, expected, logits, _ = self.run_both("googlenet", reference, 64, 10)
    assert_close(logits, expected.numpy(), "googlenet")

  @parameterized.parameters("fcn_resnet50", "deeplabv3_resnet50")
  def test_segmentation(self, name):
    make = getattr(torchvision.models.segmentation, name)
    reference = randomise_batch_norm(make(weights=None, weights_backbone=None, num_classes=5,
                                          aux_loss=False))
    x, expected, logits, intermediates = self.run_both(name, reference, 64, 5, ("backbone",))
    assert_close(logits, torch_nhwc(expected["out"]), name)
    with torch.no_grad():
      layer4 = reference.backbone(x)["out"]
    assert_close(intermediates["backbone"]["__call__"][0]["layer4"], torch_nhwc(layer4), "layer4")


if __name__ == "__main__":
  absltest.main()
