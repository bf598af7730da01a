"""Test-wide settings: seg_jax's per-user caches (compiled programs, generated data) in .cache/.

Every test process, and every command a test starts, uses the repository's .cache/ as
$XDG_CACHE_HOME, so tests share compiled programs but leave the user's own caches alone.
"""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["XDG_CACHE_HOME"] = os.path.join(REPO, ".cache")

from configs import default  # pylint: disable=g-import-not-at-top,wrong-import-position
from seg_jax import compilation  # pylint: disable=g-import-not-at-top,wrong-import-position

compilation.use_persistent_cache(default.get_config().train.compilation_cache_dir)


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: over ~10 s on 2 cores (training subprocesses, reference models), each "
      "saying why; still part of the suite, deselect with -m 'not slow' while iterating")
