r"""python -m seg_jax.main --config=configs/tpu_asym_unet.py --workdir=gs://my-seg-bucket/runs/tpu_asym_unet --distributed

configs/asym_unet.py sized for a TPU VM pod slice (e.g. v4-32, 16 chips): run the same command
on every host (`gcloud compute tpus tpu-vm ssh NAME --worker=all --command=...`, the README's
recipe "A TPU VM pod slice with its runs in a bucket"); `--distributed` calls
jax.distributed.initialize(). bfloat16 compute, global batch 256 (a multiple of the chip
count); the workdir is a Cloud Storage bucket every host reaches: process 0 writes the run
files, every host its checkpoint shards. Not run yet: no measured result.
"""

from seg_jax import config_files

asym_unet = config_files.sibling(__file__, "asym_unet")


def get_config():
  """asym_unet on synthetic_aerial 144x256 for a multi-host TPU pod slice."""
  config = asym_unet.get_config()
  config.model.dtype = "bfloat16"
  config.data.num_train = 32768
  config.data.num_val = 1024
  config.optim.learning_rate = 4e-3
  config.optim.warmup_steps = 1000
  config.train.global_batch_size = 256
  config.eval.global_batch_size = 256
  return config
