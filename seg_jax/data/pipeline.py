"""Deterministic, per-process sharded input pipeline on grain yielding globally sharded jax.Arrays."""

from __future__ import annotations

import collections
import math
import sys
from typing import Any, Optional

import grain
import jax
import jax.numpy as jnp
import numpy as np

KEYS = ("image", "label")


class _Fetch:
  """Reads local example k: its global position, its source index and a valid flag.

  A source with an `at(index, epoch)` method (random raster windows) is asked for the example
  of that epoch, so it can serve new examples each epoch.
  """

  def __init__(self, source, order, *, global_batch: int, local_batch: int, process: int,
               total: Optional[int], template: dict[str, np.ndarray]):
    self.source = source
    self.order = order
    self.num_examples = len(source)
    self.global_batch = global_batch
    self.local_batch = local_batch
    self.process = process
    self.total = total
    self.template = template

  def __call__(self, k: int) -> dict[str, np.ndarray]:
    b, j = divmod(int(k), self.local_batch)
    g = b * self.global_batch + self.process * self.local_batch + j
    if self.total is not None and g >= self.total:
      out = {key: np.zeros_like(v) for key, v in self.template.items()}
      out["valid"] = np.bool_(False)
      return out
    if hasattr(self.source, "at"):
      ex = self.source.at(self.order[g], g // self.num_examples)
    else:
      ex = self.source[self.order[g]]
    out = {key: np.asarray(ex[key], self.template[key].dtype) for key in KEYS}
    out["valid"] = np.bool_(True)
    return out


class InputPipeline:
  """Iterator of global batches {"image", "label", "valid"} sharded over the batch axis.

  The order of examples is a grain shuffle of the source seeded by `seed`
  (reshuffled each epoch); global batch b holds positions [b*B, (b+1)*B) of
  that order and process p reads only its slice of each batch. With
  `drop_remainder=False` the last batch is padded with zeros and `valid`
  marks real examples. With `keep_on_device` the whole source is placed on
  the devices once and batches are gathered there.
  """

  def __init__(self, source, *, global_batch_size: int, sharding: jax.sharding.NamedSharding,
               seed: int, shuffle: bool = True, num_epochs: Optional[int] = None,
               drop_remainder: bool = True, keep_on_device: bool = False,
               worker_count: int = 0, prefetch: int = 2, num_threads: int = 4):
    n = len(source)
    if n == 0:
      raise ValueError("source is empty: InputPipeline needs at least one example.")
    processes = jax.process_count()
    if global_batch_size <= 0 or global_batch_size % processes:
      raise ValueError(
          f"global_batch_size {global_batch_size} must be positive and divisible by the "
          f"process count {processes}.")
    devices = sharding.mesh.devices.size
    if global_batch_size % devices:
      raise ValueError(
          f"global_batch_size {global_batch_size} must be divisible by the {devices} devices "
          "of the data mesh.")
    if num_epochs is not None and num_epochs <= 0:
      raise ValueError(f"num_epochs must be positive or None, got {num_epochs}.")
    if worker_count < 0:
      raise ValueError(f"worker_count must be >= 0, got {worker_count}.")
    self.source = source
    self.global_batch_size = int(global_batch_size)
    self.local_batch_size = self.global_batch_size // processes
    self.sharding = sharding
    self.seed = int(seed)
    self.shuffle = bool(shuffle)
    self.num_epochs = num_epochs
    self.drop_remainder = bool(drop_remainder)
    self.keep_on_device = bool(keep_on_device)
    self.worker_count = int(worker_count)
    self.prefetch = max(int(prefetch), 0)
    self.num_threads = int(num_threads)
    self.num_examples = n
    order = grain.MapDataset.range(n)
    if shuffle:
      order = order.shuffle(seed=self.seed)
    self._order = order.repeat(num_epochs) if num_epochs != 1 else order
    self._total = None if num_epochs is None else n * num_epochs
    if self._total is None:
      self.num_batches = None
    elif drop_remainder:
      self.num_batches = self._total // self.global_batch_size
    else:
      self.num_batches = math.ceil(self._total / self.global_batch_size)
    first = source[0]
    # Images keep their stored type (uint8, or a raster's); labels are uint8.
    self._template = {"image": np.asarray(first["image"]),
                      "label": np.asarray(first["label"], np.uint8)}
    if self.keep_on_device:
      self._setup_device()
    self._next_batch = 0
    self._reset()

  def _setup_device(self):
    if hasattr(self.source, "images") and hasattr(self.source, "labels"):
      images, labels = np.asarray(self.source.images), np.asarray(self.source.labels)
    else:
      items = [self.source[i] for i in range(self.num_examples)]
      images = np.stack([np.asarray(e["image"], self._template["image"].dtype) for e in items])
      labels = np.stack([np.asarray(e["label"], np.uint8) for e in items])
    replicated = jax.sharding.NamedSharding(self.sharding.mesh, jax.sharding.PartitionSpec())
    # Every process holds the whole set, so it can be placed replicated directly.
    self._device_images = jax.make_array_from_process_local_data(replicated, images)
    self._device_labels = jax.make_array_from_process_local_data(replicated, labels)

    def gather(images, labels, idx, valid):
      img = jnp.where(valid[:, None, None, None], images[idx], 0)
      lbl = jnp.where(valid[:, None, None], labels[idx], 0)
      return {"image": img, "label": lbl, "valid": valid}

    self._gather = jax.jit(gather, out_shardings=self.sharding)

  def _reset(self):
    self._queue: collections.deque = collections.deque()
    self._produced = self._next_batch
    if self.keep_on_device:
      self._host_iter = None
      return
    local_total = (sys.maxsize // self.global_batch_size if self.num_batches is None
                   else self.num_batches) * self.local_batch_size
    fetch = _Fetch(self.source, self._order, global_batch=self.global_batch_size,
                   local_batch=self.local_batch_size, process=jax.process_index(),
                   total=self._total, template=self._template)
    ds = grain.MapDataset.range(local_total).map(fetch).batch(self.local_batch_size)
    ds = ds[self._next_batch:].to_iter_dataset(
        grain.ReadOptions(num_threads=self.num_threads,
                          prefetch_buffer_size=max(self.prefetch, 1) * 2))
    if self.worker_count > 0:
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.worker_count))
    self._host_iter = iter(ds)

  def _device_batch(self, b: int) -> dict[str, jax.Array]:
    g = b * self.global_batch_size + np.arange(self.global_batch_size)
    valid = np.ones(self.global_batch_size, bool) if self._total is None else g < self._total
    idx = np.array([self._order[int(i)] if v else 0 for i, v in zip(g, valid)], np.int32)
    return self._gather(self._device_images, self._device_labels, idx, valid)

  def _produce(self) -> Optional[dict[str, jax.Array]]:
    if self.num_batches is not None and self._produced >= self.num_batches:
      return None
    b = self._produced
    self._produced += 1
    if self.keep_on_device:
      return self._device_batch(b)
    local = next(self._host_iter)
    return {k: jax.make_array_from_process_local_data(self.sharding, np.asarray(v))
            for k, v in local.items()}

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, jax.Array]:
    while len(self._queue) <= self.prefetch:
      batch = self._produce()
      if batch is None:
        break
      self._queue.append(batch)
    if not self._queue:
      raise StopIteration
    self._next_batch += 1
    return self._queue.popleft()

  def __len__(self) -> int:
    if self.num_batches is None:
      raise TypeError("an InputPipeline with num_epochs=None has no length.")
    return self.num_batches

  def get_state(self) -> dict[str, Any]:
    """JSON-serialisable position: the next batch to yield, and what the order depends on."""
    return {"next_batch": self._next_batch, "seed": self.seed, "shuffle": self.shuffle,
            "num_examples": self.num_examples, "global_batch_size": self.global_batch_size}

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues from a state saved by `get_state` of an identically built pipeline."""
    for key in ("seed", "shuffle", "num_examples", "global_batch_size"):
      if state.get(key) != getattr(self, key):
        raise ValueError(
            f"pipeline state {key}={state.get(key)!r} does not match this pipeline's "
            f"{getattr(self, key)!r}.")
    self._next_batch = int(state["next_batch"])
    self._reset()
