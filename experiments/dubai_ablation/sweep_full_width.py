r"""The Dubai ablation study at full width, for one accelerator (not run on the 2-core CPU).

  python -m seg_jax.sweep --config=configs/dubai.py \
      --sweep=experiments/dubai_ablation/sweep_full_width.py --workdir=/tmp/dubai_ablation_full \
      --config.model.dtype=bfloat16 --config.optim.learning_rate=1e-3 \
      --config.train.global_batch_size=16 --config.train.num_steps=4000 \
      --config.optim.warmup_steps=200 --config.train.eval_every=200 \
      --config.train.checkpoint_every=200 --config.train.log_every=100

The settings of sweep.py with the proposal at the widths of configs/asym_unet.py (encoder
32-64-128-256-512 with 2-2-3-3-3 blocks and SE, ASPP 256, decoder 128-64-32-32:
12,766,158 parameters at 6 classes) and the baselines sized to it (each within 0.3 %): `unet`
with widths 41-82-164-328-656, `deeplabv3plus` on a ResNet-50 of width 28 at output stride 16
with the paper's 256-channel ASPP and decoder, `fcn8s` on VGG-16 widths 32-64-128-256-256 with
686-channel fc6/fc7. On an accelerator the runner trains the three seeds of a setting as
replicas of one program (--replicas=0). Whether 4000 steps is long enough shows in curves.png:
val mIoU must have stopped rising.
"""

import os

from seg_jax import config_files

_HERE = os.path.dirname(os.path.abspath(__file__))
sweep = config_files.load_module(os.path.join(_HERE, "sweep.py"))
asym_unet = config_files.load_module(os.path.join(_HERE, "..", "..", "configs", "asym_unet.py"))

BASELINES = {
    "unet": dict(backbone_kwargs=dict(widths=(41, 82, 164, 328, 656))),
    "deeplabv3plus": dict(backbone_kwargs=dict(width=28, output_stride=16),
                          neck_kwargs=dict(features=256),
                          decoder_kwargs=dict(low_level_features=48, features=256)),
    "fcn8s": dict(backbone_kwargs=dict(widths=(32, 64, 128, 256, 256)),
                  neck_kwargs=dict(features=686)),
}


def get_sweep():
  settings = sweep.settings(asym_unet.get_config().model.kwargs.to_dict(), BASELINES)
  return {"settings": settings, "seeds": sweep.get_sweep()["seeds"]}
