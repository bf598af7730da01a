r"""Artifact size and CPU latency per image: JAX (jit) vs StableHLO (deserialized) vs onnxruntime.

  python -m benchmarks.export_bench                      # the proposal, 512x512, batch 1
  python -m benchmarks.export_bench --arch=unet --size=512,512 --repeats=20

The model is a `configs/dubai.py` architecture (`--arch`, default the proposal asym_unet at its
Dubai widths; 6 classes, randomly initialised: speed does not depend on the weights) behind
`seg_jax.export.serving_fn` (uint8 pixels in, float32 logits out). The same function is timed
three ways in one process: jitted by JAX, exported by `seg_jax.export` as StableHLO and
deserialized, and exported as ONNX and run by onnxruntime (CPU, its default threads). Each is
called once to compile or warm up, then `--repeats` times on one image; the median is printed,
with its ratio to JAX's and the artifact's size (for JAX, its variables' bytes).
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags
import jax
from jax import export as jax_export
import jax.numpy as jnp
import numpy as np

from configs import dubai
from seg_jax import artifact
from seg_jax import cli
from seg_jax import export
from seg_jax import models

FLAGS = flags.FLAGS
NUM_CLASSES = 6
MEAN, STD = (100.0, 100.0, 100.0), (50.0, 50.0, 50.0)


@functools.cache
def define_flags() -> None:
  """Defines this benchmark's flags (once per process)."""
  flags.DEFINE_enum("arch", "asym_unet", sorted(dubai.ARCHITECTURES),
                    "Architecture at its configs/dubai.py widths.")
  flags.DEFINE_list("size", ["512", "512"], "H,W of the image.")
  flags.DEFINE_integer("repeats", 10, "Timed calls per runtime (median kept).")


def _median_ms(call: Callable[[np.ndarray], Any], image: np.ndarray, repeats: int) -> float:
  """Median milliseconds of `call(image)` over `repeats` calls, after one untimed call."""
  np.asarray(call(image))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    np.asarray(call(image))  # blocks until the result is on the host
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def runtimes(name: str, kwargs: dict[str, Any], size: tuple[int, int]
             ) -> list[tuple[str, int, Callable[[np.ndarray], Any]]]:
  """(runtime, artifact bytes, call) of JAX, StableHLO and onnxruntime for model `name`."""
  model = models.create(name, num_classes=NUM_CLASSES, **kwargs)
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, *size, 3)), train=False))(
      jax.random.key(0))
  fn = export.serving_fn(model, variables, MEAN, STD)
  params = sum(x.nbytes for x in jax.tree.leaves(variables))
  stablehlo = export.export_model(model, variables, name, mean=MEAN, std=STD, fmt="stablehlo")
  onnx = export.export_model(model, variables, name, mean=MEAN, std=STD, fmt="onnx", size=size)
  session = artifact.onnx_session(f"{name}.onnx", onnx)
  return [("JAX jit (variables)", params, jax.jit(fn)),
          ("StableHLO deserialized", len(stablehlo),
           jax.jit(jax_export.deserialize(bytearray(stablehlo)).call)),
          ("onnxruntime", len(onnx), lambda x: session.run(None, {"pixels": x})[0])]


def run(name: str, kwargs: dict[str, Any], size: tuple[int, int], repeats: int) -> None:
  """Prints each runtime's artifact size and median latency per image of `size`."""
  image = np.random.default_rng(0).integers(0, 256, (1, *size, 3), dtype=np.uint8)
  rows = runtimes(name, kwargs, size)
  print(f"{name}, one {size[0]}x{size[1]} uint8 image per call, median of {repeats}; "
        f"{jax.devices()[0].device_kind}, jax {jax.__version__}")
  baseline = None
  for runtime, nbytes, call in rows:
    ms = _median_ms(call, image, repeats)
    baseline = baseline or ms
    print(f"{runtime:24s} {nbytes / 2**20:8.2f} MiB {ms:9.1f} ms/image "
          f"{ms / baseline:6.2f}x JAX")


def main(argv: Sequence[str]) -> None:
  """Times the flags' architecture at the flags' size."""
  del argv
  run(FLAGS.arch, dubai.ARCHITECTURES[FLAGS.arch], tuple(int(v) for v in FLAGS.size),
      FLAGS.repeats)


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, shared=())
