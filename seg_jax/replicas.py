"""Several seeds of one config trained in one program: a layer over the single-run `Trainer`.

`Replicas` stacks S runs' states on a leading replica axis and jits the single run's pure steps
over it (`over_replicas`), so replica k computes exactly what seed `config.seed + k` trained
alone computes. The training loop drives a `Replicas` through the same methods as a `Trainer`
(`seeds`, `next_batch`, `replica`, `stack`, `evaluate_all`), and each replica writes the run
folder that seed would write alone (`workdir.replica_runs`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np

from seg_jax import checkpoint as checkpoint_lib
from seg_jax import data as data_lib
from seg_jax import errors
from seg_jax import steps
from seg_jax.state import TrainState


def over_replicas(fn: Callable, mode: str, in_axes: tuple[int | None, ...]) -> Callable:
  """`fn` applied to each slice of a leading replica axis of the arguments whose `in_axes` is 0
  (the others are shared), results stacked on that axis.

  mode "vmap": one batched computation (`jax.vmap`); "unroll": one copy of `fn` per replica in
  the same program, each computing exactly what `fn` computes for that replica alone. (Not
  `jax.lax.map`: XLA's CPU backend runs convolutions inside a loop body tens of times slower.)
  """
  if mode == "vmap":
    return jax.vmap(fn, in_axes=in_axes)

  def unrolled(*args):
    size = next(jax.tree.leaves(a)[0].shape[0] for a, axis in zip(args, in_axes) if axis == 0)
    return stack_trees([fn(*(jax.tree.map(lambda x: x[k], a) if axis == 0 else a
                             for a, axis in zip(args, in_axes))) for k in range(size)])

  return unrolled


def stack_trees(trees: list[Any]) -> Any:
  """The leaves of equally shaped pytrees stacked on a new leading axis, in the first's structure
  (static fields, such as a TrainState's optimizer, are taken from the first)."""
  leaves = [jax.tree.leaves(tree) for tree in trees]
  return jax.tree.unflatten(jax.tree.structure(trees[0]),
                            [jnp.stack(xs) for xs in zip(*leaves)])


def make_replicas_train_step(train_step: Callable, batch_sharding: NamedSharding,
                             mode: str) -> Callable:
  """`train_step` over a leading replica axis of the state, the keys and the metrics.

  The returned step takes one batch per replica (a tuple) and stacks them inside the jitted
  program; every replica has its own parameters, BatchNorm statistics, optimizer state, key and
  metrics, so replica k computes what `train_step` computes for it alone (`over_replicas`).
  """

  def replicas_step(state: TrainState, batches, rngs):
    batch = jax.tree.map(lambda *xs: jnp.stack(xs), *batches)
    batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    return over_replicas(train_step, mode, (0, 0, 0))(state, batch, rngs)

  return replicas_step



class Replicas(steps.Trainer):
  """`train.num_replicas` seeds of one config (seed, seed + 1, ...) trained in one program."""

  @property
  def seeds(self) -> tuple[int, ...]:
    return tuple(self.config.seed + k for k in range(self.config.train.num_replicas))

  def _steps(self, init_fn: Callable, train_step: Callable, eval_step: Callable
             ) -> tuple[Callable, ...]:
    mode = self.config.train.replica_mode
    if mode == "auto":
      mode = "unroll" if self.mesh.devices.flat[0].platform == "cpu" else "vmap"
    keys = lambda index: jnp.stack([steps.seed_key(seed, index) for seed in self.seeds])
    self._take = jax.jit(lambda state, k: jax.tree.map(lambda x: x[k], state),
                         out_shardings=self.replicated)
    self._stack = jax.jit(stack_trees, out_shardings=self.replicated)
    batch_sharding = NamedSharding(self.mesh, P(None, "data"))
    return (lambda: over_replicas(init_fn, mode, (0,))(keys(0)), lambda: keys(1),
            make_replicas_train_step(train_step, batch_sharding, mode),
            over_replicas(eval_step, mode, (0, None)), batch_sharding)

  def next_batch(self, pipelines) -> tuple[Any, ...]:
    """One batch from each replica's pipeline."""
    return tuple(next(p) for p in pipelines)

  def replica(self, state: TrainState, k: int) -> TrainState:
    """The state of replica k alone."""
    return self._take(state, np.int32(k))

  def stack(self, states: list[TrainState]) -> TrainState:
    """The state of all replicas from each one's own (inverse of `replica`)."""
    return self._stack(states)


def create_trainer(config: ml_collections.ConfigDict, dataset: data_lib.Dataset | None = None
                   ) -> steps.Trainer:
  """The trainer of `config`: `Replicas` when `train.num_replicas` > 1, else a `Trainer`."""
  if config.train.num_replicas > 1:
    return Replicas(config, dataset)
  return steps.Trainer(config, dataset)


def restore_together(ckpts: list[checkpoint_lib.Checkpointer], abstract_state: Any
                     ) -> list[checkpoint_lib.Restored | None]:
  """The newest checkpoint of each replica at one common step (None each: start afresh).

  A run killed between the saves of its replicas leaves some a checkpoint ahead; those resume
  from the common step too and keep the checkpoints they already hold.
  Raises:
    WorkdirError: a replica holds no intact checkpoint at the common step.
  """
  restored = [ckpt.restore_latest(abstract_state) for ckpt in ckpts]
  found = [0 if r is None else r.step for r in restored]
  common = min(found)
  for k, ckpt in enumerate(ckpts):
    if found[k] == common:
      continue
    restored[k] = ckpt.restore_latest(abstract_state, at_most=common) if common else None
    if common and (restored[k] is None or restored[k].step != common):
      at = ", ".join(f"step {s} in {c.directory}" for s, c in zip(found, ckpts))
      raise errors.WorkdirError(
          f"the replicas to train together have no common checkpoint ({at}); train each one on "
          "its own: --workdir=<its folder> --config.seed=<its seed> "
          "--config.train.num_replicas=1")
    logging.warning("%s resumes from step %d with the other replicas (it holds step %d)",
                    ckpt.directory, common, found[k])
  return restored
