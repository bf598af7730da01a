r"""Megapixels per second of `seg_jax.inference.predict` (slide mode) with and without TTA.

  python -m benchmarks.predict_bench                       # the proposal at the Dubai size
  python -m benchmarks.predict_bench --tta=none --repeats=3 --image_size=1479,2149

The model is the proposal (asym_unet at the widths of configs/dubai.py, 6 classes, randomly
initialised: speed does not depend on the weights) on one uint8 image of `--image_size` (H, W)
(default 1479x2149, the largest Dubai tiles), windows of the training size 144x256 with 25%
overlap. Each TTA setting is compiled on a small image first, then timed on the full one.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any

from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs import dubai
from seg_jax import cli
from seg_jax import inference
from seg_jax import state as state_lib

FLAGS = flags.FLAGS
NUM_CLASSES = 6


@functools.cache
def define_flags() -> None:
  """Defines this benchmark's flags (once per process)."""
  flags.DEFINE_list("image_size", ["1479", "2149"], "H,W of the image.")
  flags.DEFINE_list("window", ["144", "256"], "H,W of the windows.")
  flags.DEFINE_float("overlap", 0.25, "Share of a window overlapped by neighbours.")
  flags.DEFINE_enum("blend", "uniform", list(inference.BLENDS), "Blending.")
  flags.DEFINE_integer("batch_size", 8, "Windows per jitted call.")
  flags.DEFINE_list("tta", list(inference.TTA_TRANSFORMS), "TTA settings to time.")
  flags.DEFINE_integer("repeats", 1, "Timed predictions per TTA setting (best kept).")


def initialised(model: nn.Module, window: tuple[int, int]) -> dict[str, Any]:
  """Randomly initialised variables of `model` for windows of `window` (H, W)."""
  return jax.jit(lambda k: model.init(k, jnp.zeros((1, *window, 3)), train=False))(
      jax.random.key(0))


def run(model: nn.Module, variables: dict[str, Any], size: tuple[int, int],
        window: tuple[int, int], overlap: float, blend: str, batch_size: int,
        ttas: Sequence[str], repeats: int) -> None:
  """Prints the time of each TTA setting of `ttas` on an image of `size` (the best of
  `repeats`), each compiled on a small image first."""
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
  warmup = rng.integers(0, 256, (3 * window[0], 3 * window[1], 3), dtype=np.uint8)
  kwargs = dict(mean=(100.0, 100.0, 100.0), std=(50.0, 50.0, 50.0), window=window,
                mode="slide", overlap=overlap, blend=blend, batch_size=batch_size)
  windows = []
  print(f"{jax.devices()[0].device_kind} ({jax.device_count()} device(s)), "
        f"image {size[0]}x{size[1]} ({size[0] * size[1] / 1e6:.2f} MP), window "
        f"{window[0]}x{window[1]}, overlap {overlap}, blend {blend}, "
        f"batch {batch_size}")
  for tta in ttas:
    start = time.perf_counter()
    inference.predict(model, variables, warmup, tta=tta, **kwargs)
    compile_s = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
      windows.clear()
      start = time.perf_counter()
      probs = inference.predict(model, variables, image, tta=tta,
                                progress=lambda d, t: windows.append(t), **kwargs)
      best = min(best, time.perf_counter() - start)
    assert probs.shape == (*size, NUM_CLASSES)
    passes = len(inference.TTA_TRANSFORMS[tta])
    print(f"tta={tta:12s} {windows[-1]} windows x {passes} passes: {best:7.2f} s, "
          f"{size[0] * size[1] / 1e6 / best:6.3f} MP/s, {windows[-1] * passes / best:6.1f} "
          f"window passes/s (warm-up image incl. compile {compile_s:.1f} s)")


def main(argv: Sequence[str]) -> None:
  """Times the proposal at the flags' sizes."""
  del argv
  window = tuple(int(v) for v in FLAGS.window)
  model = state_lib.build_model(dubai.get_config("asym_unet"), num_classes=NUM_CLASSES)
  run(model, initialised(model, window), tuple(int(v) for v in FLAGS.image_size), window,
      FLAGS.overlap, FLAGS.blend, FLAGS.batch_size, FLAGS.tta, FLAGS.repeats)


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, shared=())
