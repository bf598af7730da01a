"""What every course experiment shares: its command line, the aerial image it looks at, size
checks, mean ± std over seeds and the generated part of its README.

Each experiment is one command run from the repository root, e.g.
``python -m experiments.convolution.run --out=experiments/convolution``; it writes its figures
into ``--out`` and rewrites the part of the README there between the ``<!-- generated:begin -->``
and ``<!-- generated:end -->`` markers, so every number a README shows comes from a run. Without
``--out`` it writes into a new temporary folder and says which: a run never rewrites the
committed README and figures of a clone unless ``--out`` names the experiment's own folder.

An experiment's ``run.py`` holds its question and its figures: ``run(options)`` writes them and
ends with ``finish``; ``command(run, FOLDER)`` makes it a command on seg_jax's contract
(``seg_jax.cli``: flags defined when the command starts, one error line, the exit codes of
``seg_jax.errors``). Experiments that train add ``experiments.sweeps``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, Optional

from absl import flags
import jax
import numpy as np
from PIL import Image

from configs import dubai as dubai_config
from seg_jax import cli
from seg_jax import errors
from seg_jax import results
from seg_jax import writers
from seg_jax.data import dubai
from seg_jax.data import palettes
from seg_jax.data import preprocess
from seg_jax.data import synthetic

FLAGS = flags.FLAGS
# Highway interchange, warehouses and roads: strong edges in every direction.
DUBAI_IMAGE = "tile1/image_part_009"
# Side of the synthetic scene used when no data folder is given.
SYNTHETIC_SIDE = 512


def dubai_root() -> str:
  """The Dubai aerial tiles where configs/dubai.py finds them."""
  return dubai_config.get_config().data.root


@dataclasses.dataclass(frozen=True)
class Options:
  """What an experiment is asked to do (its flags): where to write, at which size, what to read."""

  out: str  # the folder of its figures and README
  toy: bool = False  # tiny sizes, for tests
  data_root: str = ""  # the Dubai folder; "" = synthetic scenes
  workdir: str = ""  # a trained run to read; "" = train one
  start: float = dataclasses.field(default_factory=time.perf_counter)  # for the wall time


def options(folder: str, *, out: str = "", toy: bool = False, data_root: Optional[str] = None,
            workdir: str = "") -> Options:
  """The options of the experiment in ``folder``, writing into ``out``.

  ``out`` "" is a new temporary folder (printed); ``out`` = ``folder`` rewrites the committed
  README section and figures. ``data_root`` None is configs/dubai.py's folder. Creates ``out``.
  Raises:
    FlagError: ``toy`` with ``out`` = ``folder``: the toy figures would replace the committed ones.
  """
  if toy and out and os.path.abspath(out) == os.path.abspath(folder):
    raise errors.FlagError(f"--toy with --out={out}, the experiment's own folder: its figures "
                           "would replace the committed ones; give another --out or none")
  if not out:
    out = tempfile.mkdtemp(prefix=f"{os.path.basename(os.path.normpath(folder))}_")
    print(f"writing the figures and README into {out} (--out=DIR picks the folder; "
          f"--out={os.path.relpath(folder)} rewrites the committed ones)")
  os.makedirs(out, exist_ok=True)
  return Options(out, toy, dubai_root() if data_root is None else data_root, workdir)


def define_flags(images: bool = True) -> None:
  """Defines the experiments' own flags (those not defined yet): --out, --toy and, for an
  experiment that reads images, --data_root."""
  if "out" not in FLAGS:
    flags.DEFINE_string("out", "", "Folder of the figures and the README section (default: a new "
                        "temporary folder; the experiment's own folder rewrites the committed "
                        "ones).")
  if "toy" not in FLAGS:
    flags.DEFINE_bool("toy", False, "Tiny sizes, for tests (never into the experiment's own "
                      "folder, so the committed figures stay).")
  if images and "data_root" not in FLAGS:
    flags.DEFINE_string("data_root", dubai_root(),
                        "Dubai aerial folder; empty for synthetic scenes.")


def command(run: Callable[[Options], Optional[int]], folder: str, *, images: bool = True,
            workdir: bool = False) -> NoReturn:
  """Runs experiment ``run`` as a command: parses its flags (--workdir too if it reads a trained
  run), calls ``run(options)`` and exits with its code (None = 0)."""
  def main(argv) -> Optional[int]:
    del argv
    return run(options(folder, out=FLAGS.out, toy=FLAGS.toy,
                       data_root=FLAGS.data_root if images else "",
                       workdir=(FLAGS.workdir or "") if workdir else ""))

  cli.run(main, define_flags=functools.partial(define_flags, images),
          shared=("workdir",) if workdir else ())


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
  """Image ``name`` (``tileN/stem``) of the Dubai folder ``root``; a synthetic scene for "".

  Raises DataError naming ``root`` if it is not a folder or lacks the image.
  """
  if not root:
    image, label = synthetic.generate(0, 0, (SYNTHETIC_SIDE, SYNTHETIC_SIDE))
    return Scene(image, label, "synthetic aerial scene 0 (seg_jax.data.synthetic)")
  if not os.path.isdir(root):
    raise errors.DataError(f"--data_root={root!r} is not a folder; pass --data_root= (empty) to "
                           "use a synthetic scene instead")
  pairs = {p.name: p for p in dubai.find_pairs(root)}
  if name not in pairs:
    raise errors.DataError(f"{root} holds no image {name!r}; it has {sorted(pairs)[:3]}...")
  data = dubai_config.get_config().data
  image, label = dubai.read_pair(pairs[name], palettes.DUBAI_AERIAL, ignore_index=data.ignore_index,
                                 max_unknown_fraction=data.max_unknown_fraction)
  return Scene(image, label, f"Dubai aerial {name} ({label.shape[0]}x{label.shape[1]})")


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


def mean_std_text(values: Sequence[float]) -> str:
  """"mean ± std" over seeds (the mean alone for one value), as the sweep results write it."""
  return results.mean_std_text(*results.mean_std(values))


def seed_mean(curves: Sequence[Sequence[tuple[int, float]]]
              ) -> tuple[list[int], list[float], list[float]]:
  """(steps, mean, std) over seeds of (step, value) curves, at the steps they all have."""
  steps = sorted(set.intersection(*[{s for s, _ in c} for c in curves]))
  by_step = [dict(c) for c in curves]
  pairs = [results.mean_std([c[s] for c in by_step]) for s in steps]
  return steps, [m for m, _ in pairs], [s for _, s in pairs]


def write_readme_section(folder: str, text: str, name: str = "") -> str:
  """Replaces the generated section ``name`` of ``folder/README.md`` with ``text``.

  See ``seg_jax.writers.write_section``. Returns the README path.
  """
  path = os.path.join(folder, "README.md")
  writers.write_section(path, text, name)
  return path


def finish(options: Options, module: str, sections: Sequence[str], name: str = "") -> None:
  """Writes ``sections`` as README section ``name`` of ``options.out``, closed by a line with
  the command, its wall time since the options were made and the machine it ran on."""
  out = os.path.relpath(options.out)
  command_line = (f"python -m {module}" + (" --toy" if options.toy else "")
                  + f" --out={out if not out.startswith('..') else options.out}")
  seconds = time.perf_counter() - options.start
  provenance = (
      f"Generated by `{command_line}` in {seconds:.1f} s (Python and JAX start-up not included) "
      f"on {os.cpu_count()} CPU cores (load average {os.getloadavg()[0]:.1f} at the end), "
      f"jax {jax.__version__} on {jax.devices()[0].platform}.")
  path = write_readme_section(options.out, "\n\n".join(list(sections) + [provenance]), name)
  print(f"wrote the figures in {options.out} and {path}")
