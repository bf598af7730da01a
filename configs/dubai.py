r"""python -m seg_jax.main --config=configs/dubai.py --workdir=/tmp/seg_dubai

Dubai aerial imagery (72 images in 8 tiles; where to get it: README). `data.root` defaults to
shared/data/dubai_aerial beside the repository folder; `--config.data.root=DIR` points elsewhere.
Whole tiles are assigned to train/val/test, images resized to 144x256 as in the original
notebook. The part after a colon picks the architecture at CPU-friendly widths:
`--config=configs/dubai.py:asym_unet` (the default, the proposal) or
`--config=configs/dubai.py:unet` (plain U-Net, same budget), or
`--config=configs/dubai.py:deeplabv3plus` (DeepLabV3+ on a full ResNet-50, accelerator-sized,
for fine-tuning ImageNet weights: `--config.model.init_from=torchvision:resnet50:IMAGENET1K_V2`).
Measured on the 2-core CPU: see experiments/dubai_proposal_vs_unet/README.md,
experiments/dubai_ablation/README.md and experiments/transfer_learning/README.md. The first's
full-resolution section trained this config as it is (asym_unet, seed 0, 300 steps at 144x256;
35m13s wall at load 8-15): best checkpoint at step 200, val mIoU 0.375 and test mIoU 0.402 over
the six classes; without `unlabeled`, a class no run predicts (IoU 0.000), 0.450 and 0.483
(the mean of the other five classes' IoUs in that README's table, rounded to 3 decimals there).
`--config.eval.exclude_classes='("unlabeled",)'` reports both (`miou` and `miou_excluding`).
"""

import os

import ml_collections

from seg_jax import config_files

default = config_files.sibling(__file__, "default")

ARCHITECTURES = {
    # Widths small enough that a 2-core CPU run of train.num_steps stays within about 10 minutes.
    "asym_unet": default.asym_unet_kwargs(
        widths=(16, 32, 64, 128), blocks=(1, 2, 2, 2), decoder_widths=(64, 32, 16),
        aspp_features=64, se_reduction=8),
    "unet": dict(backbone_kwargs=dict(widths=(16, 32, 64, 128))),
    # The paper's widths on torchvision's ResNet-50 layout (any torchvision ResNet through
    # model.kwargs.backbone), so model.init_from can name torchvision's ImageNet weights.
    "deeplabv3plus": dict(backbone="resnet50", backbone_kwargs=dict(output_stride=16),
                          neck_kwargs=dict(features=256, rates=(6, 12, 18)),
                          decoder_kwargs=dict(low_level_features=48, features=256)),
}


def get_config(arch: str = "asym_unet"):
  """The Dubai aerial set at 144x256 with model `arch` (a key of ARCHITECTURES)."""
  if arch not in ARCHITECTURES:
    raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
  config = default.get_config()
  config.model.name = arch
  config.model.kwargs = ml_collections.ConfigDict(ARCHITECTURES[arch])
  config.data.name = "dubai_aerial"
  config.data.root = os.path.normpath(os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "dubai_aerial"))
  config.data.image_size = (144, 256)
  config.data.augment.scale_max = 1.25
  config.data.augment.rotate_degrees = 10.0
  config.optim.warmup_steps = 20
  config.train.num_steps = 300
  config.train.log_every = 20
  config.train.eval_every = 100
  config.train.checkpoint_every = 100
  return config
