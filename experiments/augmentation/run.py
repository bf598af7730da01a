"""Augmentation off vs on, the same training budget on the Dubai tiles: how far apart train and
val end up, and what val and test score.

    python -m experiments.augmentation.run [--out=DIR] [--data_root=DIR] [--toy]

Runs the sweep of ``sweep.py`` (both settings and the budget are there) with
``seg_jax.sweep``'s runner in ``RUNS`` (``<out>/runs`` with ``--toy``, which trains ``TOY``);
a finished run is read back, not trained again. Every run's last checkpoint is then also scored
on its training images (``--config.train.mode=eval --config.eval.split=train``). Writes
``curves.png`` (train and val loss per setting, val mIoU; mean ± std over seeds) and the
README's ``training`` section. ``samples.py`` draws what the augmentation does to an image.
"""

from __future__ import annotations

import os
import tempfile

from configs import default
from experiments import common
from experiments import sweeps

FOLDER = os.path.dirname(os.path.abspath(__file__))
RUNS = os.path.join(tempfile.gettempdir(), "augmentation")
# One training program is enough to run the whole pipeline.
TOY = {"on": {**sweeps.TOY, "data.train_subset": 2,
              "model.kwargs": default.asym_unet_kwargs(**sweeps.TOY_PROPOSAL)}}


def run(options: common.Options) -> None:
  """Runs the experiment and writes the README section; see the module docstring."""
  sweeps.run_experiment(options, __spec__.name, os.path.join(FOLDER, "sweep.py"), TOY, RUNS,
                        "training")


if __name__ == "__main__":
  common.command(run, FOLDER)
