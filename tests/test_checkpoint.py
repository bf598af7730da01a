"""Tests of seg_jax.checkpoint: which checkpoints are kept, and restoring past corrupt ones."""

import glob
import json
import os
import shutil
import sys
import tempfile
import time
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from seg_jax import checkpoint
from seg_jax import errors
from seg_jax import workdir as workdir_lib

# (step, mIoU of its evaluation or None): step 2 is the best, step 3 was not evaluated.
SAVES = ((1, 0.5), (2, 0.9), (3, None), (4, 0.6), (5, 0.7))


def _state(step):
  return {"w": jnp.arange(3000.0) * step, "b": jnp.ones(3, jnp.bfloat16), "n": jnp.int32(step)}


def _abstract():
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      _state(0))


def _files(workdir):
  return sorted(os.path.relpath(os.path.join(root, name), workdir)
                for root, dirs, files in os.walk(workdir) for name in dirs + files)


def _largest_array_file(step_dir):
  files = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
  return max(files, key=os.path.getsize)


def truncate(step_dir):
  path = _largest_array_file(step_dir)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def garble(step_dir):
  path = _largest_array_file(step_dir)
  with open(path, "rb") as f:
    data = bytearray(f.read())
  for i in range(len(data) // 2, len(data), 3):
    data[i] ^= 0x5A
  with open(path, "wb") as f:
    f.write(data)


def delete_record(step_dir):
  os.remove(os.path.join(step_dir, "run", "metadata"))


def garble_record(step_dir):
  with open(os.path.join(step_dir, "run", "metadata"), "w") as f:
    f.write('{"pipeline": {"next_batch": ')


def delete_state(step_dir):
  shutil.rmtree(os.path.join(step_dir, "state"))


class CheckpointerTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.saved = tempfile.mkdtemp()
    ckpt = workdir_lib.RunDir(cls.saved).checkpointer(2)
    for step, miou in SAVES:
      ckpt.save(step, _state(step), {"next_batch": step}, miou=miou)
    ckpt.close()

  def copy(self):
    workdir = os.path.join(tempfile.mkdtemp(), "run")
    shutil.copytree(self.saved, workdir)
    self.addCleanup(shutil.rmtree, os.path.dirname(workdir), ignore_errors=True)
    return workdir

  def assertRestored(self, restored, step):
    self.assertEqual(restored.step, step)
    np.testing.assert_array_equal(restored.state["w"], _state(step)["w"])
    self.assertEqual(restored.pipeline, {"next_batch": step})

  def test_keeps_latest_and_best(self):
    self.assertEqual(sorted(os.listdir(os.path.join(self.saved, "checkpoints"))),
                     ["2", "4", "5"])
    ckpt = workdir_lib.RunDir(self.saved).checkpointer(2, read_only=True)
    self.assertEqual(ckpt.best_step(), 2)
    state, step = ckpt.restore_state(_abstract(), "best")
    self.assertEqual(step, 2)
    self.assertEqual(jax.tree.map(lambda x: x.dtype, state),
                     jax.tree.map(lambda x: x.dtype, _state(0)))
    self.assertRestored(ckpt.restore_latest(_abstract()), 5)

  @parameterized.parameters(truncate, garble, delete_record, garble_record, delete_state)
  def test_resume_walks_back_past_a_corrupt_latest(self, corrupt):
    workdir = self.copy()
    corrupt(os.path.join(workdir, "checkpoints", "5"))
    ckpt = workdir_lib.RunDir(workdir).checkpointer(2)
    with self.assertLogs(level="WARNING") as logs:
      restored = ckpt.restore_latest(_abstract())
    self.assertRestored(restored, 4)
    self.assertTrue(any("checkpoint 5" in line and "unreadable" in line
                        for line in logs.output), logs.output)
    self.assertTrue(os.path.isdir(os.path.join(workdir, "checkpoints_unreadable", "5")))
    ckpt.save(5, _state(5), {"next_batch": 5}, miou=0.7)  # the replayed step saves again
    ckpt.close()
    self.assertRestored(workdir_lib.RunDir(workdir).checkpointer().restore_latest(_abstract()), 5)

  def test_an_unreadable_checkpoint_is_one_warning_not_a_traceback_per_array(self):
    # A cut manifest makes every read fail; with hundreds of arrays, most are still being read when
    # the first fails and the restore gives up.
    many = lambda step: {f"a{i:04d}": jnp.full((4,), step, jnp.float32) for i in range(400)}
    workdir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, workdir, ignore_errors=True)
    ckpt = workdir_lib.RunDir(workdir).checkpointer(2)
    for step in (1, 2):
      ckpt.save(step, many(step), {})
    ckpt.close()
    manifest = os.path.join(workdir, "checkpoints", "2", "state", "manifest.ocdbt")
    os.truncate(manifest, os.path.getsize(manifest) // 2)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), many(0))
    unraisable = []  # errors raised where nothing can catch them (printed as tracebacks)
    with self.assertLogs(level="WARNING") as logs, mock.patch.object(
        sys, "unraisablehook", lambda hook_args: unraisable.append(hook_args.exc_value)):
      ckpt = workdir_lib.RunDir(workdir).checkpointer(2)
      self.assertEqual(ckpt.restore_latest(abstract).step, 1)
      ckpt.close()
      time.sleep(0.5)  # the abandoned reads complete meanwhile
    self.assertEqual(unraisable, [])
    self.assertLen(logs.output, 3, logs.output)  # skipped, resumed from, moved aside
    self.assertIn("checkpoint 2 in", logs.output[0])

  def test_missing_tree_metadata_is_rebuilt_from_the_target_and_verified(self):
    workdir = self.copy()
    os.remove(os.path.join(workdir, "checkpoints", "5", "state", "_METADATA"))
    self.assertRestored(workdir_lib.RunDir(workdir).checkpointer().restore_latest(_abstract()), 5)

  def test_read_only_restore_skips_a_corrupt_best_and_writes_nothing(self):
    workdir = self.copy()
    garble(os.path.join(workdir, "checkpoints", "2"))
    before = _files(workdir)
    ckpt = workdir_lib.RunDir(workdir).checkpointer(read_only=True)
    state, step = ckpt.restore_state(_abstract(), "best")
    self.assertEqual(step, 5)  # the next best score, 0.7
    np.testing.assert_array_equal(state["w"], _state(5)["w"])
    ckpt.close()
    self.assertEqual(_files(workdir), before)

  def test_no_intact_checkpoint_is_one_error_naming_each(self):
    workdir = self.copy()
    for step in (2, 4, 5):
      truncate(os.path.join(workdir, "checkpoints", str(step)))
    with self.assertRaisesRegex(errors.WorkdirError,
                                r"no readable checkpoint .*step 5: .*step 4: .*step 2: "):
      workdir_lib.RunDir(workdir).checkpointer().restore_latest(_abstract())
    self.assertFalse(os.path.exists(os.path.join(workdir, "checkpoints_unreadable")))

  def test_read_only_without_checkpoints_creates_nothing(self):
    workdir = os.path.join(tempfile.mkdtemp(), "missing")
    ckpt = workdir_lib.RunDir(workdir).checkpointer(read_only=True)
    self.assertIsNone(ckpt.restore_latest(_abstract()))
    with self.assertRaisesRegex(errors.WorkdirError, "no 'latest' checkpoint"):
      ckpt.restore_state(_abstract(), "latest")
    self.assertFalse(os.path.exists(workdir))

  def test_record_holds_pipeline_fingerprint_and_score(self):
    with open(os.path.join(self.saved, "checkpoints", "4", "run", "metadata")) as f:
      record = json.load(f)
    self.assertEqual(record["pipeline"], {"next_batch": 4})
    self.assertEqual(record["miou"], 0.6)
    self.assertEqual(record["fingerprint"], checkpoint.fingerprint(_state(4)))
    self.assertNotEqual(record["fingerprint"], checkpoint.fingerprint(_state(5)))

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.saved, ignore_errors=True)
    super().tearDownClass()


if __name__ == "__main__":
  absltest.main()
