r"""python -m seg_jax.main --config=configs/gpu_asym_unet.py --workdir=/tmp/seg_gpu_asym_unet

configs/asym_unet.py sized for one 80 GB GPU (H100 class): bfloat16 compute, batch 64 at
144x256, 20k steps. Not run yet: no measured result.
"""

from seg_jax import config_files

asym_unet = config_files.sibling(__file__, "asym_unet")


def get_config():
  """asym_unet on synthetic_aerial 144x256 for one large GPU."""
  config = asym_unet.get_config()
  config.model.dtype = "bfloat16"
  config.data.num_train = 8192
  config.data.keep_on_device = True
  config.optim.learning_rate = 2e-3
  config.train.global_batch_size = 64
  config.eval.global_batch_size = 64
  return config
