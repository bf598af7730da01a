"""Tests of seg_jax.compilation: compiles counted per function, the persistent cache per run."""

import os
import tempfile
from unittest import mock

from absl.testing import absltest
import jax
import jax.numpy as jnp

from seg_jax import compilation
from seg_jax import train

from tests.train_testing import default_config, tiny_config, tiny_dataset  # pylint: disable=g-multiple-import

STEPS = ("jit(init)", "jit(train_step)", "jit(eval_step)")


class PersistentCacheTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    # The cache folder is process-wide: put back the tests' one afterwards.
    self.addCleanup(compilation.use_persistent_cache,
                    default_config.get_config().train.compilation_cache_dir)

  def test_default_folder_is_per_user(self):
    with mock.patch.dict(os.environ, {"XDG_CACHE_HOME": "/somewhere"}):
      self.assertEqual(default_config.get_config().train.compilation_cache_dir,
                       "/somewhere/seg_jax/jax")
    with mock.patch.dict(os.environ, {"XDG_CACHE_HOME": ""}):
      self.assertEqual(default_config.get_config().train.compilation_cache_dir,
                       os.path.join("~", ".cache", "seg_jax", "jax"))

  def test_empty_folder_turns_the_cache_off(self):
    folder = tempfile.mkdtemp()
    compilation.use_persistent_cache(folder)
    self.assertEqual(jax.config.jax_compilation_cache_dir, folder)
    compilation.use_persistent_cache("")
    self.assertIsNone(jax.config.jax_compilation_cache_dir)
    x = jnp.ones(3)

    def affine(x):
      return x * 3 + 1

    with compilation.CompileLog() as log:
      jax.jit(affine)(x)
    self.assertEqual(log.compiles["jit(affine)"], 1)
    self.assertEqual(log.cache_hits["jit(affine)"], 0)
    self.assertEqual(os.listdir(folder), [])

  def test_steps_compile_once_per_run_and_a_second_run_loads_them(self):
    # Two runs of the same config, each with two evaluations and two checkpoints, in the tests'
    # cache folder (which a previous test process may have filled already).
    logs = []
    for _ in range(2):
      with compilation.CompileLog() as log:
        train.train_and_evaluate(tiny_config(), tempfile.mkdtemp(), tiny_dataset())
      logs.append(log)
    for name in STEPS:
      self.assertEqual(logs[0].compiles[name], 1, name)
      self.assertEqual(logs[1].compiles[name], 1, name)
      self.assertEqual(logs[1].cache_hits[name], 1, name)  # loaded, not compiled


if __name__ == "__main__":
  absltest.main()
