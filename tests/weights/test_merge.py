"""merge_variables: grafting a pretrained backbone or model into a freshly initialised tree."""

from absl.testing import absltest
import jax
import numpy as np

from seg_jax import models
from seg_jax import weights
from tests.models.testing import random_variables

X = np.zeros((1, 64, 64, 3), np.float32)


def variables_of(name, num_classes, seed, **kwargs):
  return random_variables(models.create(name, num_classes=num_classes, **kwargs), X, seed)


class MergeTest(absltest.TestCase):

  def test_classifier_into_segmentation_backbone(self):
    imported = variables_of("resnet18", 1000, seed=1, width=4)
    initial = variables_of("deeplabv3plus", 3, seed=2, backbone="resnet18",
                           backbone_kwargs=dict(width=4), neck_kwargs=dict(features=8),
                           decoder_kwargs=dict(features=8))
    merged, provenance = weights.merge_variables(initial, imported, into="backbone",
                                                 skip=("params/fc/",))
    np.testing.assert_array_equal(merged["params"]["backbone"]["layer2"]["block1"]["conv2"]["kernel"],
                                  imported["params"]["layer2"]["block1"]["conv2"]["kernel"])
    np.testing.assert_array_equal(merged["batch_stats"]["backbone"]["bn1"]["bn"]["var"],
                                  imported["batch_stats"]["bn1"]["bn"]["var"])
    np.testing.assert_array_equal(merged["params"]["head"]["classifier"]["kernel"],
                                  initial["params"]["head"]["classifier"]["kernel"])
    self.assertEqual(provenance["params/fc/kernel"], "skipped")
    for path, origin in provenance.items():
      if path.startswith(("params/backbone/", "batch_stats/backbone/")):
        self.assertEqual(origin, "imported", path)
      elif path.startswith(("params/neck", "params/decoder", "params/head")):
        self.assertEqual(origin, "initialised", path)
    self.assertEqual(jax.tree.structure(merged), jax.tree.structure(initial))

  def test_head_with_another_class_count(self):
    kwargs = dict(backbone_kwargs=dict(width=4), head_kwargs=dict(features=8))
    imported = variables_of("fcn_resnet50", 21, seed=1, **kwargs)
    initial = variables_of("fcn_resnet50", 6, seed=2, **kwargs)
    with self.assertRaisesRegex(ValueError, r"mis-shaped \['params/head/classifier/bias"):
      weights.merge_variables(initial, imported)
    merged, provenance = weights.merge_variables(initial, imported,
                                                 reinit=("params/head/classifier/",))
    self.assertStartsWith(provenance["params/head/classifier/kernel"], "re-initialised")
    self.assertEqual(provenance["params/head/conv/conv/kernel"], "imported")
    np.testing.assert_array_equal(merged["params"]["head"]["classifier"]["kernel"],
                                  initial["params"]["head"]["classifier"]["kernel"])

  def test_leaf_without_a_place_is_an_error(self):
    imported = variables_of("resnet18", 10, seed=1, width=4)
    initial = variables_of("fcn_resnet50", 3, seed=2, backbone="resnet18",
                           backbone_kwargs=dict(width=4), head_kwargs=dict(features=8))
    with self.assertRaisesRegex(ValueError, r"under backbone: no place for \['params/fc/bias'"):
      weights.merge_variables(initial, imported, into="backbone")


if __name__ == "__main__":
  absltest.main()
