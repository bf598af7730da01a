"""What the course experiments share: their flags, the aerial image they look at, size checks and
the generated part of their READMEs.

Each experiment is one command run from the repository root, e.g.
``python -m experiments.convolution.run``; it writes its figures into its own folder and
rewrites the part of that folder's README between the ``<!-- generated:begin -->`` and
``<!-- generated:end -->`` markers, so every number a README shows comes from a run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from typing import Any, Optional

import jax
import numpy as np
from PIL import Image

from configs import dubai as dubai_config
from seg_jax import results
from seg_jax import writers
from seg_jax.data import dubai
from seg_jax.data import palettes
from seg_jax.data import preprocess
from seg_jax.data import synthetic

# The Dubai aerial tiles where configs/dubai.py finds them.
DUBAI_ROOT = dubai_config.get_config().data.root
# Highway interchange, warehouses and roads: strong edges in every direction.
DUBAI_IMAGE = "tile1/image_part_009"
# Side of the synthetic scene used when no data folder is given.
SYNTHETIC_SIDE = 512


@dataclasses.dataclass(frozen=True)
class Scene:
  """An RGB image (uint8 (H, W, 3)), its class labels (uint8 (H, W)) and where they come from."""

  image: np.ndarray
  label: np.ndarray
  source: str

  def gray(self) -> np.ndarray:
    """The image as float32 luminance in [0, 1], (H, W)."""
    return np.asarray(Image.fromarray(self.image).convert("L"), np.float32) / 255.0

  def rgb(self) -> np.ndarray:
    """The image as float32 RGB in [0, 1], (H, W, 3)."""
    return self.image.astype(np.float32) / 255.0

  def crop(self, size: int, centre: tuple[float, float] = (0.5, 0.5)) -> "Scene":
    """A ``size`` x ``size`` window centred at ``centre`` (fractions of height and width)."""
    h, w = self.label.shape
    if size > min(h, w):
      raise ValueError(f"crop size {size} exceeds the {h}x{w} image {self.source}")
    top = min(max(int(centre[0] * h) - size // 2, 0), h - size)
    left = min(max(int(centre[1] * w) - size // 2, 0), w - size)
    window = np.s_[top:top + size, left:left + size]
    return Scene(self.image[window], self.label[window],
                 f"{self.source}, {size}x{size} crop at (row {top}, column {left})")

  def resize(self, size: tuple[int, int]) -> "Scene":
    """Resized to (H, W) as the data pipeline does: bilinear image, nearest labels."""
    image, label = preprocess.resize_pair(self.image, self.label, size)
    return Scene(image, label, f"{self.source}, resized to {size[0]}x{size[1]}")


def read_scene(root: str, name: str = DUBAI_IMAGE) -> Scene:
  """Image ``name`` (``tileN/stem``) of the Dubai folder ``root``; a synthetic scene for ""."""
  if not root:
    image, label = synthetic.generate(0, 0, (SYNTHETIC_SIDE, SYNTHETIC_SIDE))
    return Scene(image, label, "synthetic aerial scene 0 (seg_jax.data.synthetic)")
  if not os.path.isdir(root):
    raise ValueError(f"--data_root={root!r} is not a folder; pass --data_root= (empty) to use a "
                     f"synthetic scene instead")
  pairs = {p.name: p for p in dubai.find_pairs(root)}
  if name not in pairs:
    raise ValueError(f"{root} holds no image {name!r}; it has {sorted(pairs)[:3]}...")
  data = dubai_config.get_config().data
  image, label = dubai.read_pair(pairs[name], palettes.DUBAI_AERIAL, ignore_index=data.ignore_index,
                                 max_unknown_fraction=data.max_unknown_fraction)
  return Scene(image, label, f"Dubai aerial {name} ({label.shape[0]}x{label.shape[1]})")


def parse_args(description: str, folder: str, argv: Optional[Sequence[str]],
               images: bool = True, workdir: bool = False) -> argparse.Namespace:
  """An experiment's flags: ``--out``, ``--toy``, if it reads ``images`` ``--data_root`` and if
  it reads a trained run ``--workdir``."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--out", default="",
                      help=f"folder for figures and README (default: {folder})")
  if images:
    parser.add_argument("--data_root", default=DUBAI_ROOT,
                        help="Dubai aerial folder; empty for a synthetic scene")
  if workdir:
    parser.add_argument("--workdir", default="",
                        help="a trained run to read (default: train one)")
  parser.add_argument("--toy", action="store_true",
                      help="tiny sizes, for tests (needs --out, so the committed figures stay)")
  args = parser.parse_args(argv)
  args.start = time.perf_counter()
  if args.toy and not args.out:
    parser.error("--toy needs --out: its figures would replace the committed ones")
  args.out = args.out or folder
  os.makedirs(args.out, exist_ok=True)
  return args


def check_shape(what: str, array: Any, expected: Sequence[int]) -> tuple[int, ...]:
  """Returns ``array``'s shape; raises AssertionError if it differs from ``expected``."""
  shape = tuple(np.shape(array))
  if shape != tuple(expected):
    raise AssertionError(f"{what}: the array has shape {shape} but the arithmetic gives "
                         f"{tuple(expected)}")
  return shape


def dims(values: Any) -> str:
  """``"HxW"``-style text of a shape, a list of sizes or an array's shape."""
  return "x".join(str(v) for v in (np.shape(values) if hasattr(values, "shape") else values))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A Markdown table; cells are written with ``str``, their ``|`` escaped."""
  def line(cells):
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
  return "\n".join([line(header), "|" + "---|" * len(header)] + [line(r) for r in rows])


def markers(name: str = "") -> tuple[str, str]:
  """The HTML comments that open and close generated README section ``name``."""
  return writers.section_markers(name)


def write_readme_section(folder: str, text: str, name: str = "") -> str:
  """Replaces the generated section ``name`` of ``folder/README.md`` with ``text``.

  See ``seg_jax.writers.write_section``. Returns the README path.
  """
  path = os.path.join(folder, "README.md")
  writers.write_section(path, text, name)
  return path


def finish(args: argparse.Namespace, module: str, sections: Sequence[str], name: str = "") -> None:
  """Writes ``sections`` as README section ``name`` of ``args.out``, closed by a line with the
  command, its wall time since ``parse_args`` and the machine it ran on."""
  command = f"python -m {module}" + (" --toy" if args.toy else "")
  seconds = time.perf_counter() - args.start
  provenance = (
      f"Generated by `{command}` in {seconds:.1f} s (Python and JAX start-up not included) on "
      f"{os.cpu_count()} CPU cores (load average {os.getloadavg()[0]:.1f} at the end), "
      f"jax {jax.__version__} on {jax.devices()[0].platform}.")
  path = write_readme_section(args.out, "\n\n".join(list(sections) + [provenance]), name)
  print(f"wrote the figures in {args.out} and {path}")


def read_json(path: str) -> Any:
  """The JSON value stored in ``path``."""
  with open(path) as f:
    return json.load(f)


def seed_mean(curves: Sequence[Sequence[tuple[int, float]]]
              ) -> tuple[list[int], list[float], list[float]]:
  """(steps, mean, std) over seeds of (step, value) curves, at the steps they all have."""
  steps = sorted(set.intersection(*[{s for s, _ in c} for c in curves]))
  by_step = [dict(c) for c in curves]
  pairs = [results.mean_std([c[s] for c in by_step]) for s in steps]
  return steps, [m for m, _ in pairs], [s for _, s in pairs]


def mean_std_text(values: Sequence[float], digits: int = 3) -> str:
  """"mean ± std" over seeds (the mean alone for one value)."""
  mean, std = results.mean_std(values)
  return f"{mean:.{digits}f}" if len(values) < 2 else f"{mean:.{digits}f} ± {std:.{digits}f}"
