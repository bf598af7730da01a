r"""Megapixels per second and peak memory of the predict command on a large raster scene.

  python -m benchmarks.predict_raster                  # 20000x20000x4 uint8, the NAIP model
  python -m benchmarks.predict_raster --size=8000 --save_probs --cog
  python -m benchmarks.predict_raster --toy            # 300x300 and a toy model: a dry run

Writes a synthetic `--size` x `--size` scene of 4 uint8 bands (tiled, DEFLATE; smooth patterns
plus noise, its left 5% nodata) into `--scratch` (default: a temporary folder, removed at the
end), then predicts it with `seg_jax.predict.predict_raster`, the raster path of
`python -m seg_jax.predict`: window by window in slide mode (windows of the training size
256x256, 25% overlap, uniform blending, `--batch_size` windows per call, no TTA), writing the
class GeoTIFF (and with `--save_probs` the probability raster, with `--cog` as COGs) and the
overlay. The model is configs/naip.py's (asym_unet, 4 bands, 6 classes) randomly initialised:
speed does not depend on the weights. A 768x768 scene is predicted first, so that the timed
run does not compile. Peak RSS is the process's VmHWM after writing the scene and after
prediction. JAX runs on its default backend: an accelerator when one is available, else the CPU.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from collections.abc import Sequence

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from benchmarks import common
from seg_jax import cli
from seg_jax import predict
from seg_jax import state as state_lib
from seg_jax import workdir as workdir_lib
from seg_jax.data import folder
from seg_jax.data import raster

FLAGS = flags.FLAGS
CONFIG = "configs/naip.py"
BANDS = 4
STRIP = 512  # rows of the synthetic scene generated at a time


@functools.cache
def define_flags() -> None:
  """Defines this benchmark's flags (once per process)."""
  flags.DEFINE_integer("size", 20000, "Side of the square synthetic scene, in pixels.")
  flags.DEFINE_integer("batch_size", 8, "Windows per jitted call.")
  flags.DEFINE_bool("save_probs", False, "Also write the probability raster.")
  flags.DEFINE_bool("cog", False, "Write Cloud-Optimized GeoTIFFs.")
  flags.DEFINE_string("scratch", None, "Folder for the scene and outputs (default: a temporary "
                      "folder, removed at the end).")
  flags.DEFINE_bool("toy", False, "A 300x300 scene and a toy model (a dry run of the script).")


def peak_rss_mb() -> float:
  """This process's peak resident memory (VmHWM) in MiB."""
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def write_scene(path: str, size: int) -> None:
  """A `size` x `size` x 4 uint8 GeoTIFF, written `STRIP` rows at a time (nodata 0 on the left
  5% of columns)."""
  rng = np.random.default_rng(0)
  x = np.arange(size, dtype=np.float32)
  profile = dict(driver="GTiff", width=size, height=size, count=BANDS, dtype="uint8", nodata=0,
                 tiled=True, blockxsize=256, blockysize=256, compress="deflate",
                 crs="EPSG:26917", transform=from_origin(266115.6, 4303356.0, 0.6, 0.6))
  with rasterio.open(path, "w", **profile) as ds:
    for top in range(0, size, STRIP):
      y = np.arange(top, min(top + STRIP, size), dtype=np.float32)[:, None]
      pattern = np.sin(x / 97.0) * np.cos(y / 131.0)
      strip = np.stack([100 + 60 * pattern * (b + 1) / BANDS for b in range(BANDS)])
      strip = strip + rng.normal(0, 8, strip.shape)
      strip = np.clip(strip, 1, 255).astype(np.uint8)
      strip[:, :, :size // 20] = 0
      ds.write(strip, window=Window(0, top, size, len(y)))


def model_of(toy: bool) -> predict.TrainedModel:
  """configs/naip.py's model (toy: a toy model of 32-pixel windows), randomly initialised."""
  config = common.load_config(CONFIG)
  if toy:
    config = common.load_config(CONFIG, common.toy_overrides(config))
  palette = folder.read_palette(config.data, None)
  window = (config.data.patch_size,) * 2
  model = state_lib.build_model(config, len(palette.names))
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, *window, BANDS)), train=False))(
      jax.random.key(0))
  info = workdir_lib.DataInfo(palette, mean=(100.0,) * BANDS, std=(40.0,) * BANDS,
                              image_size=window, bands=tuple(range(1, BANDS + 1)),
                              rgb_bands=(1, 2, 3))
  return predict.TrainedModel(model, variables, config, info, step=0)


def run(size: int, batch_size: int, save_probs: bool, cog: bool, scratch: str,
        toy: bool = False) -> None:
  """Writes the scene into `scratch`, predicts a small one (compiling), then times the scene."""
  trained = model_of(toy)
  window = tuple(trained.info.image_size)
  options = dict(window=window, overlap=0.25, blend="uniform", tta="none", mode="slide",
                 scales=(1.0,), batch_size=batch_size)
  start = time.perf_counter()
  scene, warmup = os.path.join(scratch, "scene.tif"), os.path.join(scratch, "warmup.tif")
  write_scene(scene, size)
  write_scene(warmup, 3 * window[0])
  written_s, written_mb = time.perf_counter() - start, peak_rss_mb()
  out = os.path.join(scratch, "out")
  os.makedirs(out, exist_ok=True)
  predict.predict_raster(trained, raster.describe(warmup), out, save_probs=save_probs, cog=cog,
                         **options)
  start = time.perf_counter()
  done = predict.predict_raster(trained, raster.describe(scene), out, save_probs=save_probs,
                                cog=cog, **options)
  seconds = time.perf_counter() - start
  megapixels = size * size / 1e6
  outputs = sorted(f for f in os.listdir(out) if f.startswith("scene_"))
  print(f"{jax.devices()[0].device_kind} ({jax.devices()[0].platform}), scene {size}x{size}x"
        f"{BANDS} uint8 ({megapixels:.1f} MP, {os.path.getsize(scene) / 2**20:.0f} MiB "
        f"written in {written_s:.1f} s), window {window[0]}x{window[1]}, overlap 0.25, batch "
        f"{batch_size}, save_probs={save_probs}, cog={cog}")
  print(f"predict: {seconds:.1f} s, {megapixels / seconds:.3f} MP/s")
  print(f"peak RSS (VmHWM): {written_mb:.0f} MiB after writing the scene, {peak_rss_mb():.0f} "
        f"MiB after prediction")
  print(f"outputs: {', '.join(f'{f} {os.path.getsize(os.path.join(out, f)) / 2**20:.1f} MiB' for f in outputs)}")
  print(done)


def main(argv: Sequence[str]) -> None:
  """Runs the benchmark at the flags' settings."""
  del argv
  scratch = FLAGS.scratch or tempfile.mkdtemp(prefix="predict_raster_")
  os.makedirs(scratch, exist_ok=True)
  try:
    run(300 if FLAGS.toy else FLAGS.size, FLAGS.batch_size, FLAGS.save_probs, FLAGS.cog, scratch,
        FLAGS.toy)
  finally:
    if FLAGS.scratch is None:
      shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, shared=())
