"""Grafting imported variables (e.g. a pretrained backbone) into a freshly initialised tree."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from seg_jax.weights import common


def merge_variables(initial: Mapping[str, Any], imported: Mapping[str, Any], *, into: str = "",
                    skip: Sequence[str] = (), reinit: Sequence[str] = ()
                    ) -> tuple[dict[str, Any], dict[str, str]]:
  """``initial`` with every leaf of ``imported`` copied in, and where each leaf came from.

  Paths are ``"collection/module/.../leaf"`` strings (``"params/backbone/conv1/kernel"``).

  Args:
    initial: variables of the target model, freshly initialised.
    imported: variables to copy in, e.g. ``from_torch("resnet50", ...)`` for a backbone.
    into: module path in ``initial`` that ``imported`` is placed under (``"backbone"`` puts
      ``params/conv1/kernel`` at ``params/backbone/conv1/kernel``); empty for the whole model.
    skip: path prefixes of ``imported`` (before ``into`` is applied) not to copy, e.g.
      ``("params/fc",)`` for a classifier's head.
    reinit: path prefixes of ``initial`` whose leaves keep their initial values when the
      imported shape differs (a head with another class count).

  Returns:
    The merged variables and ``{path: provenance}`` for every leaf of ``initial`` and every
    skipped one of ``imported``: ``"imported"``, ``"initialised"``, ``"re-initialised: ..."``
    or ``"skipped"``.

  Raises:
    ValueError: an imported leaf with no place in ``initial``, or of another shape outside
      ``reinit`` (the message lists them).
  """
  def placed(path):
    collection, _, rest = path.partition("/")
    return f"{collection}/{into}/{rest}" if into else path

  target = common.flatten(initial)
  merged, provenance = dict(target), {path: "initialised" for path in target}
  unplaced, misshaped = [], []
  for path, value in common.flatten(imported).items():
    if any(path.startswith(prefix) for prefix in skip):
      provenance[path] = "skipped"
      continue
    destination = placed(path)
    if destination not in target:
      unplaced.append(path)
    elif tuple(value.shape) != tuple(target[destination].shape):
      if any(destination.startswith(prefix) for prefix in reinit):
        provenance[destination] = (f"re-initialised: imported shape {tuple(value.shape)}, "
                                   f"model shape {tuple(target[destination].shape)}")
      else:
        misshaped.append(f"{path}: {tuple(value.shape)} vs {tuple(target[destination].shape)}")
    else:
      merged[destination] = value
      provenance[destination] = "imported"
  if unplaced or misshaped:
    raise ValueError(f"imported variables do not fit the model{' under ' + into if into else ''}"
                     f": no place for {unplaced}, mis-shaped {misshaped}")
  return common.unflatten(merged), provenance
