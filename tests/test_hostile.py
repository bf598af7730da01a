"""What a careless user or a hostile machine does to a run: a second writer, a deleted
config.json, a full disk, read-only folders, values out of range, Ctrl-C, a damaged log, bad
paths and rotated photos each end in one line and a documented exit code, never a wrong run.

In-process tests train the tiny config of tests/train_testing.py; the full-disk and read-only
cases mount a small tmpfs (root only: skipped elsewhere).
"""

import contextlib
import json
import logging as std_logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from unittest import mock

from absl import logging
from absl.testing import absltest
import jax.numpy as jnp
import numpy as np
from PIL import Image

from seg_jax import checkpoint as checkpoint_lib
from seg_jax import checks
from seg_jax import errors
from seg_jax import evaluate
from seg_jax import predict
from seg_jax import preemption
from seg_jax import replicas
from seg_jax import sweep
from seg_jax import train
from seg_jax import workdir as workdir_lib
from seg_jax import writers
from seg_jax.data import dubai
from tests.train_testing import REPO, tiny_config, tiny_dataset


def _new_dir(test):
  path = tempfile.mkdtemp()
  test.addCleanup(shutil.rmtree, path, ignore_errors=True)
  return path


@contextlib.contextmanager
def _mounted(options, source="tmpfs"):
  """A folder with `source` mounted on it (`mount -o options`); SkipTest if mounting fails."""
  target = tempfile.mkdtemp()
  kind = ["-t", "tmpfs"] if source == "tmpfs" else ["--bind"]
  done = subprocess.run(["mount", *kind, "-o", options, source, target], capture_output=True)
  if done.returncode:
    os.rmdir(target)
    raise absltest.SkipTest(f"cannot mount a folder here: {done.stderr.decode().strip()}")
  try:
    yield target
  finally:
    subprocess.run(["umount", target], check=False)
    os.rmdir(target)


@contextlib.contextmanager
def _read_only_copy(folder):
  """`folder` bind-mounted read-only (SkipTest where that is not allowed)."""
  with _mounted("bind", folder) as target:
    done = subprocess.run(["mount", "-o", "remount,bind,ro", target], capture_output=True)
    if done.returncode:
      raise absltest.SkipTest(f"cannot remount read-only: {done.stderr.decode().strip()}")
    yield target


class LockTest(absltest.TestCase):
  """Item 1: one writer per run folder."""

  def test_second_writer_is_refused_naming_the_holder(self):
    run_dir = workdir_lib.RunDir(_new_dir(self))
    with run_dir.lock():
      with self.assertRaisesRegex(errors.WorkdirError,
                                  rf"in use by process {os.getpid()} on host "):
        with run_dir.lock():
          pass
    with run_dir.lock():  # released
      pass
    self.assertFalse(os.path.exists(run_dir.file(workdir_lib.LOCK_FILE)))

  def _write_lock(self, run_dir, host, pid, age=0.0):
    path = run_dir.file(workdir_lib.LOCK_FILE)
    with open(path, "w") as f:
      json.dump({"host": host, "pid": pid, "since": "then"}, f)
    mtime = os.path.getmtime(path) - age
    os.utime(path, (mtime, mtime))

  def test_lock_of_a_dead_process_or_past_its_lease_is_taken_over(self):
    run_dir = workdir_lib.RunDir(_new_dir(self))
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    self._write_lock(run_dir, socket.gethostname(), dead.pid)
    with self.assertLogs(level="WARNING") as logs, run_dir.lock():
      pass
    self.assertIn(f"its process {dead.pid}", "\n".join(logs.output))
    self._write_lock(run_dir, "elsewhere", 1)
    with self.assertRaisesRegex(errors.WorkdirError, "on host elsewhere"):
      with run_dir.lock():
        pass
    self._write_lock(run_dir, "elsewhere", 1, age=workdir_lib.LOCK_LEASE_SECONDS + 5)
    with run_dir.lock():
      pass

  def test_temporary_files_of_a_cut_write_are_removed_when_locked(self):
    # Item 7: a SIGTERM at launch used to leave dataset.json.<pid>.tmp for good.
    run_dir = workdir_lib.RunDir(_new_dir(self))
    os.makedirs(run_dir.file(workdir_lib.PREDICTIONS_DIR))
    left = [run_dir.file("dataset.json.123.tmp"), run_dir.file("curves.png.tmp"),
            os.path.join(run_dir.file(workdir_lib.PREDICTIONS_DIR), "step_2.png.tmp")]
    for path in left:
      open(path, "w").close()
    with run_dir.lock():
      self.assertEqual([p for p in left if os.path.exists(p)], [])

  def test_workdir_that_is_a_file(self):
    # Item 11.
    path = os.path.join(_new_dir(self), "file")
    open(path, "w").close()
    with self.assertRaisesRegex(errors.WorkdirError, f"{path} is a file: it must be a folder"):
      train.train_and_evaluate(tiny_config(), path, tiny_dataset())


class ValuesTest(absltest.TestCase):
  """Item 5: every field's range, before anything is written."""

  def test_values_out_of_range_are_refused_before_anything_is_written(self):
    for overrides, field in (
        ({"data.augment.scale_min": 2.0, "data.augment.scale_max": 0.5}, "scale_min"),
        ({"optim.learning_rate": float("nan")}, "optim.learning_rate"),
        ({"optim.learning_rate": -0.01}, "optim.learning_rate"),
        ({"optim.weight_decay": -1.0}, "optim.weight_decay"),
        ({"loss.label_smoothing": 1.0}, "loss.label_smoothing"),
        ({"eval.predict.overlap": -0.1}, "eval.predict.overlap"),
        ({"data.image_size": (0, 32)}, "data.image_size")):
      workdir = os.path.join(_new_dir(self), "run")
      with self.subTest(field=field), mock.patch.object(replicas, "create_trainer") as create:
        with self.assertRaisesRegex(errors.ConfigError, field):
          train.train_and_evaluate(tiny_config(**overrides), workdir, tiny_dataset())
        create.assert_not_called()
        self.assertFalse(os.path.exists(workdir))

  def test_every_numeric_default_field_has_a_range(self):
    config = tiny_config()
    numeric = [k for k, v in workdir_lib._flatten(config.to_dict()).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)
               and not k.startswith("model.kwargs.")]  # the model's own arguments
    self.assertEqual(sorted(set(numeric) - set(checks.RANGES) - {"data.patch_overlap"}), [])

  def test_batch_larger_than_the_training_set_is_said(self):
    config = tiny_config(**{"train.global_batch_size": 16, "eval.global_batch_size": 2})
    with self.assertLogs(level="WARNING") as logs:
      checks.check_setup(config, tiny_dataset(), 1)
    self.assertIn("larger than the 8 training examples", "\n".join(logs.output))


class TrainedRunTest(absltest.TestCase):
  """One tiny run trained in process serves items 2, 4, 9 and 11."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    cls.workdir = os.path.join(cls.root, "run")
    cls.config = tiny_config(**{"train.num_steps": 2})
    train.train_and_evaluate(cls.config, cls.workdir, tiny_dataset())

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def copy(self):
    workdir = os.path.join(_new_dir(self), "run")
    shutil.copytree(self.workdir, workdir)
    return workdir

  def test_config_travels_with_the_checkpoint(self):
    # Item 2: a deleted config.json let a rerun continue under another config.
    workdir = self.copy()
    os.remove(os.path.join(workdir, workdir_lib.CONFIG_FILE))
    other = tiny_config(**{"train.num_steps": 3, "optim.learning_rate": 0.01, "data.seed": 5})
    with self.assertRaisesRegex(errors.WorkdirError,
                                r"checkpoint 2 in .*optim.learning_rate.*data.seed|"
                                r"checkpoint 2 in .*data.seed.*optim.learning_rate"):
      train.train_and_evaluate(other, workdir, tiny_dataset())
    self.assertEqual(workdir_lib.RunDir(workdir).load_config().optim.learning_rate,
                     self.config.optim.learning_rate)
    train.train_and_evaluate(tiny_config(**{"train.num_steps": 3}), workdir, tiny_dataset())
    self.assertTrue(os.path.exists(os.path.join(workdir, workdir_lib.CONFIG_FILE)))

  def test_run_that_failed_before_its_first_save_pins_nothing(self):
    # Item 5: a failure in the first step (a tracing error, a NaN) left a config.json that
    # refused the corrected command.
    workdir = os.path.join(_new_dir(self), "run")
    with mock.patch.object(train._Loop, "_compiling_step", side_effect=RuntimeError("boom")):
      with self.assertRaisesRegex(RuntimeError, "boom"):
        train.train_and_evaluate(tiny_config(**{"optim.learning_rate": 0.5}), workdir,
                                 tiny_dataset())
    self.assertFalse(workdir_lib.RunDir(workdir).has_config())
    self.assertFalse(workdir_lib.RunDir(workdir).check_config(tiny_config()))

  def test_cut_metrics_line_is_written_again_and_lost_records_named(self):
    # Item 9: the record of the restored step, cut short, was dropped with no word.
    workdir = self.copy()
    metrics = os.path.join(workdir, workdir_lib.METRICS_FILE)
    with open(metrics) as f:
      text = f.read()
    with open(metrics, "w") as f:
      f.write(text[:len(text) // 2])
    with self.assertLogs(level="WARNING") as logs:
      train.train_and_evaluate(tiny_config(**{"train.num_steps": 4}), workdir, tiny_dataset())
    self.assertIn("lost the record of step 2", "\n".join(logs.output))
    records = workdir_lib.RunDir(workdir).metrics()
    self.assertEqual([r["step"] for r in records], [2, 4])
    with open(os.path.join(self.workdir, workdir_lib.METRICS_FILE)) as f:
      self.assertEqual(records[0], json.loads(f.readline()))
    with open(metrics) as f:
      lines = f.read().splitlines()
    with open(metrics, "w") as f:
      f.write("\n".join(["{garbage"] + lines[1:]) + "\n")
    with self.assertLogs(level="WARNING") as logs:
      train.train_and_evaluate(tiny_config(**{"train.num_steps": 6}), workdir, tiny_dataset())
    self.assertRegex("\n".join(logs.output), r"metrics.jsonl lost the records of steps \[2\]")

  def test_damaged_files_of_a_sweep_are_named(self):
    # Item 10: --summarize read a garbage line with a JSONDecodeError traceback.
    workdir = self.copy()
    with open(os.path.join(workdir, workdir_lib.METRICS_FILE), "a") as f:
      f.write("not json\n")
    with self.assertRaisesRegex(errors.WorkdirError, r"metrics.jsonl, line 2, is not a JSON"):
      workdir_lib.RunDir(workdir).metrics()
    with open(os.path.join(workdir, "eval_test.json"), "w") as f:
      f.write('{"step": ')
    run = sweep.Run("s", 0, self.config, workdir)
    self.assertFalse(sweep.tested(run))  # so the sweep evaluates it again

  def test_predict_into_a_file(self):
    # Item 11: predict with an output path that is a file.
    image = os.path.join(_new_dir(self), "a.png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    with mock.patch("sys.stderr") as stderr:
      code = predict.run(self.workdir, image, image, checkpoint="best", window=None,
                         save_probs=False, mode="resize", overlap=0.25, blend="uniform",
                         tta="none", scales=(), batch_size=2)
    self.assertEqual(code, errors.EXIT_USER_ERROR)
    self.assertIn(f"--output {image} is a file", "".join(
        str(c.args[0]) for c in stderr.write.call_args_list))

  def test_read_only_workdirs(self):
    # Item 4: training refuses before compiling, eval-only before evaluating (or writes to
    # eval.output_dir).
    with _read_only_copy(self.workdir) as workdir:
      with mock.patch.object(replicas, "create_trainer") as create:
        with self.assertRaisesRegex(errors.WorkdirError, f"{workdir} is not writable"):
          train.train_and_evaluate(tiny_config(**{"train.num_steps": 3}), workdir)
        create.assert_not_called()
      eval_config = tiny_config(**{"train.num_steps": 2, "train.mode": "eval"})
      with mock.patch.object(evaluate, "_trainer") as trainer:
        with self.assertRaisesRegex(errors.WorkdirError, "eval.output_dir"):
          evaluate.evaluate_checkpoint(eval_config, workdir, tiny_dataset())
        trainer.assert_not_called()
      output = _new_dir(self)
      eval_config = tiny_config(**{"train.num_steps": 2, "train.mode": "eval",
                                   "eval.output_dir": output})
      evaluate.evaluate_checkpoint(eval_config, workdir, tiny_dataset())
      self.assertTrue(os.path.exists(os.path.join(output, "eval_val.json")))


class FullDiskTest(absltest.TestCase):
  """Item 3: a full disk stops the run at once with one line naming the path and the cause."""

  def test_checkpoint_and_log_writes_on_a_full_disk(self):
    with _mounted("size=1m") as folder:
      ckpt = checkpoint_lib.Checkpointer(os.path.join(folder, "c"), os.path.join(folder, "u"))
      # 4 MB that no compression shrinks below the 1 MB of the folder.
      state = {"w": jnp.asarray(np.random.default_rng(0).random((1024, 1024), np.float32))}
      with self.assertRaisesRegex(errors.WriteError, r"No space left on device"):
        ckpt.save(1, state, {})
        ckpt.check()
        ckpt.wait()
      self.assertEqual(errors.WriteError.exit_code, errors.EXIT_WRITE_FAILED)
      ckpt.close()  # the failure was raised once: closing does not raise it again
      with open(os.path.join(folder, "filler"), "wb") as f:
        with contextlib.suppress(OSError):
          f.write(b"\0" * (2 << 20))
      writer = writers.MetricWriter(os.path.join(folder, "e"), os.path.join(folder, "m.jsonl"))
      with self.assertRaisesRegex(errors.WriteError, r"m.jsonl: No space left on device"):
        writer.jsonl({"step": 1, "loss": np.zeros(4096).tolist()})
      with self.assertRaisesRegex(errors.WriteError, r"No space left on device"):
        writers.write_json(os.path.join(folder, "x.json"), {"a": list(range(10000))})
      self.assertEqual([n for n in os.listdir(folder) if n.endswith(".tmp")], [])
      writer.close()


class SignalTest(absltest.TestCase):
  """Items 6 and 7: Ctrl-C in the loop saves; a second one, or a signal outside it, stops."""

  def test_second_ctrl_c_exits_at_once(self):
    with preemption.PreemptionWatch() as watch, mock.patch.object(os, "_exit") as exit_:
      os.kill(os.getpid(), signal.SIGINT)
      self.assertTrue(watch.reached(1))
      exit_.assert_not_called()
      os.kill(os.getpid(), signal.SIGINT)
      exit_.assert_called_once_with(errors.EXIT_INTERRUPTED)

  def test_signal_outside_a_watch_is_preempted(self):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    self.addCleanup(lambda: [signal.signal(s, h) for s, h in before.items()])
    preemption.exit_on_signal()
    with mock.patch.object(os, "_exit") as exit_:
      os.kill(os.getpid(), signal.SIGTERM)
    exit_.assert_called_once_with(errors.EXIT_PREEMPTED)


class ExifTest(absltest.TestCase):
  """Item 12: the EXIF orientation is applied to images and masks, in training and prediction."""

  def test_orientation_6_is_applied(self):
    path = os.path.join(_new_dir(self), "rotated.jpg")
    pixels = np.zeros((2, 4, 3), np.uint8)
    pixels[:, 0] = 255  # the left column is white
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    Image.fromarray(pixels).resize((40, 20), Image.NEAREST).save(path, exif=exif, quality=100)
    for read in (lambda p: dubai.read_rgb(p)[0], predict.read_image):
      shown = read(path)
      self.assertEqual(shown.shape, (40, 20, 3))
      self.assertGreater(shown[:5].mean(), 200)  # the white column is now on top
      self.assertLess(shown[-5:].mean(), 50)


class CommandLineTest(absltest.TestCase):
  """Item 11: a config file that does not exist is one line naming it, exit 2."""

  def test_missing_config_file(self):
    done = subprocess.run([sys.executable, "-m", "seg_jax.main", "--config=configs/nosuch.py",
                           f"--workdir={_new_dir(self)}"], cwd=REPO, capture_output=True,
                          text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    self.assertEqual(done.returncode, errors.EXIT_USER_ERROR, done.stderr[-2000:])
    self.assertNotIn("Traceback", done.stderr)
    self.assertRegex(done.stderr, r"error \(flags\): .*configs/nosuch.py")


if __name__ == "__main__":
  absltest.main()
