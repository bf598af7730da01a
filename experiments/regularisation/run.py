"""Regularisation on a training set small enough to overfit: weight decay, dropout and BatchNorm /
GroupNorm / no norm, each against the same unregularised baseline.

    python -m experiments.regularisation.run [--out=DIR] [--data_root=DIR] [--toy]

Runs the sweep of ``sweep.py`` (the settings, the 8-image training set and the budget are
there) with ``seg_jax.sweep``'s runner in ``RUNS`` (``<out>/runs`` with ``--toy``, which trains
``TOY``); a finished run is read back, not trained again. Every run's last checkpoint is then
also scored on its training images (``--config.train.mode=eval --config.eval.split=train``), so
the gap between train and val is measured the same way on both. Writes ``curves.png`` (train
and val loss per setting, mean ± std over seeds) and the README's table.
"""

from __future__ import annotations

import os
import tempfile

from experiments import common
from experiments import sweeps
from experiments.regularisation import sweep

FOLDER = os.path.dirname(os.path.abspath(__file__))
RUNS = os.path.join(tempfile.gettempdir(), "regularisation")
# The setting whose norm is given by its fields (the test of the sweep builds every setting).
TOY = {"group_norm": {
    **sweeps.TOY, "data.train_subset": 2, "optim.warmup_steps": 1,
    "model.kwargs": sweep.model_kwargs(sweeps.TOY_PROPOSAL, norm={"kind": "group",
                                                                  "num_groups": 2})}}


def run(options: common.Options) -> None:
  """Runs the experiment and writes the README section; see the module docstring."""
  sweeps.run_experiment(options, __spec__.name, os.path.join(FOLDER, "sweep.py"), TOY, RUNS)


if __name__ == "__main__":
  common.command(run, FOLDER)
