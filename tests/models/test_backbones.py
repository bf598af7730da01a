"""Tests of the ResNet, VGG, GoogLeNet, Xception and aligned Xception backbones."""

import functools
import re

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from seg_jax import models
from seg_jax.models import backbones
from seg_jax.models.backbones import googlenet
from tests.models.testing import (
    DROPOUT_KEY, KEY, check_train_and_eval, host_init, random_variables)



def param_count(module, height=64, width=64):
  """Size of the "params" collection, from shapes only (nothing is allocated)."""
  variables = jax.eval_shape(
      lambda: module.init(KEY, jnp.zeros((1, height, width, 3)), train=False))
  return models.count_params(variables)


def feature_shapes(module, height, width):
  """``{stage: shape}`` of a backbone's features, from shapes only."""
  out = jax.eval_shape(lambda: module.init_with_output(
      KEY, jnp.zeros((2, height, width, 3)), train=False)[0])
  return {name: tuple(value.shape) for name, value in out.items()}


def conv_dilations(module, height=33, width=47):
  """How many convolutions of the traced forward pass use each dilation > 1."""
  x = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
  variables = jax.eval_shape(lambda: module.init(KEY, jnp.zeros(x.shape), train=False))
  text = str(jax.make_jaxpr(functools.partial(module.apply, train=False))(variables, x))
  counts = {}
  for rate in re.findall(r"rhs_dilation=\((\d+), \1\)", text):
    if int(rate) > 1:
      counts[int(rate)] = counts.get(int(rate), 0) + 1
  return counts


def ceil_div(a, b):
  return -(-a // b)


# (name, tiny variant, compute dtype). bfloat16 compiles slower on CPU, so the two deepest graphs
# run in float32 to keep the suite fast; plain VGG-16 (no BatchNorm) runs in the registry tests.
TINY = (
    ("resnet18", functools.partial(backbones.ResNet18, width=8), jnp.bfloat16),
    ("resnet50", functools.partial(backbones.ResNet, stage_sizes=(1, 1, 2, 1), width=4),
     jnp.bfloat16),
    ("vgg16_bn", functools.partial(backbones.VGG16, widths=(4, 8, 8, 16, 16), hidden=16,
                                   batch_norm=True), jnp.bfloat16),
    ("googlenet", functools.partial(backbones.GoogLeNet, width_divisor=16), jnp.float32),
    ("xception", functools.partial(backbones.Xception, width_divisor=16, middle_repeats=1),
     jnp.bfloat16),
    ("aligned_xception", functools.partial(backbones.AlignedXception, width_divisor=16,
                                           middle_repeats=1, output_stride=8), jnp.float32),
)


class ParamCountTest(parameterized.TestCase):
  """Counts at 1000 classes equal the reference implementations (torchvision, Keras)."""

  @parameterized.named_parameters(
      ("resnet18", backbones.ResNet18, 11_689_512),
      ("resnet34", backbones.ResNet34, 21_797_672),
      ("resnet50", backbones.ResNet50, 25_557_032),
      ("resnet101", backbones.ResNet101, 44_549_160),
      ("vgg16", backbones.VGG16, 138_357_544),
      ("vgg16_bn", functools.partial(backbones.VGG16, batch_norm=True), 138_365_992),
      ("googlenet", backbones.GoogLeNet, 6_624_904),
      ("googlenet_aux", functools.partial(backbones.GoogLeNet, aux_logits=True), 13_004_888),
      ("xception", backbones.Xception, 22_855_952),
      # No reference model; pinned so that an accidental change shows.
      ("aligned_xception", backbones.AlignedXception, 39_916_312),
  )
  def test_count(self, make, expected):
    self.assertEqual(param_count(make(num_classes=1000)), expected)

  def test_dilation_does_not_change_count(self):
    dilated = backbones.ResNet50(output_stride=8)
    self.assertEqual(param_count(dilated), 25_557_032)
    for output_stride in (8, 32):
      self.assertEqual(param_count(backbones.AlignedXception(output_stride=output_stride)),
                       39_916_312)

  def test_min_input_size_attribute(self):
    for make in (backbones.ResNet50, backbones.VGG16, backbones.GoogLeNet, backbones.Xception,
                 backbones.AlignedXception):
      self.assertEqual(make().min_input_size, 32)


class ForwardTest(parameterized.TestCase):
  """Tiny variants run at an odd size in train and eval mode; logits stay float32."""

  @parameterized.named_parameters(*TINY)
  def test_train_and_eval(self, make, dtype):
    model = make(num_classes=5, dtype=dtype)
    x = jax.random.normal(jax.random.key(2), (2, 33, 47, 3))
    variables = host_init(model, x)
    self.assertTrue(all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables)))

    self.assertNotEmpty(variables["batch_stats"])
    check_train_and_eval(self, model, variables, x, (2, 5))

  def test_real_init_has_the_host_init_structure(self):
    model = backbones.VGG16(widths=(4, 8, 8, 16, 16), hidden=16, batch_norm=True, num_classes=5)
    x = jnp.zeros((2, 32, 32, 3))
    variables = jax.jit(lambda x: model.init(KEY, x, train=False))(x)
    shapes = jax.tree.map(lambda a: (a.shape, a.dtype), variables)
    self.assertEqual(shapes, jax.tree.map(lambda a: (a.shape, a.dtype), host_init(model, x)))
    np.testing.assert_array_equal(variables["batch_stats"]["bn1_1"]["bn"]["var"], np.ones(4))
    self.assertGreater(float(jnp.std(variables["params"]["conv1_1"]["kernel"])), 0.0)

  def test_googlenet_aux_heads_only_in_train(self):
    # Shapes only: a full run costs as much compile time as the rest of this file.
    model = backbones.GoogLeNet(width_divisor=16, aux_logits=True, num_classes=3)
    shapes = jax.eval_shape(lambda: model.init_with_output(
        {"params": KEY, "dropout": DROPOUT_KEY}, jnp.zeros((2, 40, 40, 3)), train=True)[0])
    self.assertEqual([s.shape for s in shapes], [(2, 3)] * 3)
    shapes = jax.eval_shape(lambda: model.init_with_output(
        KEY, jnp.zeros((2, 40, 40, 3)), train=False)[0])
    self.assertEqual(shapes.shape, (2, 3))


class FeatureTest(parameterized.TestCase):
  """Feature dicts: documented keys, strides and channels at an odd input size."""

  H, W = 65, 97

  def assert_features(self, module, expected):
    self.assertEqual(feature_shapes(module, self.H, self.W), expected)

  def ceil_shape(self, stride, channels):
    return (2, ceil_div(self.H, stride), ceil_div(self.W, stride), channels)

  @parameterized.named_parameters(
      ("plain", 32, (2, 4, 8, 16, 32)),
      ("os16", 16, (2, 4, 8, 16, 16)),
      ("os8", 8, (2, 4, 8, 8, 8)),
  )
  def test_resnet(self, output_stride, strides):
    module = backbones.ResNet50(num_classes=None, width=4, output_stride=output_stride)
    self.assertEqual(module.stride, output_stride)
    channels = (4, 16, 32, 64, 128)
    keys = ("stem", "layer1", "layer2", "layer3", "layer4")
    self.assert_features(module, {k: self.ceil_shape(s, c)
                                  for k, s, c in zip(keys, strides, channels)})

  def test_resnet_dilation_follows_torchvision(self):
    # The first block of a dilated stage keeps the previous dilation.
    module = backbones.ResNet(stage_sizes=(1, 1, 2, 3), width=4, num_classes=None,
                              output_stride=8)
    self.assertEqual(conv_dilations(module), {2: 2, 4: 2})
    module = module.clone(output_stride=16)
    self.assertEqual(conv_dilations(module), {2: 2})

  def test_basic_block_resnet(self):
    module = backbones.ResNet18(num_classes=None, width=8)
    strides, channels = (2, 4, 8, 16, 32), (8, 8, 16, 32, 64)
    keys = ("stem", "layer1", "layer2", "layer3", "layer4")
    self.assert_features(module, {k: self.ceil_shape(s, c)
                                  for k, s, c in zip(keys, strides, channels)})

  def test_vgg_pools_floor(self):
    module = backbones.VGG16(num_classes=None, widths=(4, 8, 8, 16, 16))
    self.assert_features(module, {f"pool{i + 1}": (2, self.H // 2**(i + 1), self.W // 2**(i + 1), c)
                                  for i, c in enumerate((4, 8, 8, 16, 16))})

  def test_googlenet_ceil_mode(self):
    module = backbones.GoogLeNet(num_classes=None, width_divisor=16)

    def sizes(n):
      out = [ceil_div(n, 2)]
      for _ in range(3):
        out.append(ceil_div(out[-1] - 1, 2))
      out.append(ceil_div(out[-1], 2))
      return out

    channels = (4, 12, 480 // 16, 832 // 16, 1024 // 16)
    expected = {f"stage{i + 1}": (2, h, w, c)
                for i, (h, w, c) in enumerate(zip(sizes(self.H), sizes(self.W), channels))}
    self.assert_features(module, expected)

  def test_xception(self):
    module = backbones.Xception(num_classes=None, width_divisor=8, middle_repeats=1)

    def sizes(n):
      out = [(n - 3) // 2 + 1 - 2]  # Two "valid" 3x3 convolutions, the first strided.
      for _ in range(4):
        out.append(ceil_div(out[-1], 2))
      return out

    hs, ws = sizes(self.H), sizes(self.W)
    expected = {"stem": (2, hs[0], ws[0], 8), "low_level": (2, hs[1], ws[1], 16),
                "mid_level": (2, hs[2], ws[2], 32), "entry": (2, hs[3], ws[3], 91),
                "middle": (2, hs[3], ws[3], 91), "exit": (2, hs[4], ws[4], 256)}
    self.assert_features(module, expected)

  @parameterized.parameters(8, 16, 32)
  def test_aligned_xception_output_stride(self, output_stride):
    module = backbones.AlignedXception(num_classes=None, width_divisor=8, middle_repeats=1,
                                       output_stride=output_stride)
    deep = min(output_stride, 16)
    # DeepLab's V3+ tap is inside entry block 2, before it strides: 256 channels at stride 4.
    self.assert_features(module, {
        "stem": self.ceil_shape(2, 8), "entry_block1": self.ceil_shape(4, 16),
        "low_level": self.ceil_shape(4, 32), "entry_block2": self.ceil_shape(8, 32),
        "entry": self.ceil_shape(deep, 91), "middle": self.ceil_shape(deep, 91),
        "exit": self.ceil_shape(output_stride, 256)})
    self.assertEqual(module.stride, output_stride)

  @parameterized.parameters((8, {2: 6, 4: 3}), (16, {2: 3}), (32, {}))
  def test_aligned_xception_atrous_rates(self, output_stride, expected):
    # Depthwise convs: OS 8 dilates middle + exit block 1 by 2 and exit block 2 by 4.
    module = backbones.AlignedXception(num_classes=None, width_divisor=8, middle_repeats=1,
                                       output_stride=output_stride)
    self.assertEqual(conv_dilations(module), expected)


class ResidualTest(parameterized.TestCase):
  """With zeroed residual-branch kernels a block reduces to its shortcut, computed in NumPy."""

  def apply(self, module, variables, x):
    return jax.jit(functools.partial(module.apply, train=False))(variables, x)

  def zero_kernels(self, variables, keep=()):
    params = jax.tree_util.tree_map_with_path(
        lambda path, leaf: leaf if any(k in jax.tree_util.keystr(path) for k in keep)
        or not jax.tree_util.keystr(path).endswith("['kernel']") else jnp.zeros_like(leaf),
        variables["params"])
    return {**variables, "params": params}

  @parameterized.parameters(backbones.BasicBlock, backbones.Bottleneck)
  def test_identity_shortcut(self, block):
    module = block(8 // block.expansion)
    x = jax.random.normal(jax.random.key(3), (2, 5, 7, 8))
    variables = self.zero_kernels(host_init(module, x))
    np.testing.assert_array_equal(self.apply(module, variables, x), np.maximum(np.asarray(x), 0))

  @parameterized.parameters(backbones.BasicBlock, backbones.Bottleneck)
  def test_downsample_shortcut(self, block):
    module = block(4, strides=2)
    x = jax.random.normal(jax.random.key(3), (2, 5, 7, 6))
    variables = self.zero_kernels(host_init(module, x), keep=("downsample",))
    kernel = np.asarray(variables["params"]["downsample"]["conv"]["kernel"])[0, 0]
    # A 1x1 stride-2 conv without padding samples even pixels; fresh BN divides by sqrt(1 + eps).
    expected = np.maximum(np.asarray(x)[:, ::2, ::2] @ kernel / np.sqrt(1 + 1e-5), 0)
    np.testing.assert_allclose(self.apply(module, variables, x), expected, rtol=1e-5,
                               atol=1e-6)

  @parameterized.parameters(
      (functools.partial(backbones.XceptionBlock, (6, 6, 6)), False),
      (functools.partial(backbones.AlignedXceptionBlock, (6, 6, 6), dilation=2), True),
  )
  def test_xception_middle_block_is_identity_plus_branch(self, make, returns_units):
    module = make()
    x = jax.random.normal(jax.random.key(3), (2, 5, 7, 6))
    variables = self.zero_kernels(host_init(module, x))
    out = self.apply(module, variables, x)
    # No activation after the sum: negative inputs pass through unchanged.
    np.testing.assert_array_equal(out[0] if returns_units else out, x)


class AlignedXceptionReferenceTest(parameterized.TestCase):
  """DeepLab's xception_65 unit, written out with jax.lax, against AlignedXceptionBlock."""

  def reference(self, variables, x, act_in_unit, strides, dilation, skip):
    p, s = variables["params"], variables["batch_stats"]
    conv = functools.partial(jax.lax.conv_general_dilated,
                             dimension_numbers=("NHWC", "HWIO", "NHWC"),
                             precision=jax.lax.Precision.HIGHEST)

    def bn(y, *path):
      params, stats = p, s
      for key in path + ("bn",):
        params, stats = params[key], stats[key]
      return (y - stats["mean"]) / jnp.sqrt(stats["var"] + 1e-3) * params["scale"] + params["bias"]

    y = x
    for i in (1, 2, 3):
      unit = f"sepconv{i}"
      if not act_in_unit:  # activation_fn_in_separable_conv=False: ReLU on the unit's input.
        y = jax.nn.relu(y)
      stride = strides if i == 3 else 1
      y = conv(y, p[unit]["depthwise"]["kernel"], (stride, stride), [(dilation, dilation)] * 2,
               rhs_dilation=(dilation, dilation), feature_group_count=y.shape[-1])
      y = bn(y, unit, "mid_norm")
      if act_in_unit:
        y = jax.nn.relu(y)
      y = bn(conv(y, p[unit]["pointwise"]["kernel"], (1, 1), "VALID"), f"{unit}_bn")
      if act_in_unit:
        y = jax.nn.relu(y)
    if skip == "conv":  # 1x1 conv + BN on the block's input, before any ReLU.
      y = y + bn(conv(x, p["skip"]["conv"]["kernel"], (strides, strides), "VALID"), "skip", "norm")
    if skip == "identity":
      y = y + x
    return y

  @parameterized.named_parameters(
      ("entry_block", False, 2, 1, "conv"),
      ("middle_block_atrous", False, 1, 2, "identity"),
      ("exit_block2", True, 1, 2, "none"),
  )
  def test_unit_order(self, act_in_unit, strides, dilation, skip):
    module = backbones.AlignedXceptionBlock((6, 5, 4 if skip != "identity" else 3),
                                            skip=skip, strides=strides, dilation=dilation,
                                            act_in_unit=act_in_unit)
    x = jax.random.normal(jax.random.key(3), (2, 9, 11, 3))
    variables = random_variables(module, x)
    out, units = jax.jit(functools.partial(module.apply, train=False))(variables, x)
    expected = self.reference(variables, x, act_in_unit, strides, dilation, skip)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    self.assertLen(units, 3)

  def test_low_level_tap_is_second_unit_of_entry_block2(self):
    module = backbones.AlignedXception(num_classes=None, width_divisor=32, middle_repeats=1)
    x = jax.random.normal(jax.random.key(3), (1, 32, 32, 3))
    variables = random_variables(module, x)
    features, state = jax.jit(lambda v, x: module.apply(
        v, x, train=False, capture_intermediates=lambda m, _: m.name == "entry_block2"))(
            variables, x)
    _, units = state["intermediates"]["entry_block2"]["__call__"][0]
    np.testing.assert_array_equal(features["low_level"], units[1])


class CeilPoolTest(parameterized.TestCase):

  @parameterized.parameters((7, 3, 2), (8, 3, 2), (5, 2, 2), (9, 3, 2))
  def test_ceil_mode_max_pool(self, size, window, stride):
    x = np.random.default_rng(1).normal(size=(1, size, size + 1, 2)).astype(np.float32)

    def starts(n):  # torch ceil_mode: a last, partial window is kept.
      return range(0, (ceil_div(n - window, stride)) * stride + 1, stride)

    expected = np.array([[[x[0, i:i + window, j:j + window, c].max() for c in range(2)]
                          for j in starts(size + 1)] for i in starts(size)])[None]
    np.testing.assert_array_equal(googlenet._ceil_pool(jnp.asarray(x), window, stride), expected)


class ValidationTest(absltest.TestCase):

  def test_bad_arguments(self):
    x = jnp.zeros((1, 32, 32, 3))
    cases = [
        (backbones.ResNet18(output_stride=4), x, "output_stride"),
        (backbones.ResNet18(), jnp.zeros((32, 32, 3)), "NHWC"),
        (backbones.VGG(stage_sizes=(1, 1), widths=(4,)), x, "widths"),
        (backbones.AlignedXception(output_stride=4), x, "output_stride"),
        (backbones.GoogLeNet(num_classes=None, aux_logits=True), x, "aux_logits"),
        (backbones.Xception(width_divisor=0), x, "width_divisor"),
        (backbones.ResNet18(), jnp.zeros((1, 31, 64, 3)), "at least 32x32"),
        (backbones.GoogLeNet(), jnp.zeros((1, 64, 16, 3)), "at least 32x32"),
    ]
    for module, inputs, message in cases:
      with self.assertRaisesRegex(ValueError, message):
        jax.eval_shape(lambda: module.init(KEY, inputs, train=False))


if __name__ == "__main__":
  absltest.main()
