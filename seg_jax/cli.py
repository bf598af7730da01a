"""What the commands (`seg_jax.main`, `seg_jax.sweep`, `seg_jax.predict`) share: the flags they
have in common, flag parsing whose errors are one line on stderr, and the exit with a documented
code."""

from __future__ import annotations

import sys

from absl import flags
from absl import logging
from ml_collections import config_flags

from seg_jax import errors

# The flags several commands take, defined once here so that one process may import several
# commands (a test, an experiment driver); each command marks the ones it requires.
CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py, or configs/X.py:arg): the run's config "
    "(seg_jax.main) or the one every setting starts from (seg_jax.sweep).", lock_config=True)
WORKDIR = flags.DEFINE_string(
    "workdir", None, "seg_jax.main: the run folder (checkpoints, logs, metrics); seg_jax.sweep: "
    "the sweep folder (DIR/<setting>/seed<k> per run); seg_jax.predict: the training run whose "
    "model predicts.")


def verbose(argv: list[str]) -> bool:
  """Whether the command line asks for tracebacks (--verbosity=1 or more, or -v=1...)."""
  for arg in argv[1:]:
    for prefix in ("--verbosity=", "-v="):
      if arg.startswith(prefix):
        try:
          return int(arg[len(prefix):]) >= 1
        except ValueError:
          return False
  return False


def fail(kind: str, message: str, code: int) -> None:
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
    if verbose(argv):
      raise
    fail("flags", _flag_error(e, argv), errors.EXIT_USER_ERROR)


def fail_on_run_error(e: errors.RunError) -> None:
  """Exits with the error's code and one line (re-raises for a traceback at --verbosity=1)."""
  if logging.get_verbosity() >= 1:
    raise e
  fail(e.kind, str(e) + " (--verbosity=1 shows the traceback)", e.exit_code)
