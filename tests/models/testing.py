"""Helpers and tiny model settings shared by the model tests."""

import jax
import jax.numpy as jnp
import numpy as np

# XLA compiles the "rbg" generator far faster than threefry on CPU; values do not matter here.
KEY = jax.random.key(0, impl="rbg")
DROPOUT_KEY = jax.random.key(1, impl="rbg")

# Small models compile several times faster without XLA's expensive CPU passes; the numbers
# checked in the tests do not depend on them.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

# Smallest ResNet and VGG backbones (``backbone_kwargs``) that still run every code path.
TINY_RESNET = {"width": 4, "stage_sizes": (1, 1, 1, 1)}
TINY_VGG = {"widths": (4, 4, 8, 8, 8)}


def host_init(module, x):
  """Variables with init's exact structure, filled on the host (skips compiling init's RNG).

  Kernels get a fan-in-scaled normal, BatchNorm scales and running variances one, the rest zero.
  """
  shapes = jax.eval_shape(lambda: module.init(KEY, x, train=False))
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith("['kernel']"):
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), leaf.dtype)
    if name.endswith("['scale']") or name.endswith("['var']"):
      return jnp.ones(leaf.shape, leaf.dtype)
    return jnp.zeros(leaf.shape, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def check_train_and_eval(test, model, variables, x, logits_shape):
  """Runs ``model`` in train and eval mode (one jit); checks logits and BatchNorm statistics.

  Logits must be finite float32 of ``logits_shape``; every running statistic must move in
  train mode and none in eval mode.
  """

  @jax.jit
  def run(variables, x):
    train = model.apply(variables, x, train=True, rngs={"dropout": DROPOUT_KEY},
                        mutable=["batch_stats"])
    evaluation = model.apply(variables, x, train=False, mutable=["batch_stats"])
    return train, evaluation

  (train_out, train_vars), (eval_out, eval_vars) = run(variables, x)
  for out in (train_out, eval_out):
    test.assertEqual(out.shape, logits_shape)
    test.assertEqual(out.dtype, jnp.float32)
    test.assertTrue(np.isfinite(np.asarray(out)).all())
  stats = variables.get("batch_stats", {})
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), stats,
                         dict(train_vars).get("batch_stats", {}))
  test.assertTrue(all(jax.tree.leaves(changed)))
  unchanged = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), stats,
                           dict(eval_vars).get("batch_stats", {}))
  test.assertTrue(all(jax.tree.leaves(unchanged)))
