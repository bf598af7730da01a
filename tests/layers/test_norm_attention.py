"""Tests of normalisation, dropout, activations, Squeeze-and-Excitation, scSE and ASPP."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from seg_jax import layers

KEY = jax.random.key(0)


def rand(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 3 + 1


class NormTest(parameterized.TestCase):

  def test_batch_norm_train_uses_batch_stats_and_updates_running_stats(self):
    x = rand((4, 5, 5, 3))
    norm = layers.Norm("batch")
    variables = norm.init(KEY, x, train=False)
    y, updates = norm.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(y).mean(axis=(0, 1, 2)), 0, atol=1e-5)
    mean = np.asarray(updates["batch_stats"]["bn"]["mean"])
    np.testing.assert_allclose(mean, 0.1 * x.mean(axis=(0, 1, 2)), rtol=1e-4)
    # Eval mode uses the running statistics and changes nothing.
    y_eval = norm.apply(variables, x, train=False)
    np.testing.assert_allclose(y_eval, x / np.sqrt(1 + 1e-5), rtol=1e-5)

  @parameterized.parameters(
      ("group", lambda x: x.reshape(2, -1, 2, 4).transpose(0, 2, 1, 3).reshape(2, 2, -1)),
      ("layer", lambda x: x.reshape(2, -1, 8)),
      ("instance", lambda x: x.reshape(2, -1, 8).transpose(0, 2, 1)),
  )
  def test_per_sample_norms_normalise_their_groups(self, kind, groups_of):
    x = rand((2, 4, 4, 8))
    norm = layers.Norm(kind, num_groups=2)
    y = np.asarray(norm.apply(norm.init(KEY, x, train=False), x, train=True))
    g = groups_of(y)
    np.testing.assert_allclose(g.mean(axis=-1), 0, atol=1e-4)
    np.testing.assert_allclose(g.std(axis=-1), 1, atol=1e-2)

  def test_none_is_identity(self):
    x = rand((1, 2, 2, 3))
    np.testing.assert_array_equal(layers.Norm("none").apply({}, x, train=True), x)

  def test_bfloat16_keeps_float32_statistics(self):
    x = jnp.asarray(rand((2, 4, 4, 3)), jnp.bfloat16)
    norm = layers.Norm("batch", dtype=jnp.bfloat16)
    variables = norm.init(KEY, x, train=False)
    y, updates = norm.apply(variables, x, train=True, mutable=["batch_stats"])
    self.assertEqual(y.dtype, jnp.bfloat16)
    self.assertEqual(updates["batch_stats"]["bn"]["var"].dtype, jnp.float32)

  def test_bad_input(self):
    with self.assertRaisesRegex(ValueError, "norm must be one of"):
      layers.Norm("weight").init(KEY, jnp.ones((1, 2, 2, 3)), train=False)
    with self.assertRaisesRegex(ValueError, "num_groups=32"):
      layers.Norm("group").init(KEY, jnp.ones((1, 2, 2, 12)), train=False)


class DropoutActivationTest(parameterized.TestCase):

  def test_dropout_only_in_train(self):
    x = jnp.ones((2, 8, 8, 16))
    drop = layers.Dropout(0.5)
    np.testing.assert_array_equal(drop.apply({}, x, train=False), x)
    y = np.asarray(drop.apply({}, x, train=True, rngs={"dropout": KEY}))
    self.assertTrue(set(np.unique(y).tolist()) <= {0.0, 2.0})
    self.assertBetween(float((y == 0).mean()), 0.4, 0.6)

  def test_spatial_dropout_drops_whole_channels(self):
    x = jnp.ones((4, 6, 6, 32))
    y = np.asarray(layers.SpatialDropout(0.5).apply({}, x, train=True, rngs={"dropout": KEY}))
    per_channel = y.reshape(4, 36, 32)
    self.assertTrue(np.all(per_channel.min(axis=1) == per_channel.max(axis=1)))
    self.assertTrue(0 < (per_channel[:, 0] == 0).mean() < 1)

  def test_bad_rate(self):
    with self.assertRaisesRegex(ValueError, "rate"):
      layers.Dropout(1.5).apply({}, jnp.ones((1, 2)), train=True, rngs={"dropout": KEY})

  @parameterized.parameters(
      ("relu", lambda v: np.maximum(v, 0)),
      ("relu6", lambda v: np.clip(v, 0, 6)),
      ("leaky_relu", lambda v: np.where(v > 0, v, 0.01 * v)),
      ("elu", lambda v: np.where(v > 0, v, np.expm1(v))),
      ("sigmoid", lambda v: 1 / (1 + np.exp(-v))),
      ("tanh", np.tanh),
      ("silu", lambda v: v / (1 + np.exp(-v))),
      ("swish", lambda v: v / (1 + np.exp(-v))),
      ("gelu", lambda v: v * 0.5 * (1 + np.vectorize(__import__("math").erf)(v / np.sqrt(2)))),
      ("softmax", lambda v: np.exp(v) / np.exp(v).sum(-1, keepdims=True)),
      ("identity", lambda v: v),
  )
  def test_activation_by_name(self, name, reference):
    v = np.linspace(-8, 8, 12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_allclose(layers.activation(name)(v), reference(v), rtol=1e-5, atol=1e-6)
    self.assertIn(name, layers.ACTIVATIONS)

  def test_unknown_activation(self):
    with self.assertRaisesRegex(ValueError, "'mish'"):
      layers.activation("mish")


class AttentionTest(parameterized.TestCase):

  @parameterized.parameters(jnp.float32, jnp.bfloat16)
  def test_squeeze_excitation_gate(self, dtype):
    x = jnp.asarray(rand((2, 6, 7, 32)), dtype)
    se = layers.SqueezeExcitation(reduction=4, dtype=dtype)
    variables = se.init(KEY, x)
    self.assertEqual(variables["params"]["reduce"]["kernel"].shape, (32, 8))
    y, state = se.apply(variables, x, mutable=["intermediates"])
    gate = np.asarray(state["intermediates"]["gate"][0], np.float32)
    self.assertEqual(y.shape, x.shape)
    self.assertEqual(y.dtype, dtype)
    self.assertEqual(gate.shape, (2, 1, 1, 32))
    self.assertTrue(np.all((gate > 0) & (gate < 1)))
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(x, np.float32) * gate,
                               rtol=2e-2, atol=2e-2)

  def test_se_gate_depends_on_the_image_only_through_channel_means(self):
    x = rand((1, 6, 6, 16))
    shuffled = x[:, ::-1, ::-1]
    se = layers.SqueezeExcitation(reduction=2)
    variables = se.init(KEY, x)
    _, a = se.apply(variables, x, mutable=["intermediates"])
    _, b = se.apply(variables, shuffled, mutable=["intermediates"])
    np.testing.assert_allclose(a["intermediates"]["gate"][0], b["intermediates"]["gate"][0],
                               rtol=1e-5)

  def test_scse(self):
    x = rand((2, 5, 5, 16))
    block = layers.SCSE(reduction=4)
    y, state = block.apply(block.init(KEY, x), x, mutable=["intermediates"])
    self.assertEqual(y.shape, x.shape)
    gate = np.asarray(state["intermediates"]["spatial_gate"][0])
    self.assertEqual(gate.shape, (2, 5, 5, 1))
    self.assertTrue(np.all((gate > 0) & (gate < 1)))

  @parameterized.parameters(
      ((7, 9), (6, 12, 18), True, False),
      ((5, 5), (1, 2, 3, 4), False, False),
      ((11, 3), (2,), True, True),
      ((1, 1), (6, 12, 18), True, False),
  )
  def test_aspp_any_size_and_rates(self, spatial, rates, image_pooling, separable):
    x = rand((2, *spatial, 8))
    aspp = layers.ASPP(features=16, rates=rates, image_pooling=image_pooling,
                       separable=separable, dropout_rate=0.1)
    variables = aspp.init(KEY, x, train=False)
    branches = [k for k in variables["params"] if k.startswith("atrous")]
    self.assertLen(branches, len(rates))
    self.assertEqual("image_pool" in variables["params"], image_pooling)
    self.assertEqual(variables["params"]["project"]["conv"]["kernel"].shape[-2],
                     16 * (1 + len(rates) + int(image_pooling)))
    y, _ = aspp.apply(variables, x, train=True, rngs={"dropout": KEY}, mutable=["batch_stats"])
    self.assertEqual(y.shape, (2, *spatial, 16))
    self.assertTrue(np.all(np.isfinite(y)))
    y_eval = aspp.apply(variables, x, train=False)
    self.assertTrue(np.all(np.isfinite(y_eval)))

  def test_aspp_bfloat16(self):
    x = rand((2, 9, 9, 4))
    aspp = layers.ASPP(features=8, rates=(2, 4), dtype=jnp.bfloat16)
    variables = aspp.init(KEY, x, train=False)
    y = aspp.apply(variables, x, train=False)
    self.assertEqual(y.dtype, jnp.bfloat16)
    self.assertEqual(variables["params"]["conv1x1"]["conv"]["kernel"].dtype, jnp.float32)


if __name__ == "__main__":
  absltest.main()
