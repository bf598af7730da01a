"""Test-wide settings: quick XLA compiles, and seg_jax's per-user caches in .cache/.

Every test process, and every command a test starts, uses the repository's .cache/ as
$XDG_CACHE_HOME, so tests share compiled programs but leave the user's own caches alone.

Compiling dominates the suite's time on a CPU, so tests compile with XLA's backend optimisations
off (LLVM level 0, no expensive passes): about a third less CPU time for a train step's compile.
The programs compute the same functions; tests compare programs compiled alike, or compare with
references to float tolerance.
"""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["XDG_CACHE_HOME"] = os.path.join(REPO, ".cache")
QUICK_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), QUICK_COMPILE_FLAGS]))

from configs import default  # pylint: disable=g-import-not-at-top,wrong-import-position
from seg_jax import compilation  # pylint: disable=g-import-not-at-top,wrong-import-position

compilation.use_persistent_cache(default.get_config().train.compilation_cache_dir)


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: over ~10 s on 2 cores (training subprocesses, reference models), each "
      "saying why; still part of the suite, deselect with -m 'not slow' while iterating")
  config.addinivalue_line(
      "markers", "gcs: against a local Cloud Storage server (fake-gcs-server, started by the "
      "test module itself); part of the suite")
