r"""python -m seg_jax.main --config=configs/asym_unet.py --workdir=/tmp/seg_asym_unet

Full-width asymmetric U-Net (deep SE encoder, light decoder, ASPP bottleneck) on the synthetic
aerial scenes at 144x256, batch 16, 20k steps: an accelerator-sized run (not run on the 2-core
CPU). No measured result yet.
"""

import ml_collections

from seg_jax import config_files

default = config_files.sibling(__file__, "default")


def get_config():
  """asym_unet at its default widths on synthetic_aerial 144x256."""
  config = default.get_config()
  config.model.kwargs = ml_collections.ConfigDict(default.asym_unet_kwargs(
      widths=(32, 64, 128, 256, 512), blocks=(2, 2, 3, 3, 3), decoder_widths=(128, 64, 32, 32),
      aspp_features=256, se_reduction=16))
  config.data.image_size = (144, 256)
  config.data.num_train = 2048
  config.data.num_val = 256
  config.data.num_test = 256
  config.data.augment.scale_max = 1.5
  config.data.augment.rotate_degrees = 10.0
  config.data.augment.noise_std = 3.0
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 500
  config.train.num_steps = 20000
  config.train.global_batch_size = 16
  config.train.log_every = 100
  config.train.eval_every = 1000
  config.train.checkpoint_every = 1000
  config.eval.global_batch_size = 16
  return config
