r"""python -m seg_jax.main --config=configs/dubai.py --workdir=/tmp/seg_dubai

Dubai aerial imagery (72 images in 8 tiles; where to get it: README). `data.root` defaults to
shared/data/dubai_aerial beside the repository folder; `--config.data.root=DIR` points elsewhere.
Whole tiles are assigned to train/val/test, images resized to 144x256 as in the original
notebook. The part after a colon picks the architecture at CPU-friendly widths:
`--config=configs/dubai.py:asym_unet` (the default, the proposal) or
`--config=configs/dubai.py:unet` (plain U-Net, same budget).
Measured on the 2-core CPU: see experiments/dubai_proposal_vs_unet/README.md.
"""

import os

import ml_collections

from seg_jax import config_files

default = config_files.sibling(__file__, "default")

# Widths small enough that a 2-core CPU run of train.num_steps stays within about 10 minutes.
ARCHITECTURES = {
    "asym_unet": default.asym_unet_kwargs(
        widths=(16, 32, 64, 128), blocks=(1, 2, 2, 2), decoder_widths=(64, 32, 16),
        aspp_features=64, se_reduction=8),
    "unet": dict(backbone_kwargs=dict(widths=(16, 32, 64, 128))),
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
