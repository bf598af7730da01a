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
from ml_collections import config_flags

from seg_jax import errors
from seg_jax import train
from seg_jax import writers

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, metrics).")
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
flags.mark_flags_as_required(["config", "workdir"])


def _verbose(argv: list[str]) -> bool:
  """Whether the command line asks for tracebacks (--verbosity=1 or more, or -v=1...)."""
  for arg in argv[1:]:
    for prefix in ("--verbosity=", "-v="):
      if arg.startswith(prefix):
        try:
          return int(arg[len(prefix):]) >= 1
        except ValueError:
          return False
  return False


def _fail(kind: str, message: str, code: int) -> None:
  """Prints `error (kind): message` as one line on stderr and exits with `code`."""
  message = " ".join(line.strip() for line in message.splitlines() if line.strip())
  sys.stderr.write(f"error ({kind}): {message}\n")
  sys.exit(code)


def _flag_error(exc: BaseException, argv: list[str]) -> str:
  """One-line description of a flag or config-file error (the innermost cause)."""
  while exc.args and isinstance(exc.args[0], BaseException):
    exc = exc.args[0]
  text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  if isinstance(exc, (KeyError, AttributeError)) and lines:
    field = lines[0].strip("'\"")
    given = [a for a in argv[1:] if a.startswith("--config.") and field in a]
    where = f" in {given[0]}" if given else ""
    hint = " ".join(lines[1:]) or "see configs/default.py for every field"
    return f"unknown config field {field!r}{where}. {hint}"
  if isinstance(exc, flags.Error):
    return " ".join(lines)
  return f"cannot load --config: {type(exc).__name__}: {' '.join(lines)}"


def parse_flags(argv: list[str]) -> list[str]:
  """Parses flags and the config; a bad one is reported as one line (exit code 2)."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except (any error of a config file too)
    if _verbose(argv):
      raise
    _fail("flags", _flag_error(e, argv), errors.EXIT_USER_ERROR)


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
    if logging.get_verbosity() >= 1:
      raise
    _fail(e.kind, str(e) + " (--verbosity=1 shows the traceback)", e.exit_code)
  if result.get("preempted"):
    sys.exit(errors.EXIT_PREEMPTED)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
