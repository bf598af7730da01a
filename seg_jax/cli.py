"""The command-line contract of every seg_jax command: flags, one error line, documented exit codes.

A command module defines no flag at import. It holds a `define_flags()` for its own flags and a
`main(argv)` that returns an exit code of `seg_jax.errors` (None = 0), and ends with

  if __name__ == "__main__":
    cli.run(main, define_flags=define_flags, required=["config", "workdir"])

`run` defines the shared flags it names (`--config`, `--workdir`, defined here once) and the
command's own, parses them (a bad flag or config is one line, exit code 2), quiets library logs,
calls `main` and exits with its code; a `RunError` from `main` is one line
`error (kind): message` on stderr and its exit code (`--verbosity=1` shows the traceback).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
import os
import sys
from typing import NoReturn

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from seg_jax import errors
from seg_jax import writers

SHARED_FLAGS = ("config", "workdir")
_CONFIG_HELP = (
    "Config file (configs/X.py, or configs/X.py:arg) and --config.a.b=v overrides (locked: a "
    "misspelled field fails): the run's config (seg_jax.main), the one every setting starts from "
    "(seg_jax.sweep), whose data group is shown (seg_jax.data.inspect) or whose model is "
    "summarised (seg_jax.models.summary).")
_WORKDIR_HELP = (
    "seg_jax.main: the run folder (checkpoints, logs, metrics); seg_jax.sweep: the sweep folder "
    "(DIR/<setting>/seed<k> per run); seg_jax.predict: the training run whose model predicts "
    "(seg_jax.models.summary takes it but does not read it yet).")


def define_shared_flags(names: Sequence[str] = SHARED_FLAGS, *,
                        config_default: str | None = None) -> None:
  """Defines the shared flags `names` (of "config", "workdir") that are not defined yet.

  A process may run the definitions of several commands (a test, an experiment driver), so a
  flag defined already is kept as it is, `config_default` included.
  """
  unknown = set(names) - set(SHARED_FLAGS)
  if unknown:
    raise ValueError(f"no shared flag {sorted(unknown)}; the shared flags are {SHARED_FLAGS}")
  if "config" in names and "config" not in flags.FLAGS:
    config_flags.DEFINE_config_file("config", config_default, _CONFIG_HELP, lock_config=True)
  if "workdir" in names and "workdir" not in flags.FLAGS:
    flags.DEFINE_string("workdir", None, _WORKDIR_HELP)


def run(main: Callable[[list[str]], int | None], *,
        define_flags: Callable[[], None] | None = None,
        shared: Sequence[str] = SHARED_FLAGS, required: Sequence[str] = (),
        config_default: str | None = None) -> NoReturn:
  """Defines the flags, parses them, runs `main` and exits with its code (None = 0).

  Args:
    main: the command; takes argv (the program name only) and returns an exit code.
    define_flags: defines the command's own flags; run once per process (wrap it in
      `functools.cache` so a test may call it as well).
    shared: which of the shared flags (`SHARED_FLAGS`) the command takes.
    required: flags that must be given.
    config_default: the config file `--config` loads when none is given.
  """
  define_shared_flags(shared, config_default=config_default)
  if define_flags is not None:
    define_flags()
  flags.mark_flags_as_required(required)
  app.run(functools.partial(_call, main), flags_parser=parse_flags)


def _call(main: Callable[[list[str]], int | None], argv: list[str]) -> int | None:
  """`main(argv)` after the checks every command shares; a RunError becomes its exit code."""
  if len(argv) > 1:
    fail("flags", f"unexpected arguments {argv[1:]}: every option is a --flag=value",
         errors.EXIT_USER_ERROR)
  writers.quiet_library_logs()
  # Keras 3 (weight import from Keras files) picks its backend once, at import: JAX, never
  # TensorFlow, which seg_jax does not install.
  os.environ.setdefault("KERAS_BACKEND", "jax")
  try:
    return main(argv)
  except errors.RunError as e:
    fail_on_run_error(e)


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


def print_error(kind: str, message: str) -> None:
  """Prints `error (kind): message` as one line on stderr (the one error line of every command)."""
  message = " ".join(line.strip() for line in message.splitlines() if line.strip())
  sys.stderr.write(f"error ({kind}): {message}\n")


def fail(kind: str, message: str, code: int) -> NoReturn:
  """Prints `error (kind): message` as one line on stderr and exits with `code`."""
  print_error(kind, message)
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


def fail_on_run_error(e: errors.RunError) -> NoReturn:
  """Exits with the error's code and one line (re-raises for a traceback at --verbosity=1)."""
  if logging.get_verbosity() >= 1:
    raise e
  fail(e.kind, str(e) + " (--verbosity=1 shows the traceback)", e.exit_code)
