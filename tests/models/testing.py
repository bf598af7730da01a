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

# Smallest ResNet, VGG and Xception-65 backbones (``backbone_kwargs``) that run every code path.
TINY_RESNET = {"width": 4, "stage_sizes": (1, 1, 1, 1)}
TINY_VGG = {"widths": (4, 4, 8, 8, 8)}
TINY_XCEPTION65 = {"width_divisor": 32, "middle_repeats": 1}


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


def random_variables(module, x, seed=0):
  """Variables of ``module`` for input ``x`` with every leaf random, BatchNorm statistics included.

  Kernels are fan-in scaled normals, scales and biases normal around 1 and 0, running means
  normal and running variances in [0.5, 1.5], so an imported or re-implemented BatchNorm that
  ignores any of them shows.
  """
  shapes = jax.eval_shape(lambda: module.init(KEY, x, train=False))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith("['kernel']"):
      value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    elif name.endswith("['var']"):
      value = rng.uniform(0.5, 1.5, size=leaf.shape)
    elif name.endswith("['scale']"):
      value = rng.normal(1.0, 0.2, size=leaf.shape)
    else:
      value = rng.normal(0.0, 0.2, size=leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)
