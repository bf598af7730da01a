r"""Megapixels per second of `seg_jax.inference.predict` (slide mode) with and without TTA.

  python benchmarks/predict_bench.py                       # the proposal at the Dubai size
  python benchmarks/predict_bench.py --tta=none --repeats=3 --image_size=1479,2149

The model is the proposal (asym_unet at the widths of configs/dubai.py, 6 classes, randomly
initialised: speed does not depend on the weights) on one uint8 image of `--image_size` (H, W)
(default 1479x2149, the largest Dubai tiles), windows of the training size 144x256 with 25%
overlap. Each TTA setting is compiled on a small image first, then timed on the full one.
"""

import os
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import dubai  # pylint: disable=g-import-not-at-top,wrong-import-position
from seg_jax import inference  # pylint: disable=g-import-not-at-top,wrong-import-position
from seg_jax import train  # pylint: disable=g-import-not-at-top,wrong-import-position

_IMAGE_SIZE = flags.DEFINE_list("image_size", ["1479", "2149"], "H,W of the image.")
_WINDOW = flags.DEFINE_list("window", ["144", "256"], "H,W of the windows.")
_OVERLAP = flags.DEFINE_float("overlap", 0.25, "Share of a window overlapped by neighbours.")
_BLEND = flags.DEFINE_enum("blend", "uniform", list(inference.BLENDS), "Blending.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Windows per jitted call.")
_TTA = flags.DEFINE_list("tta", list(inference.TTA_TRANSFORMS), "TTA settings to time.")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Timed predictions per TTA setting (best kept).")


def main(argv):
  del argv
  config = dubai.get_config("asym_unet")
  model = train.build_model(config, num_classes=6)
  window = tuple(int(v) for v in _WINDOW.value)
  size = tuple(int(v) for v in _IMAGE_SIZE.value)
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, *window, 3)), train=False))(
      jax.random.key(0))
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
  warmup = rng.integers(0, 256, (3 * window[0], 3 * window[1], 3), dtype=np.uint8)
  kwargs = dict(mean=(100.0, 100.0, 100.0), std=(50.0, 50.0, 50.0), window=window,
                mode="slide", overlap=_OVERLAP.value, blend=_BLEND.value,
                batch_size=_BATCH_SIZE.value)
  windows = []
  print(f"{jax.devices()[0].device_kind} ({jax.device_count()} device(s)), "
        f"image {size[0]}x{size[1]} ({size[0] * size[1] / 1e6:.2f} MP), window "
        f"{window[0]}x{window[1]}, overlap {_OVERLAP.value}, blend {_BLEND.value}, "
        f"batch {_BATCH_SIZE.value}")
  for tta in _TTA.value:
    start = time.perf_counter()
    inference.predict(model, variables, warmup, tta=tta, **kwargs)
    compile_s = time.perf_counter() - start
    best = float("inf")
    for _ in range(_REPEATS.value):
      windows.clear()
      start = time.perf_counter()
      probs = inference.predict(model, variables, image, tta=tta,
                                progress=lambda d, t: windows.append(t), **kwargs)
      best = min(best, time.perf_counter() - start)
    assert probs.shape == (*size, 6)
    passes = len(inference.TTA_TRANSFORMS[tta])
    print(f"tta={tta:12s} {windows[-1]} windows x {passes} passes: {best:7.2f} s, "
          f"{size[0] * size[1] / 1e6 / best:6.3f} MP/s, {windows[-1] * passes / best:6.1f} "
          f"window passes/s (warm-up image incl. compile {compile_s:.1f} s)")


if __name__ == "__main__":
  app.run(main)
