r"""Runs a sweep: named settings of config overrides x seeds, each run in its own folder, then a
results table with the mean and std over seeds.

  python -m seg_jax.sweep --config=configs/X.py --sweep=experiments/NAME/sweep.py --workdir=DIR \
      [--shard_index=0 --shard_count=1] [--replicas=0] [--config.a.b=v ...]
  python -m seg_jax.sweep --sweep=experiments/NAME/sweep.py --workdir=DIR --summarize
  python -m seg_jax.sweep --config=configs/X.py --sweep=... --workdir=DIR --dry_run

A sweep file defines `get_sweep()` returning

  {"settings": {name: {dotted_key: value, ...}, ...}, "seeds": [0, 1, 2]}

and optionally "seeds_of": {name: [0], ...}, the seeds of the settings it names instead of
"seeds" (e.g. one seed for the costliest point of a budget curve).

Dotted keys are the names of `--config.a.b=v`; values are Python values of the field's type (a
list or tuple for a tuple, a dict replaces a group such as model.kwargs whole). Run (setting,
seed k) trains the `--config` config with the setting's overrides and `seed=k` in
DIR/<setting>/seed<k>, then evaluates its best-val checkpoint on the test split there
(eval_test.json; `train.mode=eval`), so the test split never picks a checkpoint. Each group of
runs is tested as soon as it is trained, so a sweep stopped part way has the test scores of
every run it finished (`--summarize` tables them).

Before anything trains, every setting is checked: a key the config lacks or a value of the wrong
type stops the sweep with one line naming the setting and the key; then each setting's config is
built into a trainer up to compilation (a value the model or data cannot take is named with its
setting), and every existing run folder must hold the run's own config. DIR/<setting>/model.json
records the model's parameters and forward FLOPs. --dry_run stops there: it lists the runs and
what each needs, and writes the results (model sizes, finished runs) without training.

Runs are listed setting by setting (file order), seeds in order; shard i of n
(--shard_index/--shard_count) takes the i-th of n contiguous blocks of that list, so processes or
hosts split a sweep with no coordinator. A finished run (final_metrics.json at train.num_steps and
eval_test.json of its best checkpoint) is skipped and nothing of it is rewritten; an interrupted
one resumes from its last checkpoint. Runs of one setting with consecutive seeds that start from
the same step are trained as replicas in one program (`train.num_replicas`), at most --replicas
at once; a group that stops with an error is retried one run at a time, so one diverging seed
does not hold back the others.

At the end (or with --summarize alone) seg_jax.results writes DIR/results.csv, DIR/results.md and
DIR/curves.png from the finished run folders; --readme=PATH also writes the tables into PATH's
generated "results" section and curves.png beside it.

Exit codes (`seg_jax.errors`, as every seg_jax command): 0 every run of the shard finished; 1 some
runs failed (each named in the log, the others finished); 2 a bad flag, sweep file, config or
workdir (one line on stderr, nothing trained); 75 preempted (SIGTERM): rerun the same command to
resume.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from absl import flags
from absl import logging
import jax
import ml_collections

from seg_jax import cli
from seg_jax import compilation
from seg_jax import config_files
from seg_jax import data as data_lib
from seg_jax import errors
from seg_jax import models
from seg_jax import preemption
from seg_jax import results
from seg_jax import evaluate
from seg_jax import state as state_lib
from seg_jax import steps
from seg_jax import storage
from seg_jax import train
from seg_jax import workdir as workdir_lib
from seg_jax import writers
from seg_jax.models import summary

FLAGS = flags.FLAGS


@functools.cache
def define_flags() -> None:
  """Defines this command's flags besides --config and --workdir (once per process)."""
  flags.DEFINE_string("sweep", None, "Sweep file defining get_sweep().")
  flags.DEFINE_integer("shard_index", 0, "This process's shard, 0 <= i < count.")
  flags.DEFINE_integer("shard_count", 1, "Number of shards the runs are split into.")
  flags.DEFINE_integer(
      "replicas", 0, "Most seeds of a setting trained together in one program (1 = one run per "
      "program); 0 = automatic: 1 on a CPU (vmapped replicas run there several times slower per "
      "image, unrolled ones compile S copies of the step: benchmarks/README.md), all seeds of a "
      "setting on an accelerator.")
  flags.DEFINE_bool("summarize", False,
                    "Only write the results of the finished runs; train nothing.")
  flags.DEFINE_bool(
      "dry_run", False, "Check every setting, write model.json and the results, list the runs "
      "of this shard and what each needs; train and test nothing.")
  flags.DEFINE_string("readme", "", "Also write the results into this Markdown file.")


# Set by the runner for each run, never by a setting.
RUNNER_FIELDS = ("seed", "train.num_replicas", "train.mode")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A sweep file's settings (name -> {dotted key: value}, in file order), seeds, and the seeds
  of the settings that have their own (`seeds_of`)."""

  settings: dict[str, dict[str, Any]]
  seeds: tuple[int, ...]
  seeds_of: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)

  def seeds_for(self, setting: str) -> tuple[int, ...]:
    return self.seeds_of.get(setting, self.seeds)

  def seeds_by_setting(self) -> dict[str, tuple[int, ...]]:
    """{setting: its seeds}, in file order (what `results.summarize` tables)."""
    return {setting: self.seeds_for(setting) for setting in self.settings}


@dataclasses.dataclass(frozen=True)
class Run:
  """One (setting, seed) of a sweep, its config and folder."""

  setting: str
  seed: int
  config: ml_collections.ConfigDict
  workdir: str


def load_sweep(path: str) -> Sweep:
  """Reads and checks a sweep file; ConfigError (naming the file and what is wrong) if bad."""
  where = f"sweep file {path}"
  try:
    module = config_files.load_module(path)
  except Exception as e:  # pylint: disable=broad-except (any error of the file itself)
    raise errors.ConfigError(f"cannot load {where}: {type(e).__name__}: {e}") from e
  if not hasattr(module, "get_sweep"):
    raise errors.ConfigError(f"{where} defines no get_sweep()")
  return check_sweep(module.get_sweep(), where)


def check_sweep(sweep: Any, where: str) -> Sweep:
  """A `get_sweep()` value as a Sweep; ConfigError (naming `where` and what is wrong) if bad."""
  if (not isinstance(sweep, Mapping) or not {"settings", "seeds"} <= set(sweep)
      or not set(sweep) <= {"settings", "seeds", "seeds_of"}):
    raise errors.ConfigError(f'{where}: get_sweep() must return {{"settings": {{name: '
                             f'{{dotted_key: value}}}}, "seeds": [...]}} (and optionally '
                             f'"seeds_of": {{name: [...]}}), got {sweep!r:.200}')
  settings, seeds = sweep["settings"], sweep["seeds"]
  if not isinstance(settings, Mapping) or not settings:
    raise errors.ConfigError(f"{where}: settings must be a non-empty dict, got {settings!r:.200}")
  for name, overrides in settings.items():
    if not isinstance(name, str) or not _NAME.match(name):
      raise errors.ConfigError(f"{where}: setting name {name!r} is not a folder name (letters, "
                               "digits, _ . + -)")
    if not isinstance(overrides, Mapping):
      raise errors.ConfigError(f"{where}: setting {name!r} must map dotted config keys to "
                               f"values, got {overrides!r:.200}")
    for key in overrides:
      if key in RUNNER_FIELDS:
        raise errors.ConfigError(f"{where}: setting {name!r} sets {key!r}, which the runner "
                                 "sets for each run (list the seeds in 'seeds')")
  _check_seeds(seeds, f"{where}: seeds")
  seeds_of = sweep.get("seeds_of", {})
  if not isinstance(seeds_of, Mapping):
    raise errors.ConfigError(f"{where}: seeds_of must map setting names to seeds, got "
                             f"{seeds_of!r:.200}")
  for name, own in seeds_of.items():
    if name not in settings:
      raise errors.ConfigError(f"{where}: seeds_of names {name!r}, which is not a setting "
                               f"(settings: {', '.join(settings)})")
    _check_seeds(own, f"{where}: seeds_of[{name!r}]")
  return Sweep({name: dict(o) for name, o in settings.items()}, tuple(seeds),
               {name: tuple(own) for name, own in seeds_of.items()})


def _check_seeds(seeds: Any, where: str) -> None:
  if (not isinstance(seeds, (list, tuple)) or not seeds or len(set(seeds)) != len(seeds)
      or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
    raise errors.ConfigError(f"{where} must be a non-empty list of distinct integers >= 0, "
                             f"got {seeds!r}")


def _checked_value(old: Any, value: Any, where: str) -> Any:
  """`value` converted to the type of the field's current value `old`; ConfigError if it cannot."""
  if isinstance(old, ml_collections.ConfigDict):
    if isinstance(value, Mapping):
      return ml_collections.ConfigDict(dict(value))
  elif isinstance(old, tuple):
    if isinstance(value, (list, tuple)):
      return tuple(value)
  elif isinstance(old, bool) or isinstance(value, bool):
    if isinstance(old, bool) and isinstance(value, bool):
      return value
  elif isinstance(old, float):
    if isinstance(value, (int, float)):
      return float(value)
  elif old is None or type(value) is type(old):  # pylint: disable=unidiomatic-typecheck
    return value
  raise errors.ConfigError(f"{where}: {value!r} ({type(value).__name__}) does not fit the field, "
                           f"which holds {old!r:.80} ({type(old).__name__})")


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any],
                    setting: str) -> ml_collections.ConfigDict:
  """A locked copy of `config` with the setting's {dotted key: value} overrides.

  Raises ConfigError naming the setting and the key: a key the config lacks, or a value of
  another type than the field's.
  """
  config = config.copy_and_resolve_references()
  for key, value in overrides.items():
    where = f"sweep setting {setting!r}, key {key!r}"
    if not isinstance(key, str) or not key:
      raise errors.ConfigError(f"{where}: keys are dotted config names such as 'optim.name'")
    *groups, field = key.split(".")
    node, path = config, []
    for group in groups:
      path.append(group)
      if group not in node or not isinstance(node[group], ml_collections.ConfigDict):
        raise errors.ConfigError(f"{where}: the config has no group {'.'.join(path)!r}")
      node = node[group]
    if field not in node:
      raise errors.ConfigError(
          f"{where}: the config has no field {key!r}; {'.'.join(groups) or 'the top level'} "
          f"has {', '.join(sorted(node.keys()))}")
    try:
      node[field] = _checked_value(node[field], value, where)
    except TypeError as e:
      raise errors.ConfigError(f"{where}: {e}") from e
  config.lock()
  return config


def expand(config: ml_collections.ConfigDict, sweep: Sweep, workdir: str) -> list[Run]:
  """Every run of the sweep, setting by setting (file order), seeds in order."""
  if config.train.num_replicas != 1 or config.train.mode != "train":
    raise errors.ConfigError(
        f"--config sets train.num_replicas={config.train.num_replicas} and train.mode="
        f"{config.train.mode!r}; the runner sets both for each run (--replicas picks how many "
        "seeds train together)")
  runs = []
  for setting, overrides in sweep.settings.items():
    setting_config = apply_overrides(config, overrides, setting)
    for seed in sweep.seeds_for(setting):
      run_config = setting_config.copy_and_resolve_references()
      run_config.seed = seed
      run_config.train.num_replicas = 1
      run_config.train.mode = "train"
      run_config.lock()
      runs.append(Run(setting, seed, run_config, results.run_dir(workdir, setting, seed)))
  return runs


def shard(runs: Sequence[Any], index: int, count: int) -> list[Any]:
  """Block `index` of `count` contiguous blocks of `runs` (sizes differ by at most one)."""
  if count < 1 or not 0 <= index < count:
    raise errors.ConfigError(f"--shard_index={index} --shard_count={count}: need "
                             "0 <= shard_index < shard_count")
  n = len(runs)
  return list(runs[index * n // count:(index + 1) * n // count])


def test_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The eval-mode config that scores a run's best-val checkpoint on the test split."""
  config = config.copy_and_resolve_references()
  config.train.mode = "eval"
  config.eval.split = "test"
  config.eval.checkpoint = "best"
  config.eval.output_dir = ""
  config.lock()
  return config


def trained(run: Run) -> bool:
  """Whether the run's final_metrics.json is that of its last step."""
  return workdir_lib.RunDir(run.workdir).final_record(run.config.train.num_steps) is not None


def tested(run: Run) -> bool:
  """Whether eval_test.json holds the test scores of the run's best checkpoint."""
  run_dir = workdir_lib.RunDir(run.workdir)
  record = run_dir.eval_record(results.TEST_SPLIT)
  return record is not None and record.get("step") == run_dir.best_step()


def groups(runs: Sequence[Run], max_replicas: int) -> list[list[Run]]:
  """The runs to train, in order, grouped into programs of replicas.

  A group holds runs of one setting with consecutive seeds that start from the same checkpoint
  step, at most `max_replicas` of them.
  """
  out: list[list[Run]] = []
  previous = None
  for run in runs:
    start = workdir_lib.RunDir(run.workdir).latest_step()
    key = (run.setting, start)
    if (out and previous == key and len(out[-1]) < max_replicas
        and run.seed == out[-1][-1].seed + 1):
      out[-1].append(run)
    else:
      out.append([run])
    previous = key
  return out


def _group_config(group: list[Run]) -> tuple[ml_collections.ConfigDict, str]:
  """The config and workdir that train `group` in one program (`train.num_replicas`)."""
  first = group[0]
  if len(group) == 1:
    return first.config, first.workdir
  config = first.config.copy_and_resolve_references()
  config.train.num_replicas = len(group)
  config.lock()
  return config, storage.dirname(first.workdir)


class Runner:
  """Checks, trains and tests the runs of one shard of a sweep."""

  def __init__(self, runs: list[Run], workdir: str, max_replicas: int):
    self.runs = runs
    self.workdir = workdir
    self.max_replicas = max_replicas
    self._datasets: dict[str, data_lib.Dataset] = {}
    self.failed: list[str] = []

  def dataset(self, config: ml_collections.ConfigDict) -> data_lib.Dataset:
    """The dataset of `config.data`, read once per distinct data config."""
    key = json.dumps(writers.to_jsonable(config.data.to_dict()), sort_keys=True)
    if key not in self._datasets:
      try:
        self._datasets[key] = data_lib.get_dataset(config.data)
      except (ValueError, OSError) as e:
        raise errors.DataError(str(e)) from e
    return self._datasets[key]

  def check(self) -> None:
    """Every setting builds a trainer and every existing run folder holds the run's config.

    Raises RunError naming the setting (before anything is trained); writes each setting's
    model.json if missing.
    """
    checked = set()
    for run in self.runs:
      if run.config.eval.split != "val":
        raise errors.ConfigError(
            f"sweep setting {run.setting!r}: eval.split={run.config.eval.split!r}; a sweep "
            "picks checkpoints on 'val' and scores 'test' separately")
      try:
        workdir_lib.RunDir(run.workdir).check_config(run.config)
      except errors.WorkdirError as e:
        raise errors.WorkdirError(f"sweep setting {run.setting!r}, seed {run.seed}: {e}") from e
      if run.setting in checked:
        continue
      checked.add(run.setting)
      try:
        trainer = steps.Trainer(run.config, self.dataset(run.config))
      except errors.RunError as e:
        raise type(e)(f"sweep setting {run.setting!r}: {e}") from e
      self._write_model(run, trainer)

  def _write_model(self, run: Run, trainer: steps.Trainer) -> None:
    """DIR/<setting>/model.json: parameters and forward GFLOPs at batch 1 (if missing)."""
    path = storage.join(self.workdir, run.setting, results.MODEL_JSON)
    if storage.exists(path) or jax.process_index() != 0:
      return
    variables = state_lib.variables(trainer.abstract_state)
    shape = (1, *trainer.dataset.image_size, len(trainer.dataset.bands))
    writers.makedirs_for(path)
    writers.write_json(path, {
        "params": models.count_params(variables),
        "gflops": summary.forward_flops(trainer.model, variables, shape) / 1e9,
        "image_size": list(trainer.dataset.image_size)})

  def plan(self) -> list[list[Run]]:
    """The groups of runs to train, in order; logs what every run of the shard needs."""
    to_train = [run for run in self.runs if not trained(run)]
    logging.info("%d runs in this shard: %d trained already, %d to train", len(self.runs),
                 len(self.runs) - len(to_train), len(to_train))
    planned = groups(to_train, self.max_replicas)
    for group in planned:
      step = workdir_lib.RunDir(group[0].workdir).latest_step()
      logging.info("to train%s: setting %s, seed%s %s, %s, in %s",
                   " together as replicas of one program" if len(group) > 1 else "",
                   group[0].setting, "s" if len(group) > 1 else "",
                   ", ".join(str(run.seed) for run in group),
                   f"resuming at step {step}" if step else "from the start",
                   group[0].workdir if len(group) == 1 else storage.dirname(group[0].workdir))
    return planned

  def run(self, preempt: preemption.PreemptionWatch) -> bool:
    """Trains and tests every unfinished run; False if preempted (rerun to resume).

    Runs trained before are tested first, then each group is tested as soon as it is trained,
    so a sweep stopped part way holds the test scores of every run it finished.
    """
    if not self._test(self.runs, preempt):
      return False
    for group in self.plan():
      if preempt.reached(0):
        return False
      if not self._train(group) or not self._test(group, preempt):
        return False
    return True

  def _test(self, runs: Sequence[Run], preempt: preemption.PreemptionWatch) -> bool:
    """Scores the best val checkpoint of each trained, untested run on test; False if
    preempted."""
    for run in runs:
      if preempt.reached(0):
        return False
      if trained(run) and not tested(run):
        logging.info("testing %s seed %d (best val checkpoint)", run.setting, run.seed)
        evaluate.evaluate_checkpoint(test_config(run.config), run.workdir,
                                     self.dataset(run.config))
    return True

  def _train(self, group: list[Run]) -> bool:
    """Trains a group (retried run by run if it fails); False if preempted."""
    names = ", ".join(f"seed {run.seed}" for run in group)
    config, workdir = _group_config(group)
    logging.info("training %s: %s in %s", group[0].setting, names, workdir)
    try:
      result = train.train_and_evaluate(config, workdir, self.dataset(config))
    except errors.WriteError:
      raise  # the sweep's disk or process, not this run: every later run would fail alike
    except errors.RunError as e:
      if len(group) == 1:
        logging.error("%s seed %d failed: %s", group[0].setting, group[0].seed, e)
        self.failed.append(f"{group[0].setting} seed {group[0].seed}")
        return True
      logging.warning("replicas %s of %s stopped (%s); training them one at a time", names,
                      group[0].setting, e)
      return all(self._train([run]) for run in group)
    return not result.preempted


def _max_replicas(flag: int) -> int:
  """--replicas, with 0 resolved for the platform."""
  if flag < 0:
    raise errors.ConfigError(f"--replicas must be >= 0, got {flag}")
  if flag:
    return flag
  return 1 if jax.devices()[0].platform == "cpu" else sys.maxsize


def main(argv) -> int:
  """Runs (or only summarizes) the sweep; returns the exit code."""
  del argv
  workdir = FLAGS.workdir
  sweep = load_sweep(FLAGS.sweep)
  failed = []
  if not FLAGS.summarize:
    config = FLAGS.config
    if config is None:
      raise errors.ConfigError("--config is required unless --summarize is given")
    # The cache is process-wide: every run uses the base config's folder (a setting's
    # train.compilation_cache_dir would not change it).
    compilation.use_persistent_cache(config.train.compilation_cache_dir)
    runs = shard(expand(config, sweep, workdir), FLAGS.shard_index, FLAGS.shard_count)
    runner = Runner(runs, workdir, _max_replicas(FLAGS.replicas))
    runner.check()
    if FLAGS.dry_run:
      runner.plan()
    else:
      preemption.exit_on_signal()
      # One writer per sweep folder and shard (shards of one sweep train different runs).
      lock = (workdir_lib.LOCK_FILE if FLAGS.shard_count == 1 else
              f"lock.shard{FLAGS.shard_index}of{FLAGS.shard_count}.json")
      with workdir_lib.RunDir(workdir).lock(lock), preemption.PreemptionWatch() as preempt:
        if not runner.run(preempt):
          logging.warning("preempted: rerun the same command to resume")
          return errors.EXIT_PREEMPTED
      failed = runner.failed
  rows = results.summarize(workdir, sweep.seeds_by_setting(), FLAGS.readme)
  logging.info("wrote %s: %s", storage.join(workdir, results.RESULTS_MD),
               ", ".join(f"{r['setting']} n={r['n']}" for r in rows))
  if failed:
    logging.error("failed runs: %s", ", ".join(failed))
    return errors.EXIT_SOME_FAILED
  return errors.EXIT_OK


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, required=["sweep", "workdir"])
