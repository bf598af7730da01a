"""Keras' Xception (random weights, random BatchNorm statistics) against seg_jax's, imported."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import tempfile  # pylint: disable=g-import-not-at-top,wrong-import-position

from absl.testing import absltest
import jax
import keras
import numpy as np
import pytest

from seg_jax import models
from seg_jax import weights
from seg_jax.weights import keras_layout

# Keras' smallest Xception input; the comparison holds at any size.
SIZE = 71
# seg_jax Xception stage -> index of the Keras Add layer (or name of the layer) giving it, and the
# seg_jax module whose output it is.
STAGES = {"stem": ("block1_conv2_act", "block1_conv2"), "low_level": (0, "block2"),
          "mid_level": (1, "block3"), "entry": (2, "block4"), "middle": (10, "block12"),
          "exit": ("block14_sepconv2_act", "block14")}


def random_keras_xception():
  """keras.applications.Xception with every weight random, BatchNorm statistics included."""
  model = keras.applications.Xception(weights=None, input_shape=(SIZE, SIZE, 3),
                                      classifier_activation=None)
  rng = np.random.default_rng(0)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      gamma, beta, mean, var = layer.get_weights()
      layer.set_weights([rng.normal(1, 0.2, gamma.shape), rng.normal(0, 0.2, beta.shape),
                         rng.normal(0, 0.2, mean.shape), rng.uniform(0.5, 1.5, var.shape)])
    elif isinstance(layer, keras.layers.Dense):
      kernel, bias = layer.get_weights()
      layer.set_weights([kernel, rng.normal(0, 0.2, bias.shape)])
  return model


@pytest.mark.slow
class XceptionParityTest(absltest.TestCase):
  """Builds Keras' Xception once (about 15 s of CPU on its own, most of this test's time).

  One test, so that pytest-xdist never builds the Keras model on two workers.
  """

  def test_import_matches_keras_output_for_output(self):
    keras_model = random_keras_xception()
    x = np.random.default_rng(1).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
    adds = [layer for layer in keras_model.layers if isinstance(layer, keras.layers.Add)]
    outputs = {stage: (adds[at] if isinstance(at, int) else keras_model.get_layer(at)).output
               for stage, (at, _) in STAGES.items()}
    probe = keras.Model(keras_model.input, {**outputs, "logits": keras_model.output})
    expected = {k: np.asarray(v) for k, v in probe(x, training=False).items()}

    variables = weights.from_keras("xception", keras_model)
    model = models.create("xception", num_classes=1000)
    logits, state = jax.jit(lambda v, x: model.apply(
        v, x, train=False, capture_intermediates=lambda m, _: True))(variables, x)
    np.testing.assert_allclose(logits, expected["logits"], rtol=1e-4,
                               atol=1e-4 * np.abs(expected["logits"]).max())
    for stage, (_, module) in STAGES.items():
      ours = np.asarray(state["intermediates"][module]["__call__"][0])
      np.testing.assert_allclose(ours, expected[stage], rtol=1e-4,
                                 atol=1e-4 * np.abs(expected[stage]).max(), err_msg=stage)

    with tempfile.TemporaryDirectory() as folder:
      h5 = os.path.join(folder, "xception.weights.h5")
      keras_model.save_weights(h5)
      whole = os.path.join(folder, "xception.keras")
      keras_model.save(whole)
      for path in (h5, whole):
        jax.tree.map(np.testing.assert_array_equal, weights.from_keras("xception", path),
                     variables)


class KerasLayoutTest(absltest.TestCase):

  def test_another_architecture_is_rejected(self):
    other = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
                              keras.layers.BatchNormalization(), keras.layers.Flatten(),
                              keras.layers.Dense(10)])
    with self.assertRaisesRegex(ValueError, r"missing \[.*layers/separable_conv2d/vars/0"):
      weights.from_keras("xception", other)
    with self.assertRaisesRegex(ValueError, "Keras layout is known for"):
      weights.from_keras("resnet50", other)
    with self.assertRaisesRegex(ValueError, ".keras or .weights.h5"):
      weights.from_keras("xception", "xception.h5")

  def test_names_follow_keras_layer_order(self):
    # The k-th Keras layer of a class is the k-th seg_jax module of that kind in model order.
    names = keras_layout.h5_names("xception")
    self.assertEqual(names["params/block1_conv1/conv/kernel"], "layers/conv2d/vars/0")
    self.assertEqual(names["params/block2/skip/conv/kernel"], "layers/conv2d_2/vars/0")
    self.assertEqual(names["batch_stats/block2/skip/norm/bn/var"],
                     "layers/batch_normalization_4/vars/3")
    self.assertEqual(names["params/block14/sepconv2/pointwise/kernel"],
                     "layers/separable_conv2d_33/vars/1")
    self.assertLen(names, 236)  # Every var of the Keras model.


if __name__ == "__main__":
  absltest.main()
