"""Checks against the real Dubai aerial files in ../shared/data (skipped when absent)."""

import os

from absl.testing import absltest
import numpy as np

from seg_jax import data
from seg_jax.data import dubai
from tests.data import fixtures

# Pixel shares (%) over all 72 masks as stated in the dataset README.
README_SHARES = {"land": 52.4, "water": 13.6, "building": 13.3, "vegetation": 10.3,
                 "road": 9.4, "unlabeled": 0.5, "black": 0.56}


@absltest.skipUnless(os.path.isdir(fixtures.SHARED_DUBAI), "no ../shared/data/dubai_aerial")
class SharedDubaiTest(absltest.TestCase):

  def test_class_shares_of_all_72_masks_match_readme(self):
    pairs = dubai.find_pairs(fixtures.SHARED_DUBAI)
    self.assertLen(pairs, 72)
    counts = np.zeros(256, np.int64)
    for pair in pairs:
      rgb = dubai.read_image(pair.mask_path)
      label, unknown = data.decode_mask(rgb, data.palettes.DUBAI_AERIAL, return_unknown=True)
      self.assertEqual(unknown, 0, pair.mask_path)
      counts += np.bincount(label.ravel(), minlength=256)
    share = 100.0 * counts / counts.sum()
    for i, name in enumerate(data.palettes.DUBAI_AERIAL.names):
      self.assertAlmostEqual(share[i], README_SHARES[name], delta=0.1, msg=name)
    self.assertAlmostEqual(share[255], README_SHARES["black"], delta=0.1)
    self.assertEqual(counts[6:255].sum(), 0)


if __name__ == "__main__":
  absltest.main()
