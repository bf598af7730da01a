r"""A pilot of the Dubai ablation sweep: its "full" setting (the proposal) only, same seeds.

  python -m seg_jax.sweep --config=configs/dubai.py --sweep=experiments/dubai_ablation/pilot.py \
      --workdir=/tmp/dubai_ablation_pilot --config.train.num_steps=50
"""

import os

from seg_jax import config_files

sweep = config_files.load_module(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "sweep.py"))


def get_sweep():
  return {"settings": {"full": sweep.SETTINGS["full"]}, "seeds": sweep.get_sweep()["seeds"]}
