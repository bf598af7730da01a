"""Times LocallyConnected's window extraction: strided slices (what the layer does) against
``jax.lax.conv_general_dilated_patches`` (an identity-kernel convolution), in a jitted forward
and backward pass of one locally connected 3x3 layer.

    .venv/bin/python benchmarks/locally_connected_bench.py [--batch=64 --size=16 --channels=16]

Both give the same windows (checked first); times are interleaved, so background load hits both
alike, and the minimum over the calls is reported with the median.
"""

from __future__ import annotations

import statistics
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from seg_jax.layers import conv

_BATCH = flags.DEFINE_integer("batch", 64, "Batch size.")
_SIZE = flags.DEFINE_integer("size", 16, "Input height and width.")
_CHANNELS = flags.DEFINE_integer("channels", 16, "Input channels.")
_FEATURES = flags.DEFINE_integer("features", 32, "Output channels.")
_CALLS = flags.DEFINE_integer("calls", 10, "Timed calls of each.")


def main(argv):
  del argv
  n, s, c = _BATCH.value, _SIZE.value, _CHANNELS.value
  x = jax.random.normal(jax.random.key(0), (n, s, s, c))
  kernel = jax.random.normal(jax.random.key(1), (s, s, 9 * c, _FEATURES.value))
  extract = {
      "strided slices": lambda x: conv._patches(  # pylint: disable=protected-access
          x, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), (s, s)),
      "conv_general_dilated_patches": lambda x: jax.lax.conv_general_dilated_patches(
          x, (3, 3), (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")),
  }
  np.testing.assert_allclose(*(f(x) for f in extract.values()), rtol=1e-6)
  steps = {}
  for name, f in extract.items():
    loss = lambda k, x, f=f: jnp.sum(jnp.einsum("nhwk,hwkf->nhwf", f(x), k) ** 2)
    steps[name] = jax.jit(jax.grad(loss, argnums=(0, 1)))
    jax.block_until_ready(steps[name](kernel, x))
  times = {name: [] for name in steps}
  for _ in range(_CALLS.value):
    for name, step in steps.items():
      start = time.perf_counter()
      jax.block_until_ready(step(kernel, x))
      times[name].append(time.perf_counter() - start)
  print(f"3x3 locally connected layer, {n}x{s}x{s}x{c} -> {_FEATURES.value} features, forward "
        f"and backward, {jax.devices()[0].platform}:")
  for name, t in times.items():
    print(f"  {name:30s} min {min(t) * 1e3:8.1f} ms  median {statistics.median(t) * 1e3:8.1f} ms")


if __name__ == "__main__":
  app.run(main)
