"""Dubai with augmentation off vs on, the same budget: the small asymmetric U-Net of
configs/default.py on the 54 training images at 72x128, 400 steps of batch 8 (about 59 epochs),
2 seeds.

  python -m seg_jax.sweep --config=configs/dubai.py \
      --sweep=experiments/augmentation/sweep.py --workdir=/tmp/augmentation

`python -m experiments.augmentation.run` runs this sweep, scores every run on its training
images too and writes the README's tables and figures.

"on" is configs/dubai.py's `data.augment`: flips, quarter turns (half turns on these non-square
images), scale 1-1.25, rotation ±10° and colour jitter, drawn anew for every image of every step
inside the train step; "off" trains on the images as stored.
"""

import os

from seg_jax import config_files

dubai = config_files.load_module(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs", "dubai.py"))

SEEDS = [0, 1]


def get_sweep():
  base = {"model.name": "asym_unet", "model.ablation": "", "eval.num_images": 2,
          "data.image_size": (72, 128), "train.num_steps": 400, "train.eval_every": 50,
          "train.checkpoint_every": 400, "train.log_every": 10,
          "model.kwargs": dubai.default.get_config().model.kwargs.to_dict()}
  return {"settings": {"off": {**base, "data.augment.enabled": False},
                       "on": {**base, "data.augment.enabled": True}},
          "seeds": SEEDS}
