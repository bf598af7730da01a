"""Variable trees as flat ``{"params/a/b/kernel": array}`` dicts, and name-by-name matching."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seg_jax import models

Convert = Callable[[np.ndarray], np.ndarray]


def flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  """``{"collection/module/.../leaf": leaf}`` of a nested variable dict."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    flat["/".join(str(k.key) for k in path)] = leaf
  return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """The nested dict of ``flatten``'s output."""
  tree: dict[str, Any] = {}
  for path, leaf in flat.items():
    *parents, name = path.split("/")
    node = tree
    for key in parents:
      node = node.setdefault(key, {})
    node[name] = leaf
  return tree


def expected_shapes(model_name: str, num_classes: int, **model_kwargs: Any) -> dict[str, tuple]:
  """Flat ``{path: shape}`` of the variables of ``models.create(model_name, ...)``."""
  model = models.create(model_name, num_classes=num_classes, **model_kwargs)
  size = max(64, models.min_input_size(model_name))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                                             train=False))
  return {path: tuple(leaf.shape) for path, leaf in flatten(shapes).items()}


def match(source: str, found: Mapping[str, np.ndarray], expected: Mapping[str, tuple],
          names: Mapping[str, str], convert: Mapping[str, Convert],
          extra: Mapping[str, str] | None = None) -> dict[str, Any]:
  """Variables of ``expected`` filled from ``found`` by name; every difference is a ValueError.

  Args:
    source: what ``found`` came from, for the error message.
    found: source arrays by their own names.
    expected: ``{path: shape}`` of the seg_jax variables.
    names: the source name of every expected path.
    convert: per path, the conversion from the source layout to seg_jax's.
    extra: source names that carry no seg_jax variable, with the reason (e.g. a BatchNorm
      step counter); they must be present or absent as a group, never partly.

  Returns:
    The nested ``{"params": ..., "batch_stats": ...}`` dict of float32 arrays.
  """
  extra = extra or {}
  missing = sorted(names[p] for p in expected if names[p] not in found)
  unexpected = sorted(n for n in found if n not in set(names.values()) and n not in extra)
  flat, misshaped = {}, []
  for path, shape in expected.items():
    if names[path] not in found:
      continue
    value = convert[path](np.asarray(found[names[path]], np.float32))
    if value.shape != shape:
      misshaped.append(f"{names[path]}: {np.shape(found[names[path]])} gives {value.shape}, "
                       f"{path} needs {shape}")
    flat[path] = jnp.asarray(value)
  if missing or unexpected or misshaped:
    raise ValueError(
        f"{source} does not match the seg_jax model: missing {missing}, unexpected "
        f"{unexpected}, mis-shaped {misshaped}")
  return unflatten(flat)
