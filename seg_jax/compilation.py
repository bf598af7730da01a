"""XLA compilation: the persistent compilation cache of a run, and a count of what was compiled.

A run's jitted functions (initialisation, train step, eval step) are compiled by XLA when first
called. With a persistent cache folder the compiled programs are written to disk, and a later
process that compiles the same program (same function, shapes, shardings, flags, JAX version)
loads it instead: a relaunch of a config skips XLA. The folder is per user
(`train.compilation_cache_dir`, in configs/default.py); it is safe to delete at any time.
"""

from __future__ import annotations

import collections
import os

import jax
from jax.experimental.compilation_cache import compilation_cache

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
CACHE_HIT = "/jax/compilation_cache/cache_hits"


def use_persistent_cache(path: str) -> None:
  """Makes this process read and write compiled programs in folder `path` ("" = no cache).

  Every compile is cached, however short: a relaunch then compiles nothing at all. The setting
  is process-wide; a different folder than the current one takes effect from the next compile.
  """
  path = os.path.abspath(os.path.expanduser(path)) if path else None
  if jax.config.jax_compilation_cache_dir == path:
    return
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  compilation_cache.reset_cache()  # JAX opens its cache folder once; make it reopen


def cache_folder() -> str | None:
  """The persistent cache folder this process uses (None: no cache)."""
  return jax.config.jax_compilation_cache_dir


class CompileLog:
  """Counts XLA compiles and persistent-cache hits per function while active (a context manager).

  `compiles[name]` counts the programs built for jitted function `name` (as JAX names it, e.g.
  "jit(train_step)"), whether XLA compiled
  them or they were loaded from the persistent cache; `cache_hits[name]` counts the loaded
  ones, and `seconds[name]` the time spent on both.
  """

  def __init__(self):
    self.compiles: collections.Counter[str] = collections.Counter()
    self.cache_hits: collections.Counter[str] = collections.Counter()
    self.seconds: collections.Counter[str] = collections.Counter()
    self._compiling: str | None = None

  def _on_start(self, event: str, _: float, **kwargs) -> None:
    if event == BACKEND_COMPILE:
      self._compiling = kwargs.get("fun_name")

  def _on_event(self, event: str, **_) -> None:
    if event == CACHE_HIT and self._compiling is not None:
      self.cache_hits[self._compiling] += 1

  def _on_duration(self, event: str, seconds: float, **kwargs) -> None:
    if event == BACKEND_COMPILE:
      name = kwargs.get("fun_name")
      self.compiles[name] += 1
      self.seconds[name] += seconds
      self._compiling = None

  def __enter__(self) -> CompileLog:
    jax.monitoring.register_scalar_listener(self._on_start)
    jax.monitoring.register_event_listener(self._on_event)
    jax.monitoring.register_event_duration_secs_listener(self._on_duration)
    return self

  def __exit__(self, *exc) -> None:
    jax.monitoring.unregister_scalar_listener(self._on_start)
    jax.monitoring.unregister_event_listener(self._on_event)
    jax.monitoring.unregister_event_duration_listener(self._on_duration)
