r"""The published protocol on one accelerator: full-size UNet++/ResNet-34 and the proposal at full
width, 100 epochs, 3 seeds each (not run on the 2-core CPU).

  python -m seg_jax.sweep --config=configs/naip.py \
      --sweep=experiments/naip_rgbn/sweep_full_size.py --workdir=/tmp/naip_full_size \
      --readme=experiments/naip_rgbn/full_size/README.md \
      --config.model.dtype=bfloat16 --config.train.global_batch_size=16 \
      --config.train.num_steps=807 --config.train.eval_every=81 \
      --config.train.checkpoint_every=81 --config.train.log_every=27

The data set's published result (../shared/data/naip_rgbn/README.md): SMP's UNet++ with a
ResNet-34 encoder from scratch on the 4 bands, 100 epochs of batch 16 (807 steps of the 129
training tiles), AdamW at 1e-3 with weight decay 1e-4 and a cosine schedule, mixed precision.
The flags above give configs/naip.py that protocol (its augmentation and 30-step warmup kept);
`unetpp_resnet34` is the preset of exactly SMP's parameter count (26,082,470 for 4 bands and 6
classes), `asym_unet` is the proposal at the widths of configs/asym_unet.py. On an accelerator
the runner trains the three seeds of a setting as replicas of one program (--replicas=0).
"""

import os

from seg_jax import config_files

_HERE = os.path.dirname(os.path.abspath(__file__))
asym_unet = config_files.load_module(os.path.join(_HERE, "..", "..", "configs", "asym_unet.py"))

MODELS = {
    "unetpp_resnet34": {},  # the preset: SMP's UnetPlusPlus("resnet34") layer for layer
    "asym_unet": asym_unet.get_config().model.kwargs.to_dict(),
}
"""model.kwargs of each model, by its registered name."""


def get_sweep():
  return {"settings": {f"{name}_full": {"model.name": name, "model.ablation": "",
                                        "model.kwargs": kwargs}
                       for name, kwargs in MODELS.items()},
          "seeds": [0, 1, 2]}
