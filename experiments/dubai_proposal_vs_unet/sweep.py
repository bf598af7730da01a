r"""The proposal (asym_unet) and a plain U-Net on the Dubai tiles with the same budget, 2 seeds.

  python -m seg_jax.sweep --config=configs/dubai.py \
      --sweep=experiments/dubai_proposal_vs_unet/sweep.py --workdir=/tmp/dubai_proposal_vs_unet \
      --readme=experiments/dubai_proposal_vs_unet/README.md \
      --config.data.image_size='(72,128)' --config.train.num_steps=100 \
      --config.train.eval_every=20 --config.train.checkpoint_every=20 --config.train.log_every=20

(the 2-core CPU budget of README.md). Each setting is one architecture of configs/dubai.py
(`configs/dubai.py:<name>`).
"""

import os

from seg_jax import config_files

dubai = config_files.load_module(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs", "dubai.py"))


def get_sweep():
  return {"settings": {name: {"model.name": name, "model.kwargs": dubai.ARCHITECTURES[name]}
                       for name in ("asym_unet", "unet")},
          "seeds": [0, 1]}
