r"""The proposal's ablations and three baselines on the Dubai tiles, matched in parameters.

  python -m seg_jax.sweep --config=configs/dubai.py --sweep=experiments/dubai_ablation/sweep.py \
      --workdir=/tmp/dubai_ablation --readme=experiments/dubai_ablation/README.md \
      --config.data.image_size='(72,128)' --config.train.num_steps=100 \
      --config.train.eval_every=20 --config.train.checkpoint_every=20 --config.train.log_every=20

(the 2-core CPU budget of README.md; sweep_full_width.py is the same study for an accelerator).
The seven `asym_unet` ablation settings (seg_jax.models.asym_unet.ABLATIONS) switch parts of the
proposal on and off at the widths of configs/dubai.py ("full" is the proposal itself). The
baselines are sized to the full proposal's 680,478 parameters (each within 0.4 % of it at 6
classes): `unet` with widths 19-38-76-152, `deeplabv3plus` on a ResNet-50 of width 6 at output
stride 16 with 64-channel ASPP and decoder, `fcn8s` on VGG-16 widths 8-16-32-64-64 with
136-channel fc6/fc7.
"""

import os
from typing import Any

from seg_jax import config_files

_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs")
dubai = config_files.load_module(os.path.join(_CONFIGS, "dubai.py"))

ABLATIONS = ("plain_unet", "plain_unet_se", "plain_unet_aspp", "asym", "asym_se", "asym_aspp",
             "full")
BASELINES = {
    "unet": dict(backbone_kwargs=dict(widths=(19, 38, 76, 152))),
    "deeplabv3plus": dict(backbone_kwargs=dict(width=6, output_stride=16),
                          neck_kwargs=dict(features=64),
                          decoder_kwargs=dict(low_level_features=24, features=64)),
    "fcn8s": dict(backbone_kwargs=dict(widths=(8, 16, 32, 64, 64)),
                  neck_kwargs=dict(features=136)),
}


def settings(proposal: dict[str, Any], baselines: dict[str, dict[str, Any]]
             ) -> dict[str, dict[str, Any]]:
  """The ablations of the proposal (asym_unet with model.kwargs `proposal`), then the
  `baselines` ({model name: model.kwargs})."""
  return {
      **{name: {"model.name": "asym_unet", "model.ablation": name, "model.kwargs": proposal}
         for name in ABLATIONS},
      **{name: {"model.name": name, "model.ablation": "", "model.kwargs": kwargs}
         for name, kwargs in baselines.items()},
  }


SETTINGS = settings(dubai.ARCHITECTURES["asym_unet"], BASELINES)


def get_sweep():
  return {"settings": SETTINGS, "seeds": [0, 1, 2]}
