"""Data benchmarks: synthetic generation, input pipeline and on-device augmentation throughput,
and how well a per-pixel colour classifier does on the synthetic scenes.

  python -m benchmarks.data_bench                       # throughput, 144x256, batch 32
  python -m benchmarks.data_bench --mode=colour_baseline
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from seg_jax import cli
from seg_jax import config_files
from seg_jax import data
from seg_jax import metrics
from seg_jax.data import augment
from seg_jax.data import pipeline
from seg_jax.data import synthetic

FLAGS = flags.FLAGS


@functools.cache
def define_flags() -> None:
  """Defines this benchmark's flags (once per process)."""
  flags.DEFINE_enum("mode", "throughput", ["throughput", "colour_baseline"], "What to run.")
  flags.DEFINE_integer("batch", 32, "Global batch size.")
  flags.DEFINE_list("image_size", ["144", "256"], "H,W.")
  flags.DEFINE_integer("batches", 8, "Batches timed per pipeline run.")
  flags.DEFINE_integer("train_scenes", 200, "Scenes the colour models fit.")
  flags.DEFINE_integer("val_scenes", 50, "Scenes the colour models are scored on.")


# The augmentation timed: the accelerator config's, with every transform on.
AUGMENT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                              "asym_unet.py")


def _timed(fn, repeats):
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - start) / repeats


def throughput(size: tuple[int, int], batch: int, batches: int, generated: int = 64) -> None:
  """Prints images/s of generation (over `generated` scenes) and of pipelines (over `batches`
  batches) and augmentation time per batch."""
  n = batches * batch
  print(f"devices: {jax.devices()}  image_size={size} batch={batch}")
  counter = iter(range(10 ** 9))
  sec = _timed(lambda: synthetic.generate(0, next(counter), size), generated)
  print(f"synthetic generation: {1 / sec:8.1f} images/s ({sec * 1e3:.1f} ms/image)")

  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  cfg = config_files.load_module(AUGMENT_CONFIG).get_config().data.augment
  aug = jax.jit(functools.partial(augment.augment_batch, aug_config=cfg))
  arrays = [synthetic.generate(0, i, size) for i in range(n)]
  memory = data.ArraySource(np.stack([a[0] for a in arrays]), np.stack([a[1] for a in arrays]))
  sources = {
      "synthetic on the fly": synthetic.SyntheticSource(n, seed=0, image_size=size),
      "in-memory arrays": memory,
  }

  def run(source, keep_on_device, with_aug):
    p = pipeline.InputPipeline(source, global_batch_size=batch, sharding=sharding, seed=0,
                               num_epochs=None, keep_on_device=keep_on_device)
    b = next(p)  # Warm-up: compiles and fills the prefetch queue.
    jax.block_until_ready(aug(b["image"], b["label"], jax.random.key(0)))
    start = time.perf_counter()
    for step in range(batches):
      b = next(p)
      out = aug(b["image"], b["label"], jax.random.key(step)) if with_aug else b["image"]
      jax.block_until_ready(out)
    return batches * batch / (time.perf_counter() - start)

  for name, source in sources.items():
    for with_aug in (False, True):
      ips = run(source, False, with_aug)
      print(f"pipeline, {name:22s} augment={with_aug!s:5s}: {ips:8.1f} images/s")
  for with_aug in (False, True):
    ips = run(memory, True, with_aug)
    print(f"pipeline, keep_on_device           augment={with_aug!s:5s}: {ips:8.1f} images/s")

  images = jnp.asarray(memory.images[:batch])
  labels = jnp.asarray(memory.labels[:batch])
  start = time.perf_counter()
  jax.block_until_ready(aug(images, labels, jax.random.key(0)))
  compile_s = time.perf_counter() - start
  sec = _timed(lambda: jax.block_until_ready(aug(images, labels, jax.random.key(1))), 10)
  print(f"augment_batch: {sec * 1e3:.1f} ms/batch of {batch} (first call incl. compile "
        f"{compile_s:.2f} s)")


def colour_baseline(size: tuple[int, int], train_scenes: int, val_scenes: int,
                    fit_steps: int = 2000) -> None:
  """Fits per-pixel colour classifiers on synthetic train scenes (the linear one for
  `fit_steps` Adam steps) and scores val scenes."""

  def pixels(offset, count):
    pairs = [synthetic.generate(0, offset + i, size) for i in range(count)]
    return (np.concatenate([p[0].reshape(-1, 3) for p in pairs]),
            np.concatenate([p[1].ravel() for p in pairs]))

  x_train, y_train = pixels(0, train_scenes)
  x_val, y_val = pixels(synthetic.SPLIT_OFFSETS["val"], val_scenes)
  mean, std = x_train.mean(0), x_train.std(0)
  print(f"{len(y_train)} train pixels ({train_scenes} scenes), {len(y_val)} val pixels "
        f"({val_scenes} scenes), {size[0]}x{size[1]}")

  # A 1x1 convolution is a linear softmax classifier of each pixel's colour.
  params = {"w": jnp.zeros((3, 6)), "b": jnp.zeros(6)}
  opt = optax.adam(0.05)
  state = opt.init(params)
  xt = jnp.asarray((x_train - mean) / std, jnp.float32)
  yt = jnp.asarray(y_train, jnp.int32)

  @jax.jit
  def step(params, state, idx):
    def loss_fn(p):
      logits = xt[idx] @ p["w"] + p["b"]
      return optax.softmax_cross_entropy_with_integer_labels(logits, yt[idx]).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = opt.update(grads, state)
    return optax.apply_updates(params, updates), state, loss

  rng = np.random.default_rng(0)
  for _ in range(fit_steps):
    params, state, loss = step(params, state, jnp.asarray(rng.integers(0, len(yt), 65536)))
  logits = jnp.asarray((x_val - mean) / std, jnp.float32) @ params["w"] + params["b"]
  result = metrics.scores(metrics.confusion_matrix(y_val, jnp.argmax(logits, -1), 6))
  miou, iou = result["miou"], result["iou"]
  print(f"1x1 conv (linear softmax on RGB), final train loss {float(loss):.3f}: "
        f"val mIoU {miou:.3f}  per class {np.round(iou, 3).tolist()}")

  # The Bayes classifier of quantised colour bounds every per-pixel colour model.
  for bins in (16, 32, 64):
    q = 256 // bins
    key = lambda x: ((x[:, 0] // q).astype(np.int64) * bins + x[:, 1] // q) * bins + x[:, 2] // q
    table = np.zeros((bins ** 3, 6), np.int64)
    np.add.at(table, (key(x_train), y_train), 1)
    result = metrics.scores(metrics.confusion_matrix(y_val, table.argmax(1)[key(x_val)], 6))
    miou, iou = result["miou"], result["iou"]
    print(f"colour histogram, {bins}^3 bins: val mIoU {miou:.3f}  per class "
          f"{np.round(iou, 3).tolist()}")


def main(argv: Sequence[str]) -> None:
  """Runs --mode."""
  del argv
  size = tuple(int(v) for v in FLAGS.image_size)
  if FLAGS.mode == "throughput":
    throughput(size, FLAGS.batch, FLAGS.batches)
  else:
    colour_baseline(size, FLAGS.train_scenes, FLAGS.val_scenes)


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, shared=())
