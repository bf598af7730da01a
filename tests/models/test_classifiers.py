"""Tests of the MLP and SimpleCNN classifiers."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from seg_jax import models
from seg_jax.models import classifiers
from tests.models.testing import KEY, check_train_and_eval


class MLPTest(parameterized.TestCase):

  def test_matches_numpy_forward(self):
    model = classifiers.MLP(num_classes=3, hidden=(6, 5), act="tanh")
    x = jax.random.normal(jax.random.key(1), (2, 4, 5, 3))
    variables = model.init(KEY, x, train=False)
    p = jax.tree.map(np.asarray, variables["params"])
    h = np.asarray(x).reshape(2, -1)
    for name in ("dense0", "dense1"):
      h = np.tanh(h @ p[name]["kernel"] + p[name]["bias"])
    expected = h @ p["head"]["kernel"] + p["head"]["bias"]
    np.testing.assert_allclose(model.apply(variables, x, train=False), expected, rtol=1e-5,
                               atol=1e-5)

  def test_param_count_on_32x32_patches(self):
    model = classifiers.MLP(num_classes=10)
    variables = jax.eval_shape(lambda: model.init(KEY, jnp.zeros((1, 32, 32, 3)), train=False))
    expected = (32 * 32 * 3 * 512 + 512) + (512 * 256 + 256) + (256 * 10 + 10)
    self.assertEqual(models.count_params(variables), expected)

  def test_dropout_only_in_train_and_bfloat16_logits_float32(self):
    model = classifiers.MLP(num_classes=4, hidden=(64,), dropout=0.5, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    variables = model.init(KEY, x, train=False)
    eval_out = model.apply(variables, x, train=False)  # No dropout rng needed.
    train_a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    train_b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(3)})
    self.assertEqual(eval_out.dtype, jnp.float32)
    self.assertEqual(eval_out.shape, (2, 4))
    self.assertFalse(np.array_equal(train_a, train_b))
    # Eval mode must equal the same model without dropout.
    no_dropout = model.clone(dropout=0.0).apply(variables, x, train=False)
    np.testing.assert_array_equal(eval_out, no_dropout)


class SimpleCNNTest(parameterized.TestCase):

  @parameterized.named_parameters(
      # conv 3*3*3*4 + BN 8, conv 3*3*4*8 + BN 16, head 8*3 + 3.
      ("shared", True, 108 + 8 + 288 + 16 + 27),
      # The same kernels at each of 16x16 and 8x8 output positions.
      ("unshared", False, 16 * 16 * 108 + 8 + 8 * 8 * 288 + 16 + 27),
  )
  def test_param_count(self, share_weights, expected):
    model = classifiers.SimpleCNN(num_classes=3, widths=(4, 8), share_weights=share_weights)
    variables = jax.eval_shape(lambda: model.init(KEY, jnp.zeros((1, 16, 16, 3)), train=False))
    self.assertEqual(models.count_params(variables), expected)

  @parameterized.named_parameters(("shared", True), ("unshared", False))
  def test_train_and_eval(self, share_weights):
    model = classifiers.SimpleCNN(num_classes=5, widths=(4, 8), convs_per_stage=2, dropout=0.2,
                                  share_weights=share_weights, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(1), (2, 17, 23, 3))
    variables = jax.jit(lambda x: model.init(KEY, x, train=False))(x)
    self.assertNotEmpty(variables["batch_stats"])
    check_train_and_eval(self, model, variables, x, (2, 5))

  @parameterized.parameters(((4, 8, 16), 8), ((4, 8), 4), ((4, 4, 4, 4), 16))
  def test_too_small_input(self, widths, smallest):
    # min_input_size is for the default three stages; other depths need 2 ** len(widths).
    model = classifiers.SimpleCNN(widths=widths)
    with self.assertRaisesRegex(ValueError, f"H, W >= {smallest}"):
      jax.eval_shape(lambda: model.init(KEY, jnp.zeros((1, smallest - 1, 32, 3)), train=False))
    jax.eval_shape(lambda: model.init(KEY, jnp.zeros((1, smallest, 32, 3)), train=False))

  def test_min_input_size_is_that_of_the_default_widths(self):
    self.assertEqual(classifiers.SimpleCNN.min_input_size, 2 ** len(classifiers.SimpleCNN.widths))


if __name__ == "__main__":
  absltest.main()
