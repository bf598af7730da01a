"""Errors a user can act on, and the exit codes of every seg_jax command.

A `RunError` stops a command for a reason its message states together with the fix; the command
line prints it as one line (the traceback only with `--verbosity=1`) and exits with its
`exit_code`. The codes below are the one table every command (`seg_jax.cli.run`) exits with; the
README's "Exit codes" section repeats it.
"""

EXIT_OK = 0  # Done: everything asked for was done.
EXIT_SOME_FAILED = 1  # Finished, but some inputs failed (runs, images): each is named.
EXIT_USER_ERROR = 2  # Bad flag, config, data, workdir or input: nothing ran; fix it and rerun.
EXIT_NON_FINITE = 3  # The loss became NaN/Inf; the checkpoints before it are kept.
EXIT_WRITE_FAILED = 74  # A file could not be written (disk full, I/O error): the last complete
                        # checkpoint is kept; free space and rerun the same command to resume.
EXIT_PREEMPTED = 75  # SIGTERM or Ctrl-C: what training had done was saved; rerun to resume.
EXIT_INTERRUPTED = 130  # A second Ctrl-C: stopped at once, unsaved steps lost (128 + SIGINT).


class RunError(Exception):
  """A run that cannot start or go on; the message says what, where and how to fix it."""

  exit_code = EXIT_USER_ERROR
  kind = "run"


class FlagError(RunError, ValueError):
  """A command-line flag whose value cannot work (beyond what the flag parser checks)."""

  kind = "flags"


class ConfigError(RunError, ValueError):
  """A config field that cannot work (unknown name, impossible value, mismatch with the data)."""

  kind = "config"


class DataError(RunError, ValueError):
  """A dataset that cannot be read or that lacks what the run needs (e.g. an empty split)."""

  kind = "data"


class WorkdirError(RunError):
  """A workdir that holds another run, or nothing usable, for what was asked of it."""

  kind = "workdir"


class ArtifactError(RunError, ValueError):
  """A deployment artifact (`seg_jax.export`) that cannot be written, read or used as asked."""

  kind = "artifact"


class WriteError(RunError, OSError):
  """A file of the run that could not be written (no space left, an I/O error)."""

  exit_code = EXIT_WRITE_FAILED
  kind = "write"


class NonFiniteLossError(RunError, RuntimeError):
  """The training loss or gradient norm became NaN or Inf."""

  exit_code = EXIT_NON_FINITE
  kind = "training"
