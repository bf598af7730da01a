r"""python -m seg_jax.main --config=configs/deeplabv3plus_xception.py --workdir=/tmp/seg_dlv3p

DeepLabV3+ as in DeepLab's reference code (Xception-65 at output stride 16, ASPP rates 6/12/18,
separable ASPP and decoder, stride-4 tap in entry block 2) on
the synthetic aerial scenes at 144x256, SGD + poly as in the paper. Accelerator-sized; no
measured result yet.
"""

import ml_collections

from seg_jax import config_files

deeplabv3_resnet50 = config_files.sibling(__file__, "deeplabv3_resnet50")


def get_config():
  """deeplabv3plus + Xception (OS 16) on synthetic_aerial 144x256 with SGD + poly."""
  config = deeplabv3_resnet50.get_config()
  config.model.name = "deeplabv3plus_xception"
  config.model.kwargs = ml_collections.ConfigDict(dict(
      backbone_kwargs=dict(output_stride=16), neck_kwargs=dict(features=256, rates=(6, 12, 18)),
      decoder_kwargs=dict(low_level_features=48, features=256)))
  return config
