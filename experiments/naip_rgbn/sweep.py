r"""The proposal and three baselines of its size on the NAIP RGB+NIR tiles, 3 seeds each.

  python -m seg_jax.sweep --config=configs/naip.py --sweep=experiments/naip_rgbn/sweep.py \
      --workdir=/tmp/naip_rgbn --readme=experiments/naip_rgbn/README.md

(not run yet; README.md). Four models within 1 % of each other in parameters for the 4 bands
and 6 classes of configs/naip.py (tests/test_sweep.py): the proposal as configs/naip.py trains
it (`asym_unet`, 680,622 parameters), `unet` and `deeplabv3plus` at the widths that
experiments/dubai_ablation/sweep.py sized to the same proposal, and UNet++ (`unetpp_resnet34`,
the published model of this data set) on a ResNet-34 of width 10 (stages 10-20-40-80) with
decoder widths 48-24-16-16-16: SMP's halving from 48, held at SMP's last width, 16.
"""

import os

from seg_jax import config_files

_HERE = os.path.dirname(os.path.abspath(__file__))
naip = config_files.load_module(os.path.join(_HERE, "..", "..", "configs", "naip.py"))
dubai_ablation = config_files.load_module(os.path.join(_HERE, "..", "dubai_ablation", "sweep.py"))

MODELS = {
    "asym_unet": naip.get_config().model.kwargs.to_dict(),
    "unet": dubai_ablation.BASELINES["unet"],
    "unetpp_resnet34": dict(backbone_kwargs=dict(width=10),
                            decoder_kwargs=dict(widths=(48, 24, 16, 16, 16))),
    "deeplabv3plus": dubai_ablation.BASELINES["deeplabv3plus"],
}
"""model.kwargs of each model, by its registered name."""


def get_sweep():
  return {"settings": {name: {"model.name": name, "model.ablation": "", "model.kwargs": kwargs}
                       for name, kwargs in MODELS.items()},
          "seeds": [0, 1, 2]}
