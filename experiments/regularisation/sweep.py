"""Weight decay, dropout and BatchNorm / GroupNorm / no norm on a training set small enough to
overfit: 8 Dubai training images, no augmentation, about 100 epochs, 2 seeds.

  python -m seg_jax.sweep --config=configs/dubai.py \
      --sweep=experiments/regularisation/sweep.py --workdir=/tmp/regularisation

`python -m experiments.regularisation.run` runs this sweep, scores every run on its training
images too and writes the README's tables and figures.

Every setting is the small asymmetric U-Net of configs/default.py (170k parameters) at 72x128;
"baseline" has BatchNorm and no other regulariser (no weight decay, no dropout), and each other
setting changes one thing.
"""

import os

from seg_jax import config_files

default = config_files.load_module(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs", "default.py"))

SEEDS = [0, 1]
WEIGHT_DECAY = 1.0  # AdamW's decoupled decay: each step shrinks kernels by lr * WEIGHT_DECAY
DROPOUT = 0.5  # on the deepest encoder stage and after ASPP
GROUPS = 4  # GroupNorm groups; divides every width of the model
TRAIN_IMAGES = 8
# The proposal's widths: arguments of configs/default.py's asym_unet_kwargs.
WIDTHS = dict(widths=(8, 16, 32, 64), blocks=(1, 1, 2, 2), decoder_widths=(32, 16, 8),
              aspp_features=32, se_reduction=4)
# Overrides every setting shares: the small training set and the budget.
BASE = {"model.name": "asym_unet", "model.ablation": "", "data.image_size": (72, 128),
        "data.train_subset": TRAIN_IMAGES, "data.augment.enabled": False,
        "optim.weight_decay": 0.0, "optim.warmup_steps": 10, "train.num_steps": 200,
        "train.global_batch_size": 4, "eval.global_batch_size": 8, "train.eval_every": 20,
        "train.checkpoint_every": 200, "train.log_every": 10, "eval.num_images": 2}


def model_kwargs(widths: dict, *, norm="batch", dropout: float = 0.0) -> dict:
  """model.kwargs of asym_unet at `widths` with `norm` and `dropout` in every part that has them."""
  kwargs = default.asym_unet_kwargs(**widths)
  kwargs["backbone_kwargs"].update(norm=norm, dropout_rate=dropout)
  kwargs["neck_kwargs"].update(norm=norm, dropout_rate=dropout)
  kwargs["decoder_kwargs"].update(norm=norm)
  return kwargs


def settings() -> dict:
  """Setting name -> overrides."""
  out = {
      "baseline": {},
      "weight_decay": {"optim.weight_decay": WEIGHT_DECAY},
      "dropout": {"model.kwargs": model_kwargs(WIDTHS, dropout=DROPOUT)},
      "group_norm": {"model.kwargs": model_kwargs(WIDTHS, norm={"kind": "group",
                                                                "num_groups": GROUPS})},
      "no_norm": {"model.kwargs": model_kwargs(WIDTHS, norm="none")},
  }
  return {name: {**BASE, "model.kwargs": model_kwargs(WIDTHS), **overrides}
          for name, overrides in out.items()}


def get_sweep():
  return {"settings": settings(), "seeds": SEEDS}
