r"""Question 3 of the NAIP study: test mIoU against CPU minutes for its best setting.

  python -m seg_jax.sweep --config=configs/naip.py \
      --sweep=experiments/naip_rgbn/budget/sweep.py --workdir=/tmp/naip_budget \
      --readme=experiments/naip_rgbn/budget/README.md

The setting of experiments/naip_rgbn/sweep.py named by `SETTING` (its model and bands), trained
for each number of steps of `STEPS` with everything else of configs/naip.py unchanged (the cosine
schedule decays over each run's own steps, val scored every 200 steps and at the end, the best
val checkpoint scored on test). Three seeds per budget, but one for the longest (`seeds_of`), the
point that says what more time buys; the study's own 800-step runs are the fourth point
(README.md beside this file).
"""

import os

from seg_jax import config_files

_HERE = os.path.dirname(os.path.abspath(__file__))
study = config_files.load_module(os.path.join(_HERE, "..", "sweep.py"))

SETTING = "asym_unet"
"""The setting of the study's sweep whose budget curve this is."""

STEPS = (1300, 400, 2600)
"""Train steps of batch 8: 28 minutes of the idle 2-core CPU first (the study's 30-minute goal
budget), then 8 and 53 minutes (measured, README.md beside this file)."""


def get_sweep():
  base = study.get_sweep()["settings"][SETTING]
  settings = {f"steps_{n}": {**base, "train.num_steps": n} for n in STEPS}
  return {"settings": settings, "seeds": [0, 1, 2], "seeds_of": {f"steps_{max(STEPS)}": [0]}}
