"""The command-line contract of every seg_jax command: flags, one error line, documented exit codes.

A command module defines no flag at import. It holds a `define_flags()` for its own flags and a
`main(argv)` that returns an exit code of `seg_jax.errors` (None = 0), and ends with

  if __name__ == "__main__":
    cli.run(main, define_flags=define_flags, required=["config", "workdir"])

`run` points the storage clients at a Cloud Storage emulator if STORAGE_EMULATOR_HOST names one
(`seg_jax.storage.use_emulator`), defines the shared flags it names (`--config`, `--workdir`,
defined here once) and the command's own, parses them (a bad flag or config is one line, exit code 2), quiets library logs,
calls `main` and exits with its code; a `RunError` from `main` is one line
`error (kind): message` on stderr and its exit code (`--verbosity=1` shows the traceback).

A command that works on an existing run (`run(..., config_from_workdir=True)`: training, which
extends or evaluates a run, and the model summary) starts from the run's stored config when
`--config` is not given and `--workdir` holds one: `--config=seg_jax/stored_config.py:<workdir>`
is put in front of the command line, so `--config.a.b=v` overrides apply to the stored config
as they would to a config file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
import difflib
import functools
import os
import re
import sys
from typing import NoReturn

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from seg_jax import errors
from seg_jax import storage
from seg_jax import writers

SHARED_FLAGS = ("config", "workdir", "model")
_CONFIG_HELP = (
    "Config file (configs/X.py, or configs/X.py:arg) and --config.a.b=v overrides (locked: a "
    "misspelled field fails): the run's config (seg_jax.main), the one every setting starts from "
    "(seg_jax.sweep), whose data group is shown (seg_jax.data.inspect) or whose model is "
    "summarised (seg_jax.models.summary). seg_jax.main and seg_jax.models.summary without it: "
    "the config stored in --workdir, overrides applied to it.")
_MODEL_HELP = (
    "seg_jax.models.summary: a registered model name (default: asym_unet, the proposal); "
    "seg_jax.predict: an exported artifact (seg_jax.export: FILE.onnx or FILE.stablehlo, "
    "FILE.json beside it) to predict with instead of --workdir.")
_WORKDIR_HELP = (
    "seg_jax.main: the run folder (checkpoints, logs, metrics); seg_jax.sweep: the sweep folder "
    "(DIR/<setting>/seed<k> per run); seg_jax.predict: the training run whose model predicts "
    "(or --model, an exported artifact); seg_jax.export: the training run whose model is "
    "exported; seg_jax.models.summary: the training run whose model is summarised.")


def define_shared_flags(names: Sequence[str] = SHARED_FLAGS, *,
                        config_default: str | None = None) -> None:
  """Defines the shared flags `names` (of `SHARED_FLAGS`) that are not defined yet.

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
  if "model" in names and "model" not in flags.FLAGS:
    flags.DEFINE_string("model", None, _MODEL_HELP)


def run(main: Callable[[list[str]], int | None], *,
        define_flags: Callable[[], None] | None = None,
        shared: Sequence[str] = SHARED_FLAGS, required: Sequence[str] = (),
        config_default: str | None = None, config_from_workdir: bool = False) -> NoReturn:
  """Defines the flags, parses them, runs `main` and exits with its code (None = 0).

  Args:
    main: the command; takes argv (the program name only) and returns an exit code.
    define_flags: defines the command's own flags; run once per process (wrap it in
      `functools.cache` so a test may call it as well).
    shared: which of the shared flags (`SHARED_FLAGS`) the command takes.
    required: flags that must be given.
    config_default: the config file `--config` loads when none is given.
    config_from_workdir: without `--config`, load the config stored in `--workdir` if it holds
      one (`with_stored_config`).
  """
  storage.use_emulator()  # before the flags: a stored config may be read from a bucket
  define_shared_flags(shared, config_default=config_default)
  if define_flags is not None:
    define_flags()
  flags.mark_flags_as_required(required)
  app.run(functools.partial(_call, main),
          flags_parser=functools.partial(parse_flags, config_from_workdir=config_from_workdir))


def _call(main: Callable[[list[str]], int | None], argv: list[str]) -> int | None:
  """`main(argv)` after the checks every command shares; a RunError becomes its exit code."""
  if len(argv) > 1:
    fail("flags", f"unexpected arguments {argv[1:]}: every option is a --flag=value",
         errors.EXIT_USER_ERROR)
  if "config" in flags.FLAGS:
    try:  # a config file is loaded at first use: a missing or broken one is a flag error
      if flags.FLAGS.config is not None:
        flags.FLAGS.config.to_dict()  # any attribute loads the file
    except Exception as e:  # pylint: disable=broad-except (any error of a config file)
      if verbose(argv):
        raise
      fail("flags", _flag_error(e, argv), errors.EXIT_USER_ERROR)
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
  """One-line description of a flag or config-file error (the innermost cause); an unknown
  config field comes with the fields of the config it is closest to (`did_you_mean`)."""
  while exc.args and isinstance(exc.args[0], BaseException):
    exc = exc.args[0]
  text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  if isinstance(exc, (KeyError, AttributeError)) and lines:
    field = lines[0].strip("'\"")
    given = [a for a in argv[1:] if a.startswith("--config.") and field in a]
    where = f" in {given[0]}" if given else ""
    close = did_you_mean(given[0].split("=", 1)[0][len("--config."):], _config_fields(argv)
                         ) if given else []
    # ml_collections' own hint (a close name in the same group) is kept; the closest fields
    # of the whole config follow it.
    hints = lines[1:] + ([f"Did you mean {' or '.join(f'--config.{c}' for c in close)}?"]
                         if close else [])
    hint = " ".join(hints) or "see configs/default.py for every field"
    return f"unknown config field {field!r}{where}. {hint}"
  if isinstance(exc, flags.Error):
    return " ".join(lines)
  return f"cannot load --config: {type(exc).__name__}: {' '.join(lines)}"


def _close_names(name: str, fields: Sequence[str]) -> list[str]:
  """The dotted `fields` whose last name is close to `name` (difflib's ratio >= 0.6, closest
  first) or holds it ("steps" in "num_steps")."""
  leaves: dict[str, list[str]] = {}
  for f in fields:
    leaves.setdefault(f.rpartition(".")[2], []).append(f)
  names = difflib.get_close_matches(name, list(leaves), n=max(len(leaves), 1), cutoff=0.6)
  names += [leaf for leaf in leaves if len(name) >= 3 and name in leaf]
  return [f for leaf in names for f in leaves[leaf]]


def did_you_mean(path: str, fields: Sequence[str], n: int = 3) -> list[str]:
  """At most `n` dotted config `fields` an unknown `path` may mean: for "train.steps" the fields of
  group train by their names ("train.num_steps"); for a misspelled group ("trian.num_steps")
  whole paths close to it; failing those, fields of any group by their names."""
  group, _, name = path.rpartition(".")
  in_group = [f for f in fields if f.rpartition(".")[0] == group]
  found = (_close_names(name, in_group) if in_group
           else difflib.get_close_matches(path, fields, n=n, cutoff=0.8))
  return list(dict.fromkeys(found or _close_names(name, fields)))[:n]


def _config_fields(argv: list[str]) -> list[str]:
  """The dotted field names of the config a command line loads (--config, else the config stored
  in --workdir, else the --config flag's default); [] if it cannot be loaded."""
  path = _flag_value(with_stored_config(argv), "config")
  if path is None and "config" in flags.FLAGS:
    path = flags.FLAGS["config"].default
  if not isinstance(path, str):
    return []
  # Imported here: only a misspelled field needs it.
  from seg_jax import config_files  # pylint: disable=g-import-not-at-top
  file, _, arg = path.partition(":")
  try:
    config = config_files.load_module(file).get_config(*[arg][:bool(arg)])
  except Exception:  # pylint: disable=broad-except (no suggestion rather than a second error)
    return []

  def paths(group, prefix: str) -> Iterator[str]:
    for key, value in group.items():
      if isinstance(value, ml_collections.ConfigDict):
        yield from paths(value, f"{prefix}{key}.")
      else:
        yield prefix + key

  return list(paths(config, ""))


def _flag_value(argv: list[str], name: str) -> str | None:
  """The value of `--name=v` / `--name v` (the last one given) on a command line, or None."""
  value = None
  for i, arg in enumerate(argv[1:], 1):
    if arg == "--":
      break
    match = re.match(rf"^--?{name}=(.*)$", arg, re.DOTALL)
    if match:
      value = match.group(1)
    elif arg in (f"--{name}", f"-{name}") and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def with_stored_config(argv: list[str]) -> list[str]:
  """`argv` with `--config=<seg_jax/stored_config.py>:<workdir>` in front of its flags when it
  gives no `--config` and its `--workdir` holds a stored config: the command starts from the
  config the run was trained with."""
  if any(re.match(r"^--?config(=|$)", arg) for arg in argv[1:]):
    return argv
  workdir = _flag_value(argv, "workdir")
  if not workdir:
    return argv
  # Imported here: commands that never read a run folder do without it.
  from seg_jax import stored_config  # pylint: disable=g-import-not-at-top
  from seg_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  if not workdir_lib.RunDir(workdir).has_config():
    return argv
  return [argv[0], f"--config={stored_config.__file__}:{workdir}", *argv[1:]]


def workdir_data(workdir: str) -> tuple[int, tuple[int, int], int]:
  """(number of classes, (H, W), number of bands) the training run in `workdir` learned (its
  dataset.json): what a command that describes the run's model needs besides its config."""
  from seg_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  info = workdir_lib.RunDir(workdir).data_info()
  return len(info.class_names), tuple(info.image_size), len(info.bands)


def parse_flags(argv: list[str], config_from_workdir: bool = False) -> list[str]:
  """Parses flags and the config; a bad one is reported as one line (exit code 2).

  With `config_from_workdir`, a command line without `--config` starts from the config stored
  in its `--workdir` (`with_stored_config`).
  """
  try:
    return flags.FLAGS(with_stored_config(argv) if config_from_workdir else argv)
  except errors.RunError as e:  # a stored config that cannot be read
    if verbose(argv):
      raise
    fail(e.kind, str(e), e.exit_code)
  except Exception as e:  # pylint: disable=broad-except (any error of a config file too)
    if verbose(argv):
      raise
    fail("flags", _flag_error(e, argv), errors.EXIT_USER_ERROR)


def fail_on_run_error(e: errors.RunError) -> NoReturn:
  """Exits with the error's code and one line (re-raises for a traceback at --verbosity=1)."""
  if logging.get_verbosity() >= 1:
    raise e
  if isinstance(e, errors.WriteError):
    # Saves still running in the background may wait on storage that does not answer (TensorStore
    # retries an unreachable bucket for minutes), and the interpreter would wait for them at
    # exit. A rerun resumes from the last complete checkpoint, so they are not waited for.
    print_error(e.kind, str(e) + " (--verbosity=1 shows the traceback)")
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(e.exit_code)  # pylint: disable=protected-access
  fail(e.kind, str(e) + " (--verbosity=1 shows the traceback)", e.exit_code)
