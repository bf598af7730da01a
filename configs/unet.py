r"""python -m seg_jax.main --config=configs/unet.py --workdir=/tmp/seg_unet

Plain U-Net (Ronneberger et al. 2015: base width 64, depth 4, 2x2 up-convolutions) on the
synthetic aerial scenes at 144x256 with the same schedule as configs/asym_unet.py, for a
side-by-side comparison. Accelerator-sized; no measured result yet.
"""

import ml_collections

from seg_jax import config_files

asym_unet = config_files.sibling(__file__, "asym_unet")


def get_config():
  """unet (paper widths) on synthetic_aerial 144x256, schedule of configs/asym_unet.py."""
  config = asym_unet.get_config()
  config.model.name = "unet"
  config.model.kwargs = ml_collections.ConfigDict(dict(
      backbone_kwargs=dict(widths=(64, 128, 256, 512, 1024))))
  return config
