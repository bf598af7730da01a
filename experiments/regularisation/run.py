"""Regularisation on a training set small enough to overfit: weight decay, dropout and BatchNorm /
GroupNorm / no norm, each against the same unregularised baseline.

    python -m experiments.regularisation.run [--out=DIR] [--data_root=DIR] [--toy]

Runs the sweep of ``sweep.py`` (the settings, the 8-image training set and the budget are
there) with ``seg_jax.sweep``'s runner in ``RUNS`` (``<out>/runs`` with ``--toy``); a finished
run is read back, not trained again. Every run's last checkpoint is then also scored on its
training images (``--config.train.mode=eval --config.eval.split=train``), so the gap between
train and val is measured the same way on both. Writes ``curves.png`` (train and val loss per
setting, mean ± std over seeds) and the README's table.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import Optional

from experiments import common
from experiments import sweeps

FOLDER = os.path.dirname(os.path.abspath(__file__))
RUNS = os.path.join(tempfile.gettempdir(), "regularisation")


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Runs the experiment and writes the README section; see the module docstring."""
  args = common.parse_args(__doc__.splitlines()[0], FOLDER, argv)
  sweeps.run_experiment(args, __spec__.name, os.path.join(FOLDER, "sweep.py"), RUNS)


if __name__ == "__main__":
  main()
