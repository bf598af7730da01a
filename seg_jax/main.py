r"""Trains or evaluates a segmentation model from a config file.

  python -m seg_jax.main --config=configs/default.py --workdir=/tmp/seg_default \
      [--config.train.num_steps=100 ...] [--distributed]

`--config.train.mode=eval` evaluates the best checkpoint in the workdir instead of training.

Exit codes: 0 finished; 2 a bad flag, config, dataset or workdir (one line on stderr says what,
where and how to fix it; `--verbosity=1` adds the traceback); 3 the loss became NaN/Inf;
75 preempted (SIGTERM): a checkpoint was saved, rerun the same command to resume.
"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax

from seg_jax import cli
from seg_jax import errors
from seg_jax import train
from seg_jax import writers

_CONFIG = cli.CONFIG
_WORKDIR = cli.WORKDIR
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Call jax.distributed.initialize() first (multi-host TPU VM pods / GPU clusters).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "With --distributed: host:port of process 0 (default: detected from the cluster).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "With --distributed: number of processes (default: detected).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "With --distributed: this process's index (default: detected).")


def main(argv):
  """Runs `train.run` with the parsed config and workdir; exits with a documented code."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  writers.quiet_library_logs()
  if _DISTRIBUTED.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  logging.info("process %d/%d, %d local / %d global devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  try:
    result = train.run(_CONFIG.value, _WORKDIR.value)
  except errors.RunError as e:
    cli.fail_on_run_error(e)
  if result.get("preempted"):
    sys.exit(errors.EXIT_PREEMPTED)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, flags_parser=cli.parse_flags)
