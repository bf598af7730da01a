"""Augmented training samples with their masks: what ``seg_jax.data.augment`` does to a Dubai
image at the settings of ``configs/dubai.py``, and a check that the mask moves with the image.

    python -m experiments.augmentation.samples [--out=DIR] [--data_root=DIR] [--toy]

Rows switch on one group of ``data.augment`` at a time (flips and quarter turns; scale and
rotation; colour), then all of them as Dubai training uses them. Every row uses the same random
key, so the last row composes the draws of the rows above it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import jax
import numpy as np

from configs import dubai as dubai_config
from experiments import common
from seg_jax import viz
from seg_jax import writers
from seg_jax.data import augment
from seg_jax.data import palettes

FOLDER = os.path.dirname(os.path.abspath(__file__))
# The fields of ``data.augment`` in each group, and the value that switches each one off.
GROUPS = {
    "flips and quarter turns": {"hflip": False, "vflip": False, "rot90": False},
    "scale and rotation": {"scale_min": 1.0, "scale_max": 1.0, "rotate_degrees": 0.0},
    "colour": {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0,
               "noise_std": 0.0},
}
# Share of the mask colour drawn over the image.
ALPHA = 0.5


def only(aug, groups: Sequence[str]):
  """A copy of the ``data.augment`` group ``aug`` with every group not in ``groups`` off."""
  aug = aug.copy_and_resolve_references()
  for name, off in GROUPS.items():
    if name not in groups:
      for field, value in off.items():
        setattr(aug, field, value)
  return aug


def _settings(aug) -> str:
  fields = [f for name in GROUPS for f in GROUPS[name]]
  return ", ".join(f"{f}={getattr(aug, f)}" for f in fields
                   if getattr(aug, f) != GROUPS[_group_of(f)][f])


def _group_of(field: str) -> str:
  return next(name for name, off in GROUPS.items() if field in off)


def draw(aug, image: np.ndarray, label: np.ndarray, key: jax.Array, draws: int,
         ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
  """``draws`` augmentations of one image and its label by ``augment_batch`` at settings ``aug``."""
  # Compiled whole, as in the train step: a few times cheaper than op-by-op dispatch here.
  run = jax.jit(functools.partial(augment.augment_batch, aug_config=aug,
                                  ignore_index=ignore_index))
  images, labels = run(np.repeat(image[None], draws, 0), np.repeat(label[None], draws, 0), key)
  return np.asarray(images), np.asarray(labels)


def alignment(label: np.ndarray, key: jax.Array, aug, draws: int, ignore_index: int,
              shifts: Sequence[int] = (0, 1)) -> list[tuple[float, float, float]]:
  """Warps an image painted in the mask's class colours with the geometry of ``aug`` and ``key``.

  Where the image, read back through the palette, gives the warped mask's class, the two moved
  together; where it gives no class, bilinear sampling blended two classes at a boundary; where it
  gives another class, they came apart. Returns those three shares of the labelled pixels for
  each of ``shifts``, the pixels the warped mask is moved to the right first: a shift other than 0
  is a control that shows what a misaligned mask looks like to this check.
  """
  painted = palettes.encode_mask(label, palettes.DUBAI_AERIAL)
  images, labels = draw(only(aug, ("flips and quarter turns", "scale and rotation")), painted,
                        label, key, draws, ignore_index)
  read = np.stack([palettes.decode_mask(i, palettes.DUBAI_AERIAL, ignore_index)
                   for i in np.rint(images).astype(np.uint8)])
  shares = []
  for shift in shifts:
    moved = np.roll(labels, shift, axis=2)
    labelled = moved != ignore_index
    n = labelled.sum()
    aligned = (read == moved) & labelled
    blended = (read == ignore_index) & labelled
    shares.append((aligned.sum() / n, blended.sum() / n,
                   (labelled & ~aligned & ~blended).sum() / n))
  return shares


def _panel(image: np.ndarray, label: np.ndarray, title: str) -> viz.Panel:
  """The image above the image with its mask drawn over it, 4 white rows between."""
  mask = palettes.encode_mask(label, palettes.DUBAI_AERIAL).astype(np.float32)
  blend = (1 - ALPHA) * image + ALPHA * mask
  gap = np.full((4,) + image.shape[1:], 255.0)
  return viz.Panel(np.concatenate([image, gap, blend]).astype(np.uint8), title)


def run(options: common.Options) -> None:
  """Writes the figure and the generated README section; see the module docstring."""
  config = dubai_config.get_config()
  size = (48, 64) if options.toy else tuple(config.data.image_size)
  draws = 2 if options.toy else 3
  ignore = config.data.ignore_index
  scene = common.read_scene(options.data_root).resize(size)
  key = jax.random.fold_in(jax.random.key(config.seed), 0)
  rows = {name: (name,) for name in GROUPS}
  rows["all, as configs/dubai.py"] = tuple(GROUPS)
  if options.toy:
    # The last row runs every group; the rows of single groups add only compile time.
    rows = dict(list(rows.items())[-1:])
  figure, table = [], []
  for title, groups in rows.items():
    aug = only(config.data.augment, groups)
    images, labels = draw(aug, scene.image, scene.label, key, draws, ignore)
    figure.append([_panel(scene.image.astype(np.float32), scene.label, f"{title}: original")]
                  + [_panel(images[i], labels[i], f"draw {i + 1}") for i in range(draws)])
    added = (labels == ignore).mean() - (scene.label == ignore).mean()
    shares, control = alignment(scene.label, key, aug, draws, ignore)
    table.append([title, _settings(aug), f"{100 * added:.2f}%"]
                 + [f"{100 * s:.2f}%" for s in shares])
  # The control of the last row: the same check with its mask moved one pixel.
  table.append([f"{title}, mask moved 1 pixel right (control)", "", ""]
               + [f"{100 * s:.2f}%" for s in control])
  names = palettes.DUBAI_AERIAL.names
  legend = dict(zip(names + ("ignore",),
                    palettes.DUBAI_AERIAL.colors + (palettes.DUBAI_AERIAL.ignore_color,)))
  viz.save_panels(figure, os.path.join(options.out, "samples.png"), legend=legend, panel_inches=2.5,
                  title="seg_jax.data.augment at the settings of configs/dubai.py: image (top), "
                        "image with its augmented mask (bottom)")
  common.finish(options, __spec__.name, [
      f"Image: {scene.source}; {draws} draws per row, key `fold_in(key(config.seed), 0)`.",
      writers.markdown_table(
          ["row", "settings on", "ignore pixels added", "mask and image agree",
           "blended at a class boundary", "disagree"], table),
      "![augmented samples](samples.png)"], name="samples")


if __name__ == "__main__":
  common.command(run, FOLDER)
