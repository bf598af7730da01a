r"""python -m seg_jax.main --config=configs/deeplabv3_resnet50.py --workdir=/tmp/seg_deeplabv3

DeepLabV3 with a dilated ResNet-50 backbone (output stride 16, ASPP rates 6/12/18), trained as
in the paper: SGD momentum 0.9, poly schedule (power 0.9), weight decay 1e-4, on the synthetic
aerial scenes at 144x256. Accelerator-sized; no measured result yet.
"""

import ml_collections

from seg_jax import config_files

asym_unet = config_files.sibling(__file__, "asym_unet")


def get_config():
  """deeplabv3 + ResNet-50 (OS 16) on synthetic_aerial 144x256 with SGD + poly."""
  config = asym_unet.get_config()
  config.model.name = "deeplabv3"
  # Output stride 16 with the paper's ASPP rates; at output stride 8 the rates double.
  config.model.kwargs = ml_collections.ConfigDict(dict(
      backbone="resnet50", backbone_kwargs=dict(output_stride=16),
      neck_kwargs=dict(features=256, rates=(6, 12, 18))))
  config.optim.name = "sgd"
  config.optim.learning_rate = 0.01
  config.optim.schedule = "poly"
  config.optim.end_lr_factor = 0.0
  config.optim.warmup_steps = 0
  config.optim.grad_clip_norm = 0.0
  return config
