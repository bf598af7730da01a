"""Activations: the functions seg_jax's models use and their derivatives, and softmax with a
temperature.

    python -m experiments.activations.run [--out=DIR] [--toy]

Each function is ``seg_jax.layers.activation(name)``, the one a model gets from ``act=name``;
each derivative is ``jax.grad`` of it. Nothing here re-types a formula.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from seg_jax import layers
from seg_jax import viz
from seg_jax import writers
from seg_jax.data import palettes

FOLDER = os.path.dirname(os.path.abspath(__file__))
NAMES = ("relu", "leaky_relu", "elu", "gelu", "silu", "sigmoid", "tanh")
# Points where the table reads each function and its derivative.
POINTS = (-3.0, -0.5, 0.0, 0.5, 3.0)
# Class scores of one pixel (logits), one per Dubai class, for the softmax figure.
LOGITS = (2.0, 1.0, 0.5, 0.0, -1.0, -2.0)
TEMPERATURES = (0.25, 0.5, 1.0, 2.0, 5.0)


def derivative(name: str):
  """Element-wise derivative of activation ``name``: ``jax.grad`` mapped over an array."""
  return jax.vmap(jax.grad(layers.activation(name)))


def activation_curves(x: np.ndarray, out: str) -> str:
  """One plot per activation with the function and its derivative; a table at ``POINTS``."""
  panels, rows = [], []
  # One call per function: the plotted points followed by the table's.
  inputs = jnp.concatenate([jnp.asarray(x), jnp.asarray(POINTS, x.dtype)])
  for name in NAMES:
    values = np.asarray(layers.activation(name)(inputs))
    slopes = np.asarray(jax.jit(derivative(name))(inputs))
    y, dy = values[:len(x)], slopes[:len(x)]
    panels.append(viz.Curves({f"{name}(x)": (x, y), f"d/dx {name}(x)": (x, dy)}, title=name,
                             xlabel="x"))
    rows.append([name] + [f"{v:.3f}" for v in values[len(x):]]
                + [f"{v:.3f}" for v in slopes[len(x):]]
                + [f"{dy.max():.3f}", f"{x[np.argmax(dy)]:.2f}"])
  viz.save_curve_panels(panels, os.path.join(out, "activations.png"), ncols=4,
                        title="seg_jax.layers.activation(name) and its jax.grad")
  header = (["activation"] + [f"f({p:g})" for p in POINTS] + [f"f'({p:g})" for p in POINTS]
            + [f"max f' on [{x[0]:g}, {x[-1]:g}]", "first x where f' is largest"])
  return writers.markdown_table(header, rows)


def softmax_temperature(out: str) -> str:
  """``activation("softmax")`` of ``LOGITS / T`` for each temperature T."""
  softmax = layers.activation("softmax")
  names = palettes.DUBAI_AERIAL.names
  logits = jnp.asarray(LOGITS)
  index = np.arange(len(LOGITS))
  curves, rows = {}, []
  for t in TEMPERATURES:
    p = np.asarray(softmax(logits / t))
    curves[f"T = {t:g}"] = (index, p)
    rows.append([f"{t:g}"] + [f"{v:.3f}" for v in p] + [f"{p.sum():.3f}"])
  scores = viz.Curves({"logit": (index, np.asarray(logits))}, title="class scores (logits)",
                      ylabel="logit", xticklabels=names, markers=True)
  probabilities = viz.Curves(curves, title="softmax(logits / T)", ylabel="probability",
                             xticklabels=names, markers=True)
  viz.save_curve_panels([scores, probabilities], os.path.join(out, "softmax.png"), ncols=2,
                        panel_inches=4.5,
                        title="Softmax with temperature T over one pixel's class scores")
  return writers.markdown_table(
      ["T"] + [f"p({n})" for n in names] + ["sum"],
      [["logit"] + [f"{v:g}" for v in LOGITS] + [""]] + rows)


def run(options: common.Options) -> None:
  """Writes the figures and the generated README section; see the module docstring."""
  x = np.linspace(-4.0, 4.0, 41 if options.toy else 801, dtype=np.float32)
  sections = [
      "### Activations and their derivatives\n\n" + activation_curves(x, options.out)
      + "\n\n![activations](activations.png)",
      "### Softmax and temperature\n\n" + softmax_temperature(options.out)
      + "\n\n![softmax](softmax.png)",
  ]
  common.finish(options, __spec__.name, sections)


if __name__ == "__main__":
  common.command(run, FOLDER, images=False)
