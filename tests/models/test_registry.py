"""Every registered model builds, runs at two sizes in train and eval mode, and keeps dtypes."""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from seg_jax import models
from seg_jax.models import asym_unet
from tests.models.testing import (
    DROPOUT_KEY, FAST_COMPILE, KEY, TINY_RESNET, TINY_VGG, TINY_XCEPTION65, host_init)

# Smallest settings of each registered model that still run every code path of its family.
TINY = {
    "unet": dict(backbone_kwargs=dict(widths=(4, 8, 16, 32, 64), dropout_rate=0.5)),
    "asym_unet": dict(backbone_kwargs=dict(widths=(4, 8, 8, 16, 16), se_reduction=2),
                      neck_kwargs=dict(features=8),
                      decoder_kwargs=dict(widths=(8, 8, 4, 4), se=True, skip_se=True,
                                          se_reduction=2)),
    "unetpp_resnet34": dict(backbone_kwargs=TINY_RESNET,
                            decoder_kwargs=dict(widths=(8, 8, 4, 4, 4))),
    "deeplabv3": dict(backbone_kwargs=TINY_RESNET, neck_kwargs=dict(features=8)),
    "deeplabv3plus": dict(backbone_kwargs=TINY_RESNET, neck_kwargs=dict(features=8),
                          decoder_kwargs=dict(low_level_features=4, features=8)),
    "deeplabv3plus_xception": dict(backbone_kwargs=TINY_XCEPTION65, neck_kwargs=dict(features=8),
                                   decoder_kwargs=dict(low_level_features=4, features=8)),
    "deeplabv3_resnet50": dict(backbone_kwargs=TINY_RESNET, neck_kwargs=dict(features=8),
                               head_kwargs=dict(features=8)),
    "fcn32s": dict(backbone_kwargs=TINY_VGG, neck_kwargs=dict(features=16)),
    "fcn16s": dict(backbone_kwargs=TINY_VGG, neck_kwargs=dict(features=16)),
    "fcn8s": dict(backbone_kwargs=TINY_VGG, neck_kwargs=dict(features=16)),
    "fcn_resnet50": dict(backbone_kwargs=TINY_RESNET, head_kwargs=dict(features=8)),
    "googlenet": dict(width_divisor=16),
    "resnet18": dict(width=4),
    "resnet34": dict(width=4),
    # The depths are the backbone tests' business; these check the registered names.
    "resnet50": dict(width=4, stage_sizes=(1, 1, 2, 1)),
    "resnet101": dict(width=4, stage_sizes=(1, 1, 2, 1)),
    "vgg16": dict(widths=(4, 4, 8, 8, 8), hidden=16),
    "xception": dict(width_divisor=16, middle_repeats=1),
    "mlp": dict(hidden=(16,), dropout=0.5),
    "simple_cnn": dict(widths=(4, 8, 8)),
}

SEGMENTATION = ("unet", "asym_unet", "unetpp_resnet34", "deeplabv3", "deeplabv3plus",
                "deeplabv3plus_xception", "deeplabv3_resnet50", "fcn32s", "fcn16s", "fcn8s",
                "fcn_resnet50")
REQUIRED = SEGMENTATION + ("xception", "googlenet", "resnet18", "resnet34", "resnet50",
                           "resnet101", "vgg16", "mlp", "simple_cnn")

NUM_CLASSES = 3


def sizes(name):
  """Two input sizes for ``name``: even and odd for segmentation, from the minimum otherwise."""
  if models.is_segmentation(name):
    return (64, 96), (65, 97)
  m = models.min_input_size(name)
  return (m, m), (m + 1, m + 3)


def has_fixed_input_size(name):
  """Whether the parameter shapes depend on the input size (flattening classifiers)."""
  return name == "mlp"


class RegistryTest(parameterized.TestCase):

  def test_required_names_available(self):
    self.assertContainsSubset(REQUIRED, models.available())

  def test_every_name_has_a_tiny_setting(self):
    self.assertCountEqual(models.available(), TINY)

  def test_kinds_and_min_sizes(self):
    for name in models.available():
      self.assertEqual(models.is_segmentation(name), name in SEGMENTATION, name)
      self.assertGreaterEqual(models.min_input_size(name), 1)
    self.assertEqual(models.min_input_size("unet"), 32)
    self.assertEqual(models.min_input_size("resnet50"), 32)

  def test_kind_is_a_field_of_the_model_class(self):
    for name in models.available():
      model = models.create(name, num_classes=NUM_CLASSES, **TINY[name])
      self.assertEqual(models.is_segmentation(name), type(model).task == "segmentation", name)
      self.assertEqual(models.min_input_size(name), type(model).min_input_size, name)

  def test_ablations(self):
    self.assertEqual(models.ablations("asym_unet"), sorted(asym_unet.ABLATIONS))
    self.assertEqual(models.ablations("unet"), [])
    with self.assertRaisesRegex(ValueError, "unet2"):
      models.ablations("unet2")

  def test_unknown_name_raises(self):
    with self.assertRaisesRegex(ValueError, "unet2"):
      models.create("unet2", num_classes=3)
    with self.assertRaisesRegex(ValueError, "unet2"):
      models.is_segmentation("unet2")

  def test_bad_arguments_raise(self):
    with self.assertRaisesRegex(ValueError, "num_classes"):
      models.create("unet", num_classes=0)
    with self.assertRaisesRegex(ValueError, "dtype"):
      models.create("unet", num_classes=3, dtype="float99")
    with self.assertRaisesRegex(ValueError, "no_such_field"):
      models.create("unet", num_classes=3, no_such_field=1)

  def test_dtype_by_name(self):
    self.assertEqual(models.create("unet", num_classes=3, dtype="bfloat16").dtype, jnp.bfloat16)

  def test_count_params_ignores_batch_stats(self):
    variables = {"params": {"a": {"kernel": np.zeros((3, 4))}, "b": np.zeros(5)},
                 "batch_stats": {"mean": np.zeros(7)}}
    self.assertEqual(models.count_params(variables), 17)


class ForwardTest(parameterized.TestCase):
  """Eval at one size and train at another; checks shapes, dtypes, finiteness and BatchNorm."""

  @parameterized.named_parameters((n, n) for n in sorted(TINY))
  def test_train_and_eval(self, name):
    model = models.create(name, num_classes=NUM_CLASSES, **TINY[name])
    (ha, wa), (hb, wb) = sizes(name)
    xa = jax.random.normal(jax.random.key(2), (2, ha, wa, 3))
    xb = jax.random.normal(jax.random.key(3), (2, hb, wb, 3))
    variables = host_init(model, xa)
    train_variables = host_init(model, xb) if has_fixed_input_size(name) else variables

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run(variables, train_variables, xa, xb):
      # No dropout rng in eval mode: dropout must be off there.
      evaluation = model.apply(variables, xa, train=False, mutable=["batch_stats"])
      train = model.apply(train_variables, xb, train=True, rngs={"dropout": DROPOUT_KEY},
                          mutable=["batch_stats"])
      return evaluation, train

    (eval_out, eval_vars), (train_out, train_vars) = run(variables, train_variables, xa, xb)
    for out, (h, w) in ((eval_out, (ha, wa)), (train_out, (hb, wb))):
      expected = (2, h, w, NUM_CLASSES) if models.is_segmentation(name) else (2, NUM_CLASSES)
      self.assertEqual(out.shape, expected)
      self.assertEqual(out.dtype, jnp.float32)
      self.assertTrue(np.isfinite(np.asarray(out)).all())

    stats = train_variables.get("batch_stats")
    if stats is None:
      self.assertNotIn("batch_stats", eval_vars)
      return
    unchanged = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), variables["batch_stats"],
                             eval_vars["batch_stats"])
    self.assertTrue(all(jax.tree.leaves(unchanged)))
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), stats, train_vars["batch_stats"])
    self.assertTrue(all(jax.tree.leaves(changed)))

  @parameterized.named_parameters((n, n) for n in sorted(TINY))
  def test_bfloat16_compute_keeps_float32_params_and_logits(self, name):
    model = models.create(name, num_classes=NUM_CLASSES, dtype=jnp.bfloat16, **TINY[name])
    (h, w), _ = sizes(name)
    x = jax.ShapeDtypeStruct((2, h, w, 3), jnp.float32)
    out, variables = jax.eval_shape(
        lambda x: model.init_with_output(KEY, x, train=False), x)
    self.assertTrue(all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables)))
    self.assertEqual(out.dtype, jnp.float32)


class GradientTest(parameterized.TestCase):
  """A jitted train-mode backward pass runs and gives finite, non-zero gradients (for the models
  whose train step tests/test_train.py does not run)."""

  @parameterized.named_parameters(("fcn32s", "fcn32s"), ("fcn16s", "fcn16s"),
                                  ("deeplabv3", "deeplabv3"))
  def test_value_and_grad(self, name):
    model = models.create(name, num_classes=NUM_CLASSES, **TINY[name])
    x = jax.random.normal(jax.random.key(2), (2, 33, 40, 3))
    variables = host_init(model, x)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def grads(params):
      def loss(params):
        logits, _ = model.apply({**variables, "params": params}, x, train=True,
                                rngs={"dropout": DROPOUT_KEY}, mutable=["batch_stats"])
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[..., 0])
      return jax.grad(loss)(params)

    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads(variables["params"]))]
    self.assertTrue(np.isfinite(norms).all())
    self.assertGreater(sum(norms), 0.0)


if __name__ == "__main__":
  absltest.main()
