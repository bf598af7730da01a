r"""Trains or evaluates a segmentation model from a config file.

  python -m seg_jax.main --config=configs/default.py --workdir=/tmp/seg_default \
      [--config.train.num_steps=100 ...] [--distributed]

`--config.train.mode=eval` evaluates the best checkpoint in the workdir instead of training.
On a workdir that holds a run, `--config` may be left out: the run's stored config (its
config.json) is the config, the `--config.a.b=v` overrides applied to it, e.g.

  python -m seg_jax.main --workdir=/tmp/seg_default --config.train.mode=eval
  python -m seg_jax.main --workdir=/tmp/seg_default --config.train.num_steps=1600   # extend

Exit codes (`seg_jax.errors`): 0 finished; 2 a bad flag, config, dataset or workdir (one line on
stderr says what, where and how to fix it; `--verbosity=1` adds the traceback); 3 the loss became
NaN/Inf; 74 a file could not be written (disk full); 75 preempted (SIGTERM or Ctrl-C): a
checkpoint was saved, rerun the same command to resume; 130 a second Ctrl-C (stopped unsaved).
"""

import os
import signal

if __name__ == "__main__":
  # SIGTERM and Ctrl-C while the imports below load (seconds) stop the command as preempted
  # (75) rather than with 143 or a traceback; `preemption.exit_on_signal` takes over in main.
  for _sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(_sig, lambda *_: os._exit(75))  # pylint: disable=protected-access

import functools  # pylint: disable=g-import-not-at-top,wrong-import-position

from absl import flags
from absl import logging
import jax

from seg_jax import cli
from seg_jax import compilation
from seg_jax import errors
from seg_jax import preemption
from seg_jax import train

FLAGS = flags.FLAGS


@functools.cache
def define_flags() -> None:
  """Defines this command's flags besides --config and --workdir (once per process)."""
  flags.DEFINE_bool(
      "distributed", False,
      "Call jax.distributed.initialize() first (multi-host TPU VM pods / GPU clusters).")
  flags.DEFINE_string(
      "coordinator_address", None,
      "With --distributed: host:port of process 0 (default: detected from the cluster).")
  flags.DEFINE_integer(
      "num_processes", None, "With --distributed: number of processes (default: detected).")
  flags.DEFINE_integer(
      "process_id", None, "With --distributed: this process's index (default: detected).")


def main(argv) -> int:
  """Runs `train.run` with the parsed config and workdir; returns the exit code."""
  del argv
  if FLAGS.distributed:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  preemption.exit_on_signal()
  logging.info("process %d/%d, %d local / %d global devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  compilation.use_persistent_cache(FLAGS.config.train.compilation_cache_dir)
  result = train.run(FLAGS.config, FLAGS.workdir)
  return errors.EXIT_PREEMPTED if result.preempted else errors.EXIT_OK


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, required=["config", "workdir"],
          config_from_workdir=True)
