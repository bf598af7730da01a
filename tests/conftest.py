"""Test-wide settings: a persistent compilation cache shared by all test processes."""

import os

import jax

jax.config.update("jax_compilation_cache_dir",
                  os.path.join(os.path.dirname(__file__), "..", ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_configure(config):
  """Registers the ``slow`` marker: tests over ~20 s, each saying why in its docstring."""
  config.addinivalue_line("markers", "slow: takes over ~20 s on 2 cores (justified in the test)")
