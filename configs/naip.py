r"""python -m seg_jax.main --config=configs/naip.py --workdir=/tmp/seg_naip

NAIP RGB+NIR land cover (215 labelled 256x256 GeoTIFF tiles, 6 classes; ../shared/data/naip_rgbn,
its README has the facts and the published result: mIoU 0.78 on test, UNet++/ResNet-34, 100
epochs on a GPU). `data.root` defaults to shared/data/naip_rgbn/dataset_split beside the
repository folder, split by its own train/, val/, test/ folders (129 / 43 / 43 tiles). All four
bands by default (band 4, NIR, is tagged alpha in the files and read as data);
`--config=configs/naip.py:rgb` reads bands 1, 2, 3 only. Each tile is one 256x256 example;
flips, quarter turns, a 1-1.25 zoom, +-10 degree rotations and colour jitter of the RGB bands.
Full-resolution scoring of a checkpoint reads each tile window by window:
`--config.train.mode=eval --config.eval.resolution=full --config.eval.split=test`.

Measured on the shared 2-core CPU with nothing else running, 2026-12-06, seed 0: the 800 steps
below (about 50 epochs of batch 8) took 21m04s wall (5.0-5.5 img/s) and reached val mIoU 0.503,
0.734, 0.746, 0.757 at steps 200, 400, 600, 800; its best
checkpoint (step 800) scored at full resolution on test (the command above with
`--config.train.mode=eval ...`, 12 s): **mIoU 0.737**, pixel accuracy 0.887; IoU background
0.816, building 0.495, road 0.620, bare land 0.820, forest 0.788, water 0.879. The published
result (UNet++/ResNet-34, 26.1M parameters, 100 epochs of batch 16 on a GPU) is mIoU 0.78,
pixel accuracy 0.90; this model has 0.68M parameters. Seeds 1 and 2 (`--config.seed=N`, 20m37s
and 20m12s): test mIoU 0.766 and 0.756; three seeds, test mIoU 0.753 +- 0.015
(experiments/naip_rgbn/README.md). `:rgb`, three seeds in the sweep of that README (load
2.3-4.6 from other work): test mIoU 0.590, 0.748, 0.747; seed 0 never predicts water. The
U-Net, UNet++ and DeepLabV3+ of the same size in that sweep, 800 steps, 3 seeds: test mIoU
0.765 +- 0.009 (30 minutes a run), 0.755 +- 0.003 (15), 0.720 +- 0.021 (6). This config with
`--config.train.num_steps=1300` (28 minutes a run with YNNPACK fusions off, the default), 3
seeds: test mIoU 0.765 +- 0.008; 400 steps (8 minutes): 0.666 +- 0.107; 2600 steps (53
minutes, seed 0): 0.754 (experiments/naip_rgbn/budget/README.md).
"""

import os

import ml_collections

from seg_jax import config_files

default = config_files.sibling(__file__, "default")

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = {
    "rgbn": (),  # every band of the files: red, green, blue, near-infrared
    "rgb": (1, 2, 3),
}


def get_config(variant: str = "rgbn"):
  """The NAIP tiles with the bands of `variant` ("rgbn" or "rgb")."""
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
  config = default.get_config()
  config.model.name = "asym_unet"
  config.model.kwargs = ml_collections.ConfigDict(default.asym_unet_kwargs(
      widths=(16, 32, 64, 128), blocks=(1, 2, 2, 2), decoder_widths=(64, 32, 16),
      aspp_features=64, se_reduction=8))
  d = config.data
  d.name = "raster"
  d.root = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "naip_rgbn",
                                         "dataset_split"))
  d.palette = os.path.join(HERE, "naip_classes.json")
  d.bands = VARIANTS[variant]
  d.rgb_bands = (1, 2, 3)
  d.prep = "patches"
  d.patch_size = 256
  d.augment.scale_max = 1.25
  d.augment.rotate_degrees = 10.0
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 30
  config.train.num_steps = 800
  config.train.log_every = 20
  config.train.eval_every = 200
  config.train.checkpoint_every = 200
  config.eval.predict.mode = "slide"  # tiles are scored at full resolution window by window
  return config
