r"""Trains or evaluates a segmentation model from a config file.

  python -m seg_jax.main --config=configs/default.py --workdir=/tmp/seg_default \
      [--config.train.num_steps=100 ...] [--distributed]

`--config.train.mode=eval` evaluates the best checkpoint in the workdir instead of training.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from seg_jax import train
from seg_jax import writers

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, metrics).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Call jax.distributed.initialize() first (multi-host TPU VM pods / GPU clusters).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  """Runs `train.run` with the parsed config and workdir."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  writers.quiet_library_logs()
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  logging.info("process %d/%d, %d local / %d global devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  train.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
