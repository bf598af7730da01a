"""Segmentation models: pinned sizes, padding to the stride, skip fusion, strides and options."""

import functools
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from seg_jax import layers, models
from seg_jax.models import asym_unet, common, deeplab, fcn
from tests.models.testing import DROPOUT_KEY, FAST_COMPILE, KEY, TINY_RESNET

fast_jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)


def abstract_init(model, shape=(1, 64, 96, 3)):
  """Variable shapes from ``model.init`` (nothing is allocated)."""
  return jax.eval_shape(lambda: model.init(KEY, jnp.zeros(shape), train=False))


def count(model, shape=(1, 64, 96, 3)):
  """Parameter count of ``model``, from shapes only."""
  return models.count_params(abstract_init(model, shape))


def shapes_tree(variables):
  """The variables' tree with each leaf replaced by its shape."""
  return jax.tree.map(lambda leaf: leaf.shape, variables)


def backbone_features(model, shape):
  """``{key: shape}`` of the features returned by the ``backbone`` child, from shapes only."""
  def run():
    _, state = model.init_with_output(
        KEY, jnp.zeros(shape), train=False,
        capture_intermediates=lambda mdl, _: mdl.name == "backbone")
    return state["intermediates"]["backbone"]["__call__"][0]
  return {k: v.shape for k, v in jax.eval_shape(run).items()}


class ParamCountTest(parameterized.TestCase):
  """Default settings at 6 classes, pinned; listed in seg_jax/models/README.md."""

  @parameterized.named_parameters(
      ("unet", "unet", {}, 31_037_958),
      ("asym_unet", "asym_unet", {}, 12_766_158),
      ("deeplabv3", "deeplabv3", {}, 39_044_678),
      ("deeplabv3_resnet101", "deeplabv3", {"backbone": "resnet101"}, 58_036_806),
      ("deeplabv3plus", "deeplabv3plus", {}, 40_348_326),
      ("deeplabv3plus_xception", "deeplabv3plus", {"backbone": "xception"}, 41_045_414),
      ("fcn32s", "fcn32s", {}, 134_285_126),
      ("fcn16s", "fcn16s", {}, 134_288_780),
      ("fcn8s", "fcn8s", {}, 134_290_898),
      ("fcn_resnet50", "fcn_resnet50", {}, 32_949_318),
  )
  def test_default_count(self, name, kwargs, expected):
    self.assertEqual(count(models.create(name, num_classes=6, **kwargs)), expected)

  def test_torchvision_references(self):
    # torchvision fcn_resnet50 / deeplabv3_resnet50 at 21 classes without the aux head.
    self.assertEqual(count(models.create("fcn_resnet50", num_classes=21)), 32_957_013)
    tv_deeplab = models.create("deeplabv3", num_classes=21, output_stride=8, head_conv=True)
    self.assertEqual(count(tv_deeplab), 39_638_869)

  def test_output_stride_does_not_change_count(self):
    for backbone in ("resnet50", "xception"):
      counts = {count(models.create("deeplabv3plus", num_classes=6, backbone=backbone,
                                    output_stride=s)) for s in (8, 16)}
      self.assertLen(counts, 1)


class PaddingTest(parameterized.TestCase):

  @parameterized.parameters((32, 32, 16, 32, 32), (33, 47, 16, 48, 48), (65, 97, 32, 96, 128))
  def test_pad_to_multiple(self, h, w, multiple, ph, pw):
    x = np.random.default_rng(0).normal(size=(2, h, w, 3)).astype(np.float32)
    padded = common.pad_to_multiple(jnp.asarray(x), multiple)
    expected = np.pad(x, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(padded, expected)

  def test_segment_padded_crops_and_casts(self):
    x = jnp.zeros((1, 33, 40, 3), jnp.bfloat16)
    seen = []

    def body(padded):
      seen.append(padded.shape)
      return jnp.ones(padded.shape[:3] + (5,), jnp.bfloat16)

    out = common.segment_padded(x, 16, body)
    self.assertEqual(seen, [(1, 48, 48, 3)])
    self.assertEqual((out.shape, out.dtype), ((1, 33, 40, 5), jnp.float32))

  @parameterized.parameters((1, 31, 64, 3), (1, 64, 20, 3), (64, 64, 3))
  def test_rejects_bad_shapes(self, *shape):
    model = models.create("unet", num_classes=2, base_width=2, depth=1)
    with self.assertRaisesRegex(ValueError, "shape"):
      jax.eval_shape(lambda: model.init(KEY, jnp.zeros(shape), train=False))

  def test_crop_equals_padded_prediction(self):
    # The logits of a 38x50 input are the top-left crop of those of its padded 40x52 version.
    model = models.create("unet", num_classes=2, base_width=2, depth=2)
    x = jax.random.normal(jax.random.key(0), (1, 38, 50, 3))
    padded = common.pad_to_multiple(x, 4)
    variables = fast_jit(lambda x: model.init(KEY, x, train=False))(x)
    apply = fast_jit(functools.partial(model.apply, train=False))
    np.testing.assert_allclose(apply(variables, x), apply(variables, padded)[:, :38, :50],
                               rtol=1e-5, atol=1e-5)


class UNetTest(parameterized.TestCase):

  def test_symmetric_asym_unet_is_unet(self):
    plain = asym_unet.AsymUNet(num_classes=6, **asym_unet.ABLATIONS["plain_unet"])
    unet = models.create("unet", num_classes=6, base_width=32)
    self.assertEqual(shapes_tree(abstract_init(plain)), shapes_tree(abstract_init(unet)))

  def test_unet_structure(self):
    params = abstract_init(models.create("unet", num_classes=6, base_width=8, depth=3))["params"]
    self.assertEqual(sorted(params), ["decoder", "encoder", "head"])
    self.assertEqual(sorted(params["encoder"]), ["stage0", "stage1", "stage2", "stage3"])
    self.assertEqual(params["encoder"]["stage3"]["conv1"]["conv"]["kernel"].shape,
                     (3, 3, 64, 64))
    # 2x2 up-convolution halving the channels, then two 3x3 convs on the concatenation.
    self.assertEqual(params["decoder"]["up0"]["conv"]["kernel"].shape, (2, 2, 64, 32))
    self.assertEqual(params["decoder"]["stage0"]["conv0"]["conv"]["kernel"].shape,
                     (3, 3, 64, 32))
    self.assertEqual(params["head"]["kernel"].shape, (1, 1, 8, 6))

  def test_bilinear_upsampling_uses_3x3_conv(self):
    params = abstract_init(models.create("unet", num_classes=2, base_width=4, depth=2,
                                         upsample="bilinear"))["params"]
    self.assertEqual(params["decoder"]["up0"]["conv"]["kernel"].shape, (3, 3, 16, 8))

  def test_norm_none_uses_bias(self):
    params = abstract_init(models.create("unet", num_classes=2, base_width=4, depth=1,
                                         norm="none"))["params"]
    self.assertIn("bias", params["encoder"]["stage0"]["conv0"]["conv"])

  def test_dropout_only_in_train(self):
    model = models.create("unet", num_classes=2, base_width=4, depth=2, dropout_rate=0.5)
    x = jax.random.normal(jax.random.key(0), (1, 32, 32, 3))
    variables = fast_jit(lambda x: model.init(KEY, x, train=False))(x)
    train = fast_jit(lambda key: model.apply(variables, x, train=True, rngs={"dropout": key},
                                             mutable=["batch_stats"])[0])
    self.assertFalse(np.allclose(train(DROPOUT_KEY), train(KEY)))
    # Eval mode must equal the same model without dropout, with the same variables.
    no_dropout = model.clone(dropout_rate=0.0)
    evaluate = fast_jit(lambda v: (model.apply(v, x, train=False),
                                   no_dropout.apply(v, x, train=False)))
    np.testing.assert_array_equal(*evaluate(variables))

  @parameterized.parameters(
      ({"upsample": "nearest"}, "upsample"),
      ({"se_where": ("encoder", "middle")}, "se_where"),
      ({"se_where": "encoder"}, "se_where"),
      ({"decoder_widths": (8, 8)}, "decoder_widths"),
      ({"encoder_blocks": (1, 1)}, "encoder_blocks"),
  )
  def test_asym_unet_bad_settings(self, kwargs, message):
    model = models.create("asym_unet", num_classes=2, **kwargs)
    with self.assertRaisesRegex(ValueError, message):
      abstract_init(model)

  def test_asym_unet_switches(self):
    tiny = dict(widths=(4, 8, 16), encoder_blocks=(1, 2, 3), decoder_widths=(8, 4),
                decoder_blocks=(1, 1), aspp_features=8, se_reduction=2)
    full = abstract_init(models.create("asym_unet", num_classes=2, **tiny,
                                       se_where=("encoder", "skip", "decoder")))["params"]
    self.assertIn("aspp", full)
    self.assertEqual(sorted(full["encoder"]["stage2"]), ["conv0", "conv1", "conv2", "se"])
    self.assertIn("skip_se0", full["decoder"])
    self.assertIn("se", full["decoder"]["stage1"])
    # The decoder's first stage upsamples the ASPP output.
    self.assertEqual(full["decoder"]["up0"]["conv"]["kernel"].shape, (2, 2, 8, 8))
    bare = abstract_init(models.create("asym_unet", num_classes=2, **tiny, use_se=False,
                                       use_aspp=False))["params"]
    self.assertNotIn("aspp", bare)
    self.assertNotIn("se", bare["encoder"]["stage2"])
    self.assertEqual(bare["decoder"]["up0"]["conv"]["kernel"].shape, (2, 2, 16, 8))

  def test_every_ablation_initializes_with_parameters(self):
    for name, kwargs in asym_unet.ABLATIONS.items():
      with self.subTest(name):
        self.assertGreater(count(asym_unet.AsymUNet(num_classes=6, **kwargs)), 0)


class DeepLabTest(parameterized.TestCase):

  @parameterized.parameters(
      ("resnet50", 8, "layer4", 4 * 32),
      ("resnet50", 16, "layer4", 4 * 32),
      ("xception", 8, "exit", 2048 // 32),
      ("xception", 16, "exit", 2048 // 32),
  )
  def test_backbone_output_stride(self, backbone, output_stride, key, channels):
    kwargs = (TINY_RESNET if backbone == "resnet50"
              else {"width_divisor": 32, "middle_repeats": 1})
    model = models.create("deeplabv3plus", num_classes=3, backbone=backbone,
                          output_stride=output_stride, backbone_kwargs=kwargs, aspp_features=8,
                          decoder_features=8)
    # 65x97 pads to a multiple of the output stride.
    h, w = -(-65 // output_stride) * output_stride, -(-97 // output_stride) * output_stride
    features = backbone_features(model, (1, 65, 97, 3))
    self.assertEqual(features[key], (1, h // output_stride, w // output_stride, channels))
    low = "layer1" if backbone == "resnet50" else "low_level"
    self.assertEqual(features[low][1:3], (h // 4, w // 4))

  def test_default_rates(self):
    self.assertEqual(deeplab.default_aspp_rates(16), (6, 12, 18))
    self.assertEqual(deeplab.default_aspp_rates(8), (12, 24, 36))

  def test_aspp_uses_rates(self):
    model = models.create("deeplabv3", num_classes=3, backbone_kwargs=TINY_RESNET,
                          aspp_features=8, output_stride=8)
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    variables = abstract_init(model, x.shape)
    text = str(jax.make_jaxpr(functools.partial(model.apply, train=False))(variables, x))
    for rate in (12, 24, 36):
      self.assertIn(f"rhs_dilation=({rate}, {rate})", text)

  def test_v3plus_decoder_shapes(self):
    params = abstract_init(models.create("deeplabv3plus", num_classes=3))["params"]
    self.assertEqual(params["low_level_proj"]["conv"]["kernel"].shape, (1, 1, 256, 48))
    self.assertEqual(params["decoder_conv0"]["conv"]["kernel"].shape, (3, 3, 256 + 48, 256))
    self.assertEqual(params["decoder_conv1"]["conv"]["kernel"].shape, (3, 3, 256, 256))
    sep = abstract_init(models.create("deeplabv3plus", num_classes=3,
                                      backbone="xception"))["params"]
    self.assertEqual(sep["decoder_conv0"]["conv"]["depthwise"]["kernel"].shape,
                     (3, 3, 1, 256 + 48))

  @parameterized.parameters(({"output_stride": 32}, "output_stride"),
                            ({"backbone": "vgg16"}, "backbone"))
  def test_bad_settings(self, kwargs, message):
    with self.assertRaisesRegex(ValueError, message):
      abstract_init(models.create("deeplabv3", num_classes=3, **kwargs))


class FCNTest(parameterized.TestCase):

  def test_bilinear_upscore_matches_numpy(self):
    x = np.random.default_rng(0).normal(size=(1, 5, 7, 2)).astype(np.float32)
    module = fcn.Upscore2x(2)
    variables = module.init(KEY, jnp.asarray(x))
    out = np.asarray(module.apply(variables, jnp.asarray(x)))

    def up1d(a, axis):
      # Bilinear x2 with half-pixel centres: out[2i] = .25 a[i-1] + .75 a[i], etc.
      a = np.moveaxis(a, axis, 0)
      prev = np.concatenate([np.zeros_like(a[:1]), a[:-1]])
      nxt = np.concatenate([a[1:], np.zeros_like(a[:1])])
      y = np.stack([0.25 * prev + 0.75 * a, 0.75 * a + 0.25 * nxt], axis=1)
      return np.moveaxis(y.reshape((-1,) + a.shape[1:]), 0, axis)

    np.testing.assert_allclose(out, up1d(up1d(x, 1), 2), rtol=1e-5, atol=1e-6)

  @parameterized.parameters(
      ("fcn32s", []),
      ("fcn16s", ["score_pool4", "upscore2"]),
      ("fcn8s", ["score_pool3", "score_pool4", "upscore2", "upscore_pool4"]),
  )
  def test_skip_layers(self, name, skips):
    params = abstract_init(models.create(name, num_classes=3, fc_features=8,
                                         backbone_kwargs={"widths": (4, 4, 8, 8, 8)}))["params"]
    self.assertEqual(sorted(params), sorted(["backbone", "fc6", "fc7", "score_fr"] + skips))
    self.assertEqual(params["fc6"]["kernel"].shape, (7, 7, 8, 8))

  def test_fused_skips_start_at_zero(self):
    # As in the paper, training starts from the coarse prediction: skip scores are zero.
    model = models.create("fcn8s", num_classes=3, fc_features=8,
                          backbone_kwargs={"widths": (4, 4, 8, 8, 8)})
    params = fast_jit(lambda x: model.init(KEY, x, train=False))(jnp.zeros((1, 64, 64, 3)))
    params = params["params"]
    for name in ("score_pool3", "score_pool4"):
      self.assertFalse(np.any(np.asarray(params[name]["kernel"])))

  @parameterized.parameters((2, 3), (5, 8), (9, 9))
  def test_small_map_conv_equals_plain_conv(self, h, w):
    conv = layers.Conv(4, (7, 7))
    x = jax.random.normal(jax.random.key(0), (1, h, w, 3))
    variables = conv.init(KEY, x)
    bound = conv.bind(variables)
    np.testing.assert_allclose(fcn.conv_same_on_small_map(bound, x), bound(x), rtol=1e-5,
                               atol=1e-6)

  @parameterized.parameters(("cpu", 2), ("gpu", 0), ("tpu", 0))
  def test_small_map_padding_and_barriers_only_on_cpu(self, backend, barriers):
    conv = layers.Conv(4, (7, 7))
    x = jnp.ones((1, 5, 8, 3))
    bound = conv.bind(conv.init(KEY, x))
    with mock.patch.object(jax, "default_backend", return_value=backend):
      jaxpr = jax.make_jaxpr(lambda x: fcn.conv_same_on_small_map(bound, x))(x)
    names = [eqn.primitive.name for eqn in jaxpr.jaxpr.eqns]
    self.assertEqual(names.count("optimization_barrier"), barriers)
    self.assertEqual(jaxpr.out_avals[0].shape, (1, 5, 8, 4))

  def test_bad_stride(self):
    with self.assertRaisesRegex(ValueError, "stride"):
      abstract_init(fcn.FCN(num_classes=3, stride=4))


class DtypeTest(absltest.TestCase):

  def test_bfloat16_close_to_float32(self):
    kwargs = dict(num_classes=3, widths=(4, 8, 8), encoder_blocks=(1, 1, 1),
                  decoder_widths=(8, 4), decoder_blocks=(1, 1), aspp_features=8, se_reduction=2)
    f32 = models.create("asym_unet", **kwargs)
    bf16 = models.create("asym_unet", dtype="bfloat16", **kwargs)
    x = jax.random.normal(jax.random.key(0), (2, 33, 35, 3))
    variables = fast_jit(lambda x: f32.init(KEY, x, train=False))(x)
    out32, out16 = fast_jit(lambda v, x: (f32.apply(v, x, train=False),
                                          bf16.apply(v, x, train=False)))(variables, x)
    self.assertEqual(out16.dtype, jnp.float32)
    np.testing.assert_allclose(out16, out32, atol=0.1 * float(jnp.std(out32)) + 1e-3)


if __name__ == "__main__":
  absltest.main()
