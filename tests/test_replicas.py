"""Replicas trained in one program (`train.num_replicas`) end exactly like each seed trained alone."""

import json
import os
import signal
import tempfile
from unittest import mock

from absl.testing import absltest
import jax
import numpy as np
import pytest

from seg_jax import replicas
from seg_jax import steps
from seg_jax import train
from seg_jax import workdir as workdir_lib

from tests.train_testing import tiny_config, tiny_dataset


def setUpModule():
  jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp())
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def _read_jsonl(workdir):
  with open(os.path.join(workdir, workdir_lib.METRICS_FILE)) as f:
    return [json.loads(line) for line in f]


def _numbers(record, prefix=""):
  """{dotted name: number} of a (nested) record; None (a NaN score) becomes NaN."""
  out = {}
  for key, value in record.items():
    if isinstance(value, dict):
      out.update(_numbers(value, f"{prefix}{key}."))
    elif isinstance(value, (int, float)) or value is None:
      out[prefix + key] = np.nan if value is None else float(value)
  return out


def _files(workdir, checkpoints=True):
  """The files of a run folder and its checkpoint steps (event files by their common prefix)."""
  names = {"events" if "tfevents" in name else name for name in os.listdir(workdir)}
  if checkpoints:
    names |= {f"checkpoints/{step}" for step in os.listdir(os.path.join(workdir, "checkpoints"))}
  return names


class ReplicasTest(absltest.TestCase):

  def assertRecordsClose(self, got, expected, ignore=("train_seconds",)):
    got = {k: v for k, v in _numbers(got).items() if k not in ignore}
    expected = {k: v for k, v in _numbers(expected).items() if k not in ignore}
    self.assertEqual(sorted(got), sorted(expected))
    np.testing.assert_allclose([got[k] for k in sorted(got)],
                               [expected[k] for k in sorted(expected)], rtol=1e-4, atol=1e-5)

  def assertSameRun(self, replica_dir, alone_dir, checkpoints=True):
    """The replica's folder holds what the seed trained alone wrote, to float tolerance."""
    self.assertEqual(_files(replica_dir, checkpoints), _files(alone_dir, checkpoints))
    # The same config but for how the replicas were computed, which changes no number.
    configs = [_read_json(os.path.join(d, "config.json")) for d in (replica_dir, alone_dir)]
    for config in configs:
      del config["train"]["replica_mode"]
    self.assertEqual(*configs)
    self.assertRecordsClose(_read_json(os.path.join(replica_dir, workdir_lib.FINAL_METRICS)),
                            _read_json(os.path.join(alone_dir, workdir_lib.FINAL_METRICS)))
    got, expected = _read_jsonl(replica_dir), _read_jsonl(alone_dir)
    self.assertEqual([r["step"] for r in got], [r["step"] for r in expected])
    for g, e in zip(got, expected):
      self.assertRecordsClose(g, e)

  SEEDS = (3, 4)

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.alone = {seed: tempfile.mkdtemp() for seed in cls.SEEDS}
    cls.alone_finals = {seed: train.train_and_evaluate(tiny_config(seed=seed), workdir,
                                                       tiny_dataset()).final
                        for seed, workdir in cls.alone.items()}

  def train_together(self, mode):
    """Trains SEEDS as replicas with `mode`; checks each against its seed alone."""
    config = tiny_config(**{"seed": self.SEEDS[0], "train.num_replicas": len(self.SEEDS),
                            "train.replica_mode": mode})
    together = tempfile.mkdtemp()
    result = train.train_and_evaluate(config, together, tiny_dataset()).finals
    self.assertEqual(sorted(os.listdir(together)), ["seed3", "seed4"])
    self.assertLen(result, 2)
    abstract_state = steps.Trainer(tiny_config(), tiny_dataset()).abstract_state
    for seed, final in zip(self.SEEDS, result):
      self.assertRecordsClose(final, self.alone_finals[seed])
      replica = os.path.join(together, f"seed{seed}")
      self.assertSameRun(replica, self.alone[seed])
      # Each replica's own checkpoints: parameters, BatchNorm statistics and optimizer state.
      states = [workdir_lib.RunDir(d).checkpointer(read_only=True).restore_state(
          abstract_state, "latest") for d in (replica, self.alone[seed])]
      self.assertEqual(states[0][1], states[1][1])
      # Adam moves a parameter whose gradient is rounding noise by up to the learning rate,
      # so whole arrays are compared: their difference is small next to their size.
      jax.tree.map(lambda a, b: self.assertLessEqual(
          np.linalg.norm(np.asarray(a, np.float64) - b), 1e-2 * np.linalg.norm(b) + 1e-6),
                   states[0][0], states[1][0])
    self.assertNotEqual(result[0]["miou"], result[1]["miou"])
    return config, together, result

  @pytest.mark.slow  # trains two seeds together (the seeds alone are trained once per class)
  def test_vmapped_replicas_equal_each_seed_trained_alone(self):
    self.train_together("vmap")

  @pytest.mark.slow  # trains two seeds together, then preempts and resumes them
  def test_unrolled_replicas_equal_each_seed_trained_alone_and_resume_together(self):
    config, together, result = self.train_together("unroll")
    dataset = tiny_dataset()
    seeds = self.SEEDS

    # Preempted after step 3, with the last save of seed 4 lost (a kill between the saves of
    # the two replicas): seed 3 resumes from step 2 with seed 4 and keeps its own step 3.
    interrupted = tempfile.mkdtemp()
    next_batch = replicas.Replicas.next_batch
    calls = []

    def next_batch_with_sigterm(trainer, pipelines):
      calls.append(1)
      if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGTERM)
      return next_batch(trainer, pipelines)

    with mock.patch.object(replicas.Replicas, "next_batch", next_batch_with_sigterm):
      out = train.train_and_evaluate(config, interrupted, dataset)
      self.assertEqual((out.preempted, out.step, out.finals), (True, 3, []))
    checkpoint_3 = os.path.join(interrupted, "seed3", "checkpoints", "3")
    saved_3 = os.stat(os.path.join(checkpoint_3, "run")).st_mtime_ns
    os.rename(os.path.join(interrupted, "seed4", "checkpoints", "3"),
              os.path.join(tempfile.mkdtemp(), "3"))
    with self.assertLogs(level="WARNING") as logs:
      resumed = train.train_and_evaluate(config, interrupted, dataset).finals
    self.assertTrue(any("resumes from step 2 with the other replicas (it holds step 3)" in line
                        for line in logs.output), logs.output)
    self.assertEqual(os.stat(os.path.join(checkpoint_3, "run")).st_mtime_ns, saved_3)
    for seed, final, expected in zip(seeds, resumed, result):
      self.assertRecordsClose(final, expected)
      self.assertSameRun(os.path.join(interrupted, f"seed{seed}"),
                         os.path.join(together, f"seed{seed}"), checkpoints=False)


if __name__ == "__main__":
  absltest.main()
