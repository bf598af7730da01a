"""Errors a user can act on, and the exit codes of `python -m seg_jax.main`.

A `RunError` stops a run for a reason its message states together with the fix; the command line
prints it as one line (the traceback only with `--verbosity=1`) and exits with its `exit_code`.
"""

EXIT_USER_ERROR = 2  # Bad config, data or workdir: nothing was trained; fix it and rerun.
EXIT_NON_FINITE = 3  # The loss became NaN/Inf; the checkpoints before it are kept.
EXIT_PREEMPTED = 75  # SIGTERM: a checkpoint was saved; rerun the same command to resume.


class RunError(Exception):
  """A run that cannot start or go on; the message says what, where and how to fix it."""

  exit_code = EXIT_USER_ERROR
  kind = "run"


class ConfigError(RunError, ValueError):
  """A config field that cannot work (unknown name, impossible value, mismatch with the data)."""

  kind = "config"


class DataError(RunError, ValueError):
  """A dataset that cannot be read or that lacks what the run needs (e.g. an empty split)."""

  kind = "data"


class WorkdirError(RunError):
  """A workdir that holds another run, or nothing usable, for what was asked of it."""

  kind = "workdir"


class NonFiniteLossError(RunError, RuntimeError):
  """The training loss or gradient norm became NaN or Inf."""

  exit_code = EXIT_NON_FINITE
  kind = "training"
