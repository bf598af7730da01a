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
# The sizes of a full run and of a toy run (what the test runs).
SIZES = {
    "full": dict(image_size=(72, 128), steps=200, every=20, log_every=10,
                 model=dict(widths=(8, 16, 32, 64), blocks=(1, 1, 2, 2), decoder_widths=(32, 16, 8),
                            aspp_features=32, se_reduction=4)),
    "toy": dict(image_size=(32, 32), steps=2, every=2, log_every=1,
                model=dict(widths=(4, 8), blocks=1, decoder_widths=(4,), aspp_features=4,
                           se_reduction=2)),
}


def model_kwargs(size: str, *, norm="batch", dropout: float = 0.0) -> dict:
  """model.kwargs of asym_unet at `size` with `norm` and `dropout` in every part that has them."""
  kwargs = default.asym_unet_kwargs(**SIZES[size]["model"])
  kwargs["backbone_kwargs"].update(norm=norm, dropout_rate=dropout)
  kwargs["neck_kwargs"].update(norm=norm, dropout_rate=dropout)
  kwargs["decoder_kwargs"].update(norm=norm)
  return kwargs


def base(size: str) -> dict:
  """Overrides every setting shares: the small training set and the budget."""
  s = SIZES[size]
  return {"model.name": "asym_unet", "model.ablation": "", "data.image_size": s["image_size"],
          "data.train_subset": TRAIN_IMAGES if size == "full" else 2,
          "data.augment.enabled": False, "optim.weight_decay": 0.0,
          "optim.warmup_steps": s["every"] // 2, "train.num_steps": s["steps"],
          "train.global_batch_size": 4 if size == "full" else 2,
          "eval.global_batch_size": 8 if size == "full" else 2,
          "train.eval_every": s["every"], "train.checkpoint_every": s["steps"],
          "train.log_every": s["log_every"], "eval.num_images": 2}


def settings(size: str) -> dict:
  """Setting name -> overrides."""
  out = {
      "baseline": {},
      "weight_decay": {"optim.weight_decay": WEIGHT_DECAY},
      "dropout": {"model.kwargs": model_kwargs(size, dropout=DROPOUT)},
      "group_norm": {"model.kwargs": model_kwargs(
          size, norm={"kind": "group", "num_groups": GROUPS if size == "full" else 2})},
      "no_norm": {"model.kwargs": model_kwargs(size, norm="none")},
  }
  return {name: {**base(size), "model.kwargs": model_kwargs(size), **overrides}
          for name, overrides in out.items()}


# A toy run trains this setting only (the one whose norm is given by its fields; the test of the
# sweep builds every setting).
TOY_SETTINGS = ("group_norm",)


def get_sweep(size: str = "full"):
  if size == "toy":
    return {"settings": {k: v for k, v in settings(size).items() if k in TOY_SETTINGS},
            "seeds": SEEDS[:1]}
  return {"settings": settings(size), "seeds": SEEDS}
