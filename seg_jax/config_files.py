"""Config files (configs/*.py) loaded by path, so that they load from any working directory.

A config that starts from another names it by file, `config_files.sibling(__file__, "default")`,
rather than `from configs import default`: the import works only where the repository root is
on `sys.path`, the file path wherever `--config=/abs/path/configs/X.py` is run from.
"""

from __future__ import annotations

import importlib.util
import os
import types


def load_module(path: str) -> types.ModuleType:
  """Executes the config file at `path` and returns it as a module."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(path):
    raise ValueError(f"config file {path} does not exist.")
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def sibling(config_file: str, name: str) -> types.ModuleType:
  """Config `name` (e.g. "default" for default.py) from the folder of `config_file` (`__file__`)."""
  return load_module(os.path.join(os.path.dirname(os.path.abspath(config_file)), name + ".py"))
