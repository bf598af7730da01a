r"""python -m seg_jax.main --config=configs/fcn8s.py --workdir=/tmp/seg_fcn8s

FCN-8s (Long et al. 2015) on a VGG-16 backbone with fc6/fc7 as 4096-channel convolutions, on the
synthetic aerial scenes at 144x256; SGD momentum 0.9 with a constant learning rate as in the
paper. Accelerator-sized; no measured result yet.
"""

import ml_collections

from seg_jax import config_files

asym_unet = config_files.sibling(__file__, "asym_unet")


def get_config():
  """fcn8s + VGG-16 on synthetic_aerial 144x256 with SGD."""
  config = asym_unet.get_config()
  config.model.name = "fcn8s"
  config.model.kwargs = ml_collections.ConfigDict(dict(
      neck_kwargs=dict(features=4096, dropout_rate=0.5)))
  config.optim.name = "sgd"
  config.optim.learning_rate = 1e-3
  config.optim.schedule = "constant"
  config.optim.weight_decay = 5e-4
  config.optim.warmup_steps = 0
  return config
