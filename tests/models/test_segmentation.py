"""Segmentation models: pinned sizes, the composition, padding, skip fusion, strides, options."""

import functools
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from seg_jax import layers, models
from seg_jax.models import asym_unet, common, fcn, segmentation, unet, unetpp
from tests.models.testing import (
    DROPOUT_KEY, FAST_COMPILE, KEY, TINY_RESNET, TINY_VGG, TINY_XCEPTION65, host_init)

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


def part_output(model, shape, part):
  """Shapes of what the ``part`` child (``backbone``, ``decoder``, ...) returns, shapes only."""
  def run():
    _, state = model.init_with_output(
        KEY, jnp.zeros(shape), train=False,
        capture_intermediates=lambda mdl, _: mdl.name == part)
    return state["intermediates"][part]["__call__"][0]
  return jax.tree.map(lambda x: x.shape, jax.eval_shape(run))


def backbone_features(model, shape):
  """``{key: shape}`` of the features returned by the ``backbone`` child, from shapes only."""
  return part_output(model, shape, "backbone")


def params_per_part(model, shape):
  """``{part: parameters}`` of ``model`` for NHWC input ``shape``, from shapes only."""
  return {part: models.count_params({"params": tree})
          for part, tree in abstract_init(model, shape)["params"].items()}


class ParamCountTest(parameterized.TestCase):
  """Default settings at 6 classes, pinned; listed in seg_jax/models/README.md."""

  @parameterized.named_parameters(
      ("unet", "unet", {}, 31_037_958),
      ("asym_unet", "asym_unet", {}, 12_766_158),
      ("deeplabv3", "deeplabv3", {}, 39_044_678),
      ("deeplabv3_resnet101", "deeplabv3", {"backbone": "resnet101"}, 58_036_806),
      ("deeplabv3plus", "deeplabv3plus", {}, 40_348_326),
      # DeepLab's stride-4 tap has 256 channels: 256 * 48 weights in the 1x1 projection.
      ("deeplabv3plus_xception", "deeplabv3plus_xception", {}, 41_051_558),
      ("fcn32s", "fcn32s", {}, 134_285_126),
      ("fcn16s", "fcn16s", {}, 134_288_780),
      ("fcn8s", "fcn8s", {}, 134_290_898),
      ("fcn_resnet50", "fcn_resnet50", {}, 32_949_318),
      ("unetpp_resnet34", "unetpp_resnet34", {}, 26_079_334),
  )
  def test_default_count(self, name, kwargs, expected):
    self.assertEqual(count(models.create(name, num_classes=6, **kwargs)), expected)

  def test_unetpp_resnet34_is_smp_unetplusplus(self):
    # segmentation_models_pytorch 0.6.0 (torch 2.13 CPU), summed over .parameters() of the
    # encoder, decoder and segmentation_head of
    # smp.UnetPlusPlus(encoder_name="resnet34", encoder_weights=None, in_channels=4, classes=6):
    # 26,082,470 in all. Its ResNet-34 is torchvision's without avgpool and fc, conv1 on 4 bands.
    model = models.create("unetpp_resnet34", num_classes=6)
    self.assertEqual(params_per_part(model, (1, 64, 64, 4)),
                     {"backbone": 21_287_808, "decoder": 4_793_792, "head": 870})

  def test_torchvision_references(self):
    # torchvision fcn_resnet50 / deeplabv3_resnet50 at 21 classes without the aux head.
    self.assertEqual(count(models.create("fcn_resnet50", num_classes=21)), 32_957_013)
    self.assertEqual(count(models.create("deeplabv3_resnet50", num_classes=21)), 39_638_869)

  def test_output_stride_does_not_change_count(self):
    for name in ("deeplabv3plus", "deeplabv3plus_xception"):
      counts = {count(models.create(name, num_classes=6, backbone_kwargs={"output_stride": s}))
                for s in (8, 16)}
      self.assertLen(counts, 1)


class CompositionTest(parameterized.TestCase):
  """Any backbone feeds any decoder whose needs its strides meet; parts are named children."""

  @parameterized.named_parameters(
      ("asym_unet_decoder_on_resnet50", "asym_unet",
       dict(backbone="resnet50", backbone_kwargs=TINY_RESNET)),
      ("asym_unet_decoder_on_xception65", "asym_unet",
       dict(backbone="xception65", backbone_kwargs=dict(TINY_XCEPTION65, output_stride=32))),
      ("unet_decoder_on_vgg16", "unet", dict(backbone="vgg16", backbone_kwargs=TINY_VGG)),
      # Dilation repeats stride 16: layer4, the deepest features there, feeds the decoder.
      ("unet_decoder_on_dilated_resnet18", "unet",
       dict(backbone="resnet18", backbone_kwargs=dict(width=4, output_stride=16),
            decoder_kwargs=dict(widths=(8, 8, 4)))),
      ("deeplabv3plus_on_resnet18", "deeplabv3plus",
       dict(backbone="resnet18", backbone_kwargs=dict(width=4))),
      ("deeplabv3plus_on_unet_encoder", "deeplabv3plus",
       dict(backbone="unet_encoder", backbone_kwargs=dict(widths=(4, 4, 8, 8, 16)))),
      # Keras' Xception: "valid" stem convs give odd sizes; V3+ resizes the deep features.
      ("deeplabv3plus_on_keras_xception", "deeplabv3plus",
       dict(backbone="xception", backbone_kwargs=dict(width_divisor=32, middle_repeats=1))),
      ("fcn8s_on_resnet18", "fcn8s",
       dict(backbone="resnet18", backbone_kwargs=dict(width=4), neck="none")),
  )
  def test_combination(self, name, kwargs):
    model = models.create(name, num_classes=3, **kwargs)
    x = jax.ShapeDtypeStruct((2, 65, 97, 3), jnp.float32)
    out, variables = jax.eval_shape(lambda x: model.init_with_output(KEY, x, train=False), x)
    self.assertEqual(out.shape, (2, 65, 97, 3))
    self.assertEqual(variables["params"].keys() - {"neck", "decoder", "head"}, {"backbone"})

  @parameterized.parameters(*segmentation.BACKBONES)
  def test_every_backbone_feeds_aspp_and_the_v3plus_decoder(self, backbone):
    tiny = {"unet_encoder": dict(widths=(4, 8, 8)), "vgg16": TINY_VGG,
            "xception65": TINY_XCEPTION65, "resnet101": dict(TINY_RESNET),
            "xception": dict(width_divisor=32, middle_repeats=1)}
    model = models.create("deeplabv3plus", num_classes=3, backbone=backbone,
                          backbone_kwargs=tiny.get(backbone, dict(width=4)),
                          neck_kwargs=dict(features=8), decoder_kwargs=dict(features=8))
    params = abstract_init(model)["params"]
    self.assertEqual(sorted(params), ["backbone", "decoder", "head", "neck"])

  def test_combination_runs(self):
    model = models.create("asym_unet", num_classes=3, backbone="resnet18",
                          backbone_kwargs=dict(width=4), neck_kwargs=dict(features=8))
    x = jax.random.normal(jax.random.key(0), (2, 33, 40, 3))
    variables = host_init(model, x)
    out = fast_jit(functools.partial(model.apply, train=False))(variables, x)
    self.assertEqual(out.shape, (2, 33, 40, 3))
    self.assertTrue(np.isfinite(np.asarray(out)).all())

  def test_frozen_parts_run_as_at_evaluation(self):
    kwargs = dict(num_classes=3, backbone_kwargs=dict(widths=(4, 8, 8), blocks=1),
                  neck_kwargs=dict(features=8), decoder_kwargs=dict(widths=(8, 4)))
    model = models.create("asym_unet", **kwargs)
    frozen = models.create("asym_unet", frozen_parts=("backbone",), **kwargs)
    self.assertEqual(frozen.parts, ("backbone", "neck", "decoder", "head"))
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    variables = host_init(model, x)
    def train_step(module):
      return module.apply(variables, x, train=True, mutable=["batch_stats"],
                          rngs={"dropout": DROPOUT_KEY})
    _, updated = fast_jit(lambda: train_step(model))()
    _, kept = fast_jit(lambda: train_step(frozen))()
    same = lambda a, b: np.array_equal(np.asarray(a), np.asarray(b))
    stats = variables["batch_stats"]
    self.assertTrue(all(jax.tree.leaves(jax.tree.map(
        same, stats["backbone"], kept["batch_stats"]["backbone"]))))
    self.assertFalse(any(jax.tree.leaves(jax.tree.map(
        same, stats["backbone"], updated["batch_stats"]["backbone"]))))
    self.assertFalse(any(jax.tree.leaves(jax.tree.map(
        same, stats["decoder"], kept["batch_stats"]["decoder"]))))
    # No gradient reaches a frozen backbone; the decoder still gets one.
    grads = fast_jit(jax.grad(lambda p: jnp.sum(frozen.apply(
        {**variables, "params": p}, x, train=True, mutable=["batch_stats"],
        rngs={"dropout": DROPOUT_KEY})[0] ** 2)))(variables["params"])
    self.assertFalse(any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads["backbone"])))
    self.assertTrue(all(np.any(np.asarray(g)) for g in jax.tree.leaves(grads["decoder"])))
    with self.assertRaisesRegex(ValueError, r"frozen_parts \('neck',\) must be parts of this "
                                r"model, which has \('backbone', 'decoder', 'head'\)"):
      abstract_init(models.create("unet", num_classes=3, frozen_parts=("neck",)))

  def test_merge_settings(self):
    base = dict(backbone="unet_encoder", backbone_kwargs=dict(widths=(4, 8), se=True),
                neck="aspp", neck_kwargs=dict(features=8))
    merged = segmentation.merge_settings(base, dict(backbone_kwargs=dict(se=False), head="conv"))
    self.assertEqual(merged["backbone_kwargs"], dict(widths=(4, 8), se=False))
    self.assertEqual(merged["neck_kwargs"], dict(features=8))
    self.assertEqual(merged["head"], "conv")
    # A different part drops the kwargs of the part it replaces, not those given with it.
    merged = segmentation.merge_settings(
        base, dict(backbone="resnet18", backbone_kwargs=dict(width=4), neck="none"))
    self.assertEqual(merged["backbone_kwargs"], dict(width=4))
    self.assertEqual(merged["neck_kwargs"], {})
    self.assertEqual(segmentation.merge_settings(base, dict(backbone="unet_encoder")), base)
    # A part the base leaves out is the default one ("conv" head).
    merged = segmentation.merge_settings(dict(head_kwargs=dict(features=8)), dict(head="none"))
    self.assertEqual(merged["head_kwargs"], {})

  def test_create_merges_into_the_preset(self):
    fields = models.settings("asym_unet", backbone_kwargs=dict(se=False))
    self.assertEqual(fields["backbone_kwargs"]["widths"], (32, 64, 128, 256, 512))
    self.assertFalse(fields["backbone_kwargs"]["se"])
    self.assertEqual(models.settings("asym_unet", backbone="resnet50")["backbone_kwargs"], {})

  @parameterized.parameters(
      (dict(backbone="resnet9"), "backbone must be one of"),
      (dict(neck="pyramid"), "neck must be one of"),
      (dict(backbone_kwargs=dict(widths=(4, 8), depth=3)), "backbone_kwargs .*depth"),
      (dict(head="none"), "head must be 'none' exactly when"),
  )
  def test_bad_composition(self, kwargs, message):
    with self.assertRaisesRegex(ValueError, message):
      abstract_init(models.create("unet", num_classes=2, **kwargs))

  def test_decoder_needs_its_strides(self):
    pyramid = {1: jnp.zeros((1, 16, 16, 2)), 4: jnp.zeros((1, 4, 4, 2))}
    for decoder in (unet.UNetDecoder(), unetpp.UNetPlusPlusDecoder(widths=(4, 4))):
      with self.assertRaisesRegex(ValueError, r"twice the size.*strides \[1, 4\]"):
        jax.eval_shape(lambda: decoder.init(KEY, pyramid, train=False))
    with self.assertRaisesRegex(ValueError, r"low_level_stride=1 .*\[2, 4, 8, 16\]"):
      abstract_init(models.create("deeplabv3plus", num_classes=2, backbone_kwargs=TINY_RESNET,
                                  decoder_kwargs=dict(low_level_stride=1, features=8)))
    with self.assertRaisesRegex(ValueError, "skip_strides"):
      abstract_init(models.create("fcn8s", num_classes=2, backbone_kwargs=TINY_VGG,
                                  decoder_kwargs=dict(skip_strides=(8,))))

  def test_feature_pyramid_keeps_the_deepest_stage_per_stride(self):
    a, b, c = jnp.zeros((1, 8, 8, 1)), jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 4, 4, 3))
    pyramid = common.feature_pyramid({"a": a, "b": b, "c": c}, 16)
    self.assertEqual(list(pyramid), [2, 4])
    self.assertIs(pyramid[4], c)


class PaddingTest(parameterized.TestCase):

  @parameterized.parameters((32, 32, 16, 32, 32), (33, 47, 16, 48, 48), (65, 97, 32, 96, 128))
  def test_pad_to_multiple(self, h, w, multiple, ph, pw):
    x = np.random.default_rng(0).normal(size=(2, h, w, 3)).astype(np.float32)
    padded = common.pad_to_multiple(jnp.asarray(x), multiple)
    expected = np.pad(x, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(padded, expected)
    # The same at a symbolic size (a model exported by jax.export): padded by a gather.
    shape = jax.export.symbolic_shape("b, h, w, 3", constraints=(f"h >= {multiple}",
                                                                  f"w >= {multiple}"))
    exported = jax.export.export(jax.jit(functools.partial(common.pad_to_multiple,
                                                           multiple=multiple)))(
        jax.ShapeDtypeStruct(shape, jnp.float32))
    np.testing.assert_array_equal(exported.call(x), expected)

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
    model = models.create("unet", num_classes=2, backbone_kwargs=dict(widths=(2, 4)))
    with self.assertRaisesRegex(ValueError, "shape"):
      jax.eval_shape(lambda: model.init(KEY, jnp.zeros(shape), train=False))

  def test_crop_equals_padded_prediction(self):
    # The logits of a 38x50 input are the top-left crop of those of its padded 40x52 version.
    model = models.create("unet", num_classes=2, backbone_kwargs=dict(widths=(2, 4, 4)))
    x = jax.random.normal(jax.random.key(0), (1, 38, 50, 3))
    padded = common.pad_to_multiple(x, 4)
    variables = fast_jit(lambda x: model.init(KEY, x, train=False))(x)
    apply = fast_jit(functools.partial(model.apply, train=False))
    np.testing.assert_allclose(apply(variables, x), apply(variables, padded)[:, :38, :50],
                               rtol=1e-5, atol=1e-5)


class UNetTest(parameterized.TestCase):

  def test_symmetric_asym_unet_is_unet(self):
    plain = models.create("asym_unet", num_classes=6, ablation="plain_unet")
    unet = models.create("unet", num_classes=6,
                         backbone_kwargs=dict(widths=(32, 64, 128, 256, 512)))
    self.assertEqual(shapes_tree(abstract_init(plain)), shapes_tree(abstract_init(unet)))

  def test_unet_structure(self):
    params = abstract_init(models.create("unet", num_classes=6,
                                         backbone_kwargs=dict(widths=(8, 16, 32, 64))))["params"]
    self.assertEqual(sorted(params), ["backbone", "decoder", "head"])
    self.assertEqual(sorted(params["backbone"]), ["stage0", "stage1", "stage2", "stage3"])
    self.assertEqual(params["backbone"]["stage3"]["conv1"]["conv"]["kernel"].shape,
                     (3, 3, 64, 64))
    # 2x2 up-convolution halving the channels, then two 3x3 convs on the concatenation.
    self.assertEqual(params["decoder"]["up0"]["conv"]["kernel"].shape, (2, 2, 64, 32))
    self.assertEqual(params["decoder"]["stage0"]["conv0"]["conv"]["kernel"].shape,
                     (3, 3, 64, 32))
    self.assertEqual(params["head"]["classifier"]["kernel"].shape, (1, 1, 8, 6))

  def test_bilinear_upsampling_uses_3x3_conv(self):
    params = abstract_init(models.create(
        "unet", num_classes=2, backbone_kwargs=dict(widths=(4, 8, 16)),
        decoder_kwargs=dict(upsample="bilinear")))["params"]
    self.assertEqual(params["decoder"]["up0"]["conv"]["kernel"].shape, (3, 3, 16, 8))

  def test_norm_none_uses_bias(self):
    params = abstract_init(models.create("unet", num_classes=2,
                                         backbone_kwargs=dict(widths=(4, 8), norm="none"),
                                         decoder_kwargs=dict(norm="none")))["params"]
    self.assertIn("bias", params["backbone"]["stage0"]["conv0"]["conv"])
    self.assertIn("bias", params["decoder"]["stage0"]["conv0"]["conv"])

  def test_dropout_only_in_train(self):
    model = models.create("unet", num_classes=2,
                          backbone_kwargs=dict(widths=(4, 8, 16), dropout_rate=0.5))
    x = jax.random.normal(jax.random.key(0), (1, 32, 32, 3))
    variables = fast_jit(lambda x: model.init(KEY, x, train=False))(x)
    train = fast_jit(lambda key: model.apply(variables, x, train=True, rngs={"dropout": key},
                                             mutable=["batch_stats"])[0])
    self.assertFalse(np.allclose(train(DROPOUT_KEY), train(KEY)))
    # Eval mode must equal the same model without dropout, with the same variables.
    no_dropout = model.clone(backbone_kwargs=dict(widths=(4, 8, 16), dropout_rate=0.0))
    evaluate = fast_jit(lambda v: (model.apply(v, x, train=False),
                                   no_dropout.apply(v, x, train=False)))
    np.testing.assert_array_equal(*evaluate(variables))

  @parameterized.parameters(
      ({"decoder_kwargs": {"upsample": "nearest"}}, "upsample"),
      ({"decoder_kwargs": {"widths": (8, 8)}}, "decoder widths"),
      ({"backbone_kwargs": {"blocks": (1, 1)}}, "blocks"),
      ({"backbone_kwargs": {"widths": (8,)}}, "at least 2 stages"),
  )
  def test_asym_unet_bad_settings(self, kwargs, message):
    model = models.create("asym_unet", num_classes=2, **kwargs)
    with self.assertRaisesRegex(ValueError, message):
      abstract_init(model)

  def test_asym_unet_switches(self):
    tiny = dict(backbone_kwargs=dict(widths=(4, 8, 16), blocks=(1, 2, 3), se_reduction=2),
                neck_kwargs=dict(features=8),
                decoder_kwargs=dict(widths=(8, 4), se_reduction=2))
    full = abstract_init(models.create(
        "asym_unet", num_classes=2, **{**tiny, "decoder_kwargs": dict(
            widths=(8, 4), se=True, skip_se=True, se_reduction=2)}))["params"]
    self.assertIn("neck", full)
    self.assertEqual(sorted(full["backbone"]["stage2"]), ["conv0", "conv1", "conv2", "se"])
    self.assertIn("skip_se0", full["decoder"])
    self.assertIn("se", full["decoder"]["stage1"])
    # The decoder's first stage upsamples the ASPP output.
    self.assertEqual(full["decoder"]["up0"]["conv"]["kernel"].shape, (2, 2, 8, 8))
    bare = abstract_init(models.create("asym_unet", num_classes=2, ablation="asym", **tiny))
    bare = bare["params"]
    self.assertNotIn("neck", bare)
    self.assertNotIn("se", bare["backbone"]["stage2"])
    self.assertEqual(bare["decoder"]["up0"]["conv"]["kernel"].shape, (2, 2, 16, 8))

  @parameterized.parameters(*asym_unet.ABLATIONS)
  def test_ablation_sets_every_switch(self, name):
    # Applied over kwargs that set every switch the other way, the ablation still decides.
    ablation = asym_unet.ABLATIONS[name]
    se, aspp = ablation["backbone_kwargs"]["se"], ablation["neck"] == "aspp"
    kwargs = dict(backbone_kwargs=dict(widths=(4, 8, 16), blocks=(1, 1, 3), se=not se,
                                       se_reduction=2),
                  neck="none" if aspp else "aspp", neck_kwargs=dict(features=8),
                  decoder_kwargs=dict(widths=(6, 3), se=True, skip_se=True, se_reduction=2))
    params = abstract_init(models.create("asym_unet", num_classes=6, ablation=name,
                                         **kwargs))["params"]
    self.assertEqual("neck" in params, aspp)
    self.assertEqual("se" in params["backbone"]["stage1"], se)
    self.assertNotIn("skip_se0", params["decoder"])
    self.assertNotIn("se", params["decoder"]["stage0"])
    # plain_unet*: two convs per stage in both paths, decoder stages as wide as their skips.
    plain = name.startswith("plain_unet")
    self.assertEqual(sorted(params["backbone"]["stage2"]).count("conv2"), 0 if plain else 1)
    self.assertEqual(params["decoder"]["stage1"]["conv0"]["conv"]["kernel"].shape[-1],
                     4 if plain else 3)
    self.assertEqual("conv1" in params["decoder"]["stage1"], plain)

  def test_unknown_ablation(self):
    with self.assertRaisesRegex(ValueError, "ablation of model 'asym_unet' must be one of"):
      models.create("asym_unet", num_classes=2, ablation="no_se")
    with self.assertRaisesRegex(ValueError, "ablation of model 'unet'"):
      models.create("unet", num_classes=2, ablation="asym")


class UNetPlusPlusTest(parameterized.TestCase):

  def test_nested_nodes_on_resnet34(self):
    # Skips of a ResNet-34 of width 4, deepest first: 32 (stride 32), 16, 8, 4, 4 (stem).
    model = models.create("unetpp_resnet34", num_classes=3, backbone_kwargs=dict(width=4),
                          decoder_kwargs=dict(widths=(24, 12, 10, 6, 5)))
    params = abstract_init(model)["params"]
    kernels = {node: params["decoder"][node]["conv0"]["conv"]["kernel"].shape[2:]
               for node in params["decoder"]}
    # (input channels, output channels) of each node's first conv: the upsampled node below,
    # then the nodes to its right in the same column, then the backbone's skip; row 0 has the
    # decoder widths, the nested rows the skip's channels; x_0_4 has no skip.
    self.assertEqual(kernels, {
        "x_0_0": (32 + 16, 24), "x_0_1": (24 + 8 + 8, 12), "x_0_2": (12 + 4 + 4 + 4, 10),
        "x_0_3": (10 + 4 + 4 + 4 + 4, 6), "x_0_4": (6, 5),
        "x_1_1": (16 + 8, 8), "x_1_2": (8 + 4 + 4, 4), "x_1_3": (4 + 4 + 4 + 4, 4),
        "x_2_2": (8 + 4, 4), "x_2_3": (4 + 4 + 4, 4), "x_3_3": (4 + 4, 4)})
    self.assertEqual(params["decoder"]["x_0_0"]["conv1"]["conv"]["kernel"].shape,
                     (3, 3, 24, 24))
    self.assertEqual(params["head"]["classifier"]["kernel"].shape, (3, 3, 5, 3))
    self.assertEqual(part_output(model, (2, 64, 96, 3), "decoder"), (2, 64, 96, 5))

  def test_unet_encoder_needs_no_plain_node(self):
    # The U-Net encoder has a stride-1 stage: every row-0 node has a skip.
    model = models.create("unetpp_resnet34", num_classes=3, backbone="unet_encoder",
                          backbone_kwargs=dict(widths=(4, 8, 8, 16, 16)),
                          decoder_kwargs=dict(widths=(16, 8, 8, 4)))
    params = abstract_init(model)["params"]
    self.assertCountEqual(params["decoder"], [f"x_{d}_{j}" for j in range(4)
                                              for d in range(j + 1)])
    self.assertEqual(params["decoder"]["x_0_3"]["conv0"]["conv"]["kernel"].shape,
                     (3, 3, 8 + 3 * 4 + 4, 4))
    self.assertEqual(part_output(model, (2, 64, 96, 3), "decoder"), (2, 64, 96, 4))

  def test_one_width_per_doubling(self):
    with self.assertRaisesRegex(ValueError, r"one width per doubling .*\[2, 4, 8, 16, 32\]"):
      abstract_init(models.create("unetpp_resnet34", num_classes=3,
                                  backbone_kwargs=dict(width=4),
                                  decoder_kwargs=dict(widths=(8, 8, 8, 8))))


class DeepLabTest(parameterized.TestCase):

  @parameterized.parameters(
      ("deeplabv3plus", 8, "layer4", 4 * 32, "layer1"),
      ("deeplabv3plus", 16, "layer4", 4 * 32, "layer1"),
      ("deeplabv3plus_xception", 8, "exit", 2048 // 32, "low_level"),
      ("deeplabv3plus_xception", 16, "exit", 2048 // 32, "low_level"),
  )
  def test_backbone_output_stride(self, name, output_stride, key, channels, low):
    backbone = TINY_RESNET if name == "deeplabv3plus" else TINY_XCEPTION65
    model = models.create(name, num_classes=3,
                          backbone_kwargs=dict(backbone, output_stride=output_stride),
                          neck_kwargs=dict(features=8), decoder_kwargs=dict(features=8))
    # 65x97 pads to a multiple of the output stride.
    h, w = -(-65 // output_stride) * output_stride, -(-97 // output_stride) * output_stride
    features = backbone_features(model, (1, 65, 97, 3))
    self.assertEqual(features[key], (1, h // output_stride, w // output_stride, channels))
    self.assertEqual(features[low][1:3], (h // 4, w // 4))

  def test_aspp_uses_rates(self):
    model = models.create("deeplabv3", num_classes=3,
                          backbone_kwargs=dict(TINY_RESNET, output_stride=8),
                          neck_kwargs=dict(features=8, rates=(12, 24, 36)))
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    variables = abstract_init(model, x.shape)
    text = str(jax.make_jaxpr(functools.partial(model.apply, train=False))(variables, x))
    for rate in (12, 24, 36):
      self.assertIn(f"rhs_dilation=({rate}, {rate})", text)

  def test_v3plus_decoder_shapes(self):
    params = abstract_init(models.create("deeplabv3plus", num_classes=3))["params"]
    decoder = params["decoder"]
    self.assertEqual(decoder["low_level_proj"]["conv"]["kernel"].shape, (1, 1, 256, 48))
    self.assertEqual(decoder["conv0"]["conv"]["kernel"].shape, (3, 3, 256 + 48, 256))
    self.assertEqual(decoder["conv1"]["conv"]["kernel"].shape, (3, 3, 256, 256))
    sep = abstract_init(models.create("deeplabv3plus_xception", num_classes=3))["params"]
    # DeepLab's tap: 256 channels of entry block 2 projected to 48.
    self.assertEqual(sep["decoder"]["low_level_proj"]["conv"]["kernel"].shape, (1, 1, 256, 48))
    self.assertEqual(sep["decoder"]["conv0"]["conv"]["depthwise"]["kernel"].shape,
                     (3, 3, 1, 256 + 48))
    self.assertIn("depthwise", sep["neck"]["atrous0"]["conv"])

  def test_bad_output_stride(self):
    with self.assertRaisesRegex(ValueError, "output_stride"):
      abstract_init(models.create("deeplabv3", num_classes=3,
                                  backbone_kwargs={"output_stride": 4}))


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
      ("fcn16s", ["score16", "upscore16"]),
      ("fcn8s", ["score16", "score8", "upscore16", "upscore8"]),
  )
  def test_skip_layers(self, name, skips):
    params = abstract_init(models.create(name, num_classes=3, backbone_kwargs=TINY_VGG,
                                         neck_kwargs=dict(features=8)))["params"]
    self.assertEqual(sorted(params), ["backbone", "decoder", "neck"])
    self.assertEqual(sorted(params["decoder"]), sorted(["score_fr"] + skips))
    self.assertEqual(params["neck"]["fc6"]["kernel"].shape, (7, 7, 8, 8))

  def test_fused_skips_start_at_zero(self):
    # As in the paper, training starts from the coarse prediction: skip scores are zero.
    model = models.create("fcn8s", num_classes=3, backbone_kwargs=TINY_VGG,
                          neck_kwargs=dict(features=8))
    params = fast_jit(lambda x: model.init(KEY, x, train=False))(jnp.zeros((1, 64, 64, 3)))
    params = params["params"]["decoder"]
    for name in ("score8", "score16"):
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


class DtypeTest(absltest.TestCase):

  def test_bfloat16_close_to_float32(self):
    kwargs = dict(num_classes=3, backbone_kwargs=dict(widths=(4, 8, 8), blocks=1, se_reduction=2),
                  neck_kwargs=dict(features=8), decoder_kwargs=dict(widths=(8, 4)))
    f32 = models.create("asym_unet", **kwargs)
    bf16 = models.create("asym_unet", dtype="bfloat16", **kwargs)
    x = jax.random.normal(jax.random.key(0), (2, 33, 35, 3))
    variables = fast_jit(lambda x: f32.init(KEY, x, train=False))(x)
    out32, out16 = fast_jit(lambda v, x: (f32.apply(v, x, train=False),
                                          bf16.apply(v, x, train=False)))(variables, x)
    self.assertEqual(out16.dtype, jnp.float32)
    np.testing.assert_allclose(out16, out32, atol=0.1 * float(jnp.std(out32)) + 1e-3)



class DenseFromClassifierTest(parameterized.TestCase):
  """A classifier trained as a segmentation model: the same parameters, logits at every pixel."""

  @parameterized.parameters(("mlp", {"hidden": (8,), "dropout": 0.5}),
                            ("simple_cnn", {"widths": (4,)}))
  def test_same_variables_and_logits_at_every_pixel(self, name, kwargs):
    x = jax.random.normal(KEY, (2, 16, 24, 3))
    bare = models.create(name, num_classes=3, **kwargs)
    dense = models.create(name, num_classes=3, dense=True, **kwargs)
    self.assertIsInstance(dense, segmentation.DenseFromClassifier)

    @fast_jit
    def run(x):
      variables = bare.init(KEY, x, train=False)
      out = {"dense_init": dense.init(KEY, x, train=False)}
      for train in (False, True):  # dropout and BatchNorm in training mode alike
        for key, model in (("bare", bare), ("dense", dense)):
          out[f"{key} {train}"] = model.apply(variables, x, train=train,
                                              rngs={"dropout": DROPOUT_KEY},
                                              mutable=["batch_stats"])
      return variables, out

    variables, out = run(x)
    jax.tree.map(np.testing.assert_array_equal, out["dense_init"], variables)
    for train in (False, True):
      (logits, updates), (dense_logits, dense_updates) = out[f"bare {train}"], out[f"dense {train}"]
      self.assertEqual((dense_logits.shape, dense_logits.dtype), ((2, 16, 24, 3), jnp.float32))
      np.testing.assert_array_equal(dense_logits, np.broadcast_to(
          np.asarray(logits)[:, None, None, :], dense_logits.shape))
      jax.tree.map(np.testing.assert_array_equal, dense_updates, updates)

  def test_segmentation_models_are_dense_already(self):
    model = models.create("unet", num_classes=3, dense=True, backbone_kwargs={"widths": (4,)})
    self.assertIsInstance(model, segmentation.SegmentationModel)


if __name__ == "__main__":
  absltest.main()
