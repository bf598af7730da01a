"""Times LocallyConnected's window extraction: strided slices (what the layer does) against
``jax.lax.conv_general_dilated_patches`` (an identity-kernel convolution), in a jitted forward
and backward pass of one locally connected 3x3 layer.

    .venv/bin/python -m benchmarks.locally_connected_bench [--batch=64 --size=16 --channels=16]

The first is ``seg_jax.layers.LocallyConnected`` itself (no bias); the second the same product
of windows and kernel over ``conv_general_dilated_patches``. Both give the same output (checked
first); times are interleaved, so background load hits both alike, and the minimum over the calls
is reported with the median.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Sequence

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from seg_jax import cli
from seg_jax import layers

FLAGS = flags.FLAGS


@functools.cache
def define_flags() -> None:
  """Defines this benchmark's flags (once per process)."""
  flags.DEFINE_integer("batch", 64, "Batch size.")
  flags.DEFINE_integer("size", 16, "Input height and width.")
  flags.DEFINE_integer("channels", 16, "Input channels.")
  flags.DEFINE_integer("features", 32, "Output channels.")
  flags.DEFINE_integer("calls", 10, "Timed calls of each.")


def run(n: int, s: int, c: int, features: int, calls: int) -> None:
  """Prints the times of both extractions for `n` inputs of `s` x `s` x `c`."""
  x = jax.random.normal(jax.random.key(0), (n, s, s, c))
  kernel = jax.random.normal(jax.random.key(1), (s, s, 9 * c, features))
  layer = layers.LocallyConnected(features, (3, 3), padding="same", use_bias=False)
  forward = {
      "strided slices": lambda k, x: layer.apply({"params": {"kernel": k}}, x),
      "conv_general_dilated_patches": lambda k, x: jnp.einsum(
          "nhwk,hwkf->nhwf", jax.lax.conv_general_dilated_patches(
              x, (3, 3), (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")),
          k),
  }
  np.testing.assert_allclose(*(f(kernel, x) for f in forward.values()), rtol=1e-5, atol=1e-4)
  steps = {}
  for name, f in forward.items():
    loss = lambda k, x, f=f: jnp.sum(f(k, x) ** 2)
    steps[name] = jax.jit(jax.grad(loss, argnums=(0, 1)))
    jax.block_until_ready(steps[name](kernel, x))
  times = {name: [] for name in steps}
  for _ in range(calls):
    for name, step in steps.items():
      start = time.perf_counter()
      jax.block_until_ready(step(kernel, x))
      times[name].append(time.perf_counter() - start)
  print(f"3x3 locally connected layer, {n}x{s}x{s}x{c} -> {features} features, forward "
        f"and backward, {jax.devices()[0].platform}:")
  for name, t in times.items():
    print(f"  {name:30s} min {min(t) * 1e3:8.1f} ms  median {statistics.median(t) * 1e3:8.1f} ms")


def main(argv: Sequence[str]) -> None:
  """Times both at the flags' sizes."""
  del argv
  run(FLAGS.batch, FLAGS.size, FLAGS.channels, FLAGS.features, FLAGS.calls)


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, shared=())
