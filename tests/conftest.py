"""Test-wide settings: a persistent compilation cache shared by all test processes."""

import os

import jax

jax.config.update("jax_compilation_cache_dir",
                  os.path.join(os.path.dirname(__file__), "..", ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: over ~10 s on 2 cores (training subprocesses, reference models), each "
      "saying why; still part of the suite, deselect with -m 'not slow' while iterating")
