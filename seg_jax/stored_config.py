"""A training run's stored config as a config file: `--config=seg_jax/stored_config.py:DIR`.

`get_config(DIR)` is the config that run folder DIR trains with (its config.json), so
ml_collections applies `--config.a.b=v` overrides to it exactly as to a config file. Commands that
take an existing workdir (`seg_jax.cli.run(..., config_from_workdir=True)`) load it when `--config`
is not given.
"""

from __future__ import annotations

import ml_collections

from seg_jax import workdir as workdir_lib


def get_config(workdir: str) -> ml_collections.ConfigDict:
  """The stored config of run folder `workdir` (WorkdirError if it holds none)."""
  return workdir_lib.RunDir(workdir).load_config()
