r"""The proposal and three baselines of its size on the NAIP RGB+NIR tiles, and the proposal on
RGB alone, 3 seeds each.

  python -m seg_jax.sweep --config=configs/naip.py --sweep=experiments/naip_rgbn/sweep.py \
      --workdir=/tmp/naip_rgbn --readme=experiments/naip_rgbn/README.md

(not run yet; README.md). Four models within 1 % of each other in parameters for the 4 bands
and 6 classes of configs/naip.py (tests/test_sweep.py): the proposal as configs/naip.py trains
it (`asym_unet`, 680,622 parameters), `unet` and `deeplabv3plus` at the widths that
experiments/dubai_ablation/sweep.py sized to the same proposal, and UNet++ (`unetpp_resnet34`,
the published model of this data set) on a ResNet-34 of width 10 (stages 10-20-40-80) with
decoder widths 48-24-16-16-16: SMP's halving from 48, held at SMP's last width, 16.
`asym_unet_rgb` is the proposal reading bands 1-3 only (680,478 parameters: its first
convolution has 3 input channels), for what near-infrared adds.
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


RGB_BANDS = naip.VARIANTS["rgb"]
"""data.bands of the proposal's RGB-only arm: red, green, blue, without near-infrared."""


def model_setting(name: str) -> dict:
  return {"model.name": name, "model.ablation": "", "model.kwargs": MODELS[name]}


def get_sweep():
  # Question 1, what near-infrared adds: the proposal on RGB alone beside its 4-band run (the
  # same model but for the first convolution's input channels, the same budget). Question 2:
  # the four models of equal size on the 4 bands.
  settings = {"asym_unet": model_setting("asym_unet"),
              "asym_unet_rgb": {**model_setting("asym_unet"), "data.bands": RGB_BANDS}}
  settings.update({name: model_setting(name) for name in MODELS if name not in settings})
  return {"settings": settings, "seeds": [0, 1, 2]}
