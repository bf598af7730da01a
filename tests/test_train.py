"""Tests of seg_jax.train, seg_jax.optim and the run outputs, on tiny models and images."""

import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from seg_jax import checks
from seg_jax import data as data_lib
from seg_jax import errors
from seg_jax import losses
from seg_jax import models
from seg_jax import optim
from seg_jax import state as state_lib
from seg_jax import steps
from seg_jax import train
from seg_jax import viz
from seg_jax import watchdog
from seg_jax import workdir as workdir_lib
from seg_jax import writers

from tests.train_testing import REPO, TINY_KWARGS, default_config, snapshot, tiny_config, tiny_dataset  # pylint: disable=g-multiple-import


class ModelsTrainTest(parameterized.TestCase):

  def test_every_segmentation_model_is_listed(self):
    self.assertEqual(sorted(TINY_KWARGS),
                     sorted(n for n in models.available() if models.is_segmentation(n)))

  # Every model but those built only of another's parts: fcn32s and fcn16s are fcn8s with fewer
  # skips, deeplabv3 is deeplabv3_resnet50 without the head conv (tests/models/test_registry.py
  # runs them forward, and backward in GradientTest). unet runs with bfloat16 compute to cover that option
  # without another compilation.
  @parameterized.parameters(*[(n, "bfloat16" if n == "unet" else "float32")
                              for n in sorted(TINY_KWARGS)
                              if n not in ("fcn32s", "fcn16s", "deeplabv3")])
  def test_one_train_step_and_evaluation(self, name, dtype):
    dataset = tiny_dataset()
    trainer = steps.Trainer(tiny_config(name, **{"model.dtype": dtype}), dataset)
    state = trainer.initial_state()
    params_before = jax.tree.map(np.array, state.params)  # a copy: state is donated
    batch = next(trainer.train_pipeline())
    state, metrics = trainer.train_step(state, batch, jax.random.key(1))
    self.assertTrue(np.isfinite(float(metrics["loss"])))
    self.assertEqual(int(state.step), 1)
    self.assertEqual({x.dtype for x in jax.tree.leaves(state.params)}, {jnp.dtype("float32")})
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), params_before,
                           state.params)
    self.assertTrue(any(jax.tree.leaves(changed)))
    result, cm, samples = trainer.evaluate(state)
    labels = np.stack([dataset.val[i]["label"] for i in range(len(dataset.val))])
    self.assertEqual(int(cm.sum()), int((labels != dataset.ignore_index).sum()))
    self.assertBetween(result["miou"], 0.0, 1.0)
    self.assertLen(samples, 2)
    image, label, pred = samples[1]
    np.testing.assert_array_equal(image, dataset.val[1]["image"])
    np.testing.assert_array_equal(label, dataset.val[1]["label"])
    self.assertEqual(pred.shape, (32, 32))



  def test_initial_state_has_the_bits_of_a_default_compile(self):
    # Initialisation is compiled at a lower LLVM level to start faster; that must not change it.
    # A two-stage U-Net has every kind of initialiser of the tiny one (conv, transposed conv,
    # BatchNorm, head, optimizer state) at half the cost of XLA's level-3 compile (~9 s).
    config = tiny_config(**{"model.kwargs": ml_collections.ConfigDict(
        {"backbone_kwargs": {"widths": (4, 8)}})})
    with mock.patch.dict(os.environ, {"XLA_FLAGS": ""}):  # not the suite's level 0 (conftest.py)
      trainer = steps.Trainer(config, tiny_dataset())
    # XLA's default level (3).
    reference = jax.jit(lambda: state_lib.init_state(config, trainer.model, (32, 32),
                                                 steps.seed_key(config.seed, 0)),
                        compiler_options={"xla_backend_optimization_level": 3})()
    state = trainer.initial_state()
    for name in ("params", "batch_stats", "opt_state"):
      jax.tree.map(np.testing.assert_array_equal, getattr(state, name),
                   getattr(reference, name))

  @parameterized.parameters(("", 1), ("--xla_backend_optimization_level=0", 0),
                            ("--xla_dump_to=/tmp --xla_backend_optimization_level=2", 1))
  def test_initialisation_is_never_compiled_above_the_level_of_xla_flags(self, flags, level):
    with mock.patch.dict(os.environ, {"XLA_FLAGS": flags}):
      self.assertEqual(steps.init_compiler_options(),
                       {"xla_backend_optimization_level": level})

  def test_cpu_steps_compile_without_ynnpack_fusions_unless_asked(self):
    # YNNPACK's convolutions run channel counts that are not multiples of 16 at about a third of
    # the speed of XLA:CPU's other convolutions (train.xla_cpu_ynnpack in configs/default.py).
    for ynnpack in (False, True):
      trainer = steps.Trainer(tiny_config(**{"train.xla_cpu_ynnpack": ynnpack}), tiny_dataset())
      batch = next(trainer.train_pipeline())
      for step, args in ((trainer.train_step, (batch, trainer.step_key())),
                         (trainer.eval_step, (batch,))):
        text = step.lower(trainer.abstract_state, *args).compile().as_text()
        self.assertEqual("__ynn_fusion" in text, ynnpack)
    with mock.patch.dict(os.environ, {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=x"}):
      self.assertEqual(steps.step_compiler_options(tiny_config()), {})  # the user's choice


class GuardsTest(parameterized.TestCase):

  def test_unknown_model(self):
    with self.assertRaisesRegex(ValueError, "model.name.*'unet3d'"):
      checks.check_setup(tiny_config(**{"model.name": "unet3d"}), tiny_dataset(), 1)

  def test_classifier_needs_one_class_per_example(self):
    config = tiny_config()
    with config.unlocked():
      config.model.name = "resnet18"
    with self.assertRaisesRegex(errors.ConfigError,
                                "'resnet18' is a classifier.*data.labels='majority'.*'pixels'"):
      checks.check_setup(config, tiny_dataset(), 1)

  def test_num_classes_must_match_dataset(self):
    with self.assertRaisesRegex(ValueError, "model.num_classes=5.*6 classes"):
      checks.check_setup(tiny_config(**{"model.num_classes": 5}), tiny_dataset(), 1)

  def test_palette_must_match_class_names(self):
    dataset = tiny_dataset()
    broken = data_lib.Dataset(**{**dataset.__dict__, "class_names": dataset.class_names[:5]})
    with self.assertRaisesRegex(ValueError, "5 class names but 6 palette colours"):
      checks.check_setup(tiny_config(), broken, 1)

  def test_image_smaller_than_model_minimum(self):
    dataset = tiny_dataset()
    small = data_lib.Dataset(**{**dataset.__dict__, "image_size": (16, 24)})
    with self.assertRaisesRegex(ValueError, r"\(16, 24\).*at least 32x32"):
      checks.check_setup(tiny_config(), small, 1)

  @parameterized.parameters("train.global_batch_size", "eval.global_batch_size")
  def test_batch_not_divisible_by_devices(self, field):
    config = tiny_config(**{"train.global_batch_size": 4, "eval.global_batch_size": 4,
                            field: 6})
    with self.assertRaisesRegex(ValueError, f"{field}=6 .* device count 4"):
      checks.check_setup(config, tiny_dataset(), 4)

  def test_unknown_dataset(self):
    with self.assertRaisesRegex(ValueError, "data.name.*'cityscapes'"):
      steps.Trainer(tiny_config(**{"data.name": "cityscapes"}))

  def test_bad_dtype(self):
    with self.assertRaisesRegex(ValueError, "dtype.*'float8'"):
      checks.check_setup(tiny_config(**{"model.dtype": "float8"}), tiny_dataset(), 1)

  @parameterized.parameters("train", "eval")
  def test_empty_eval_split_is_refused_before_compiling(self, mode):
    dataset = tiny_dataset()
    empty = data_lib.ArraySource(np.zeros((0, 32, 32, 3), np.uint8),
                                 np.zeros((0, 32, 32), np.uint8))
    no_val = data_lib.Dataset(**{**dataset.__dict__, "val": empty})
    with mock.patch.object(jax, "jit") as jit:
      with self.assertRaisesRegex(errors.DataError, "the 'val' split .* is empty"):
        steps.Trainer(tiny_config(**{"train.mode": mode}), no_val)
      jit.assert_not_called()
    checks.check_setup(tiny_config(**{"train.mode": "eval", "eval.split": "test"}), no_val, 1)

  def test_smoke_test_length_runs_on_the_default_config(self):
    config = default_config.get_config()
    config.train.num_steps = 10
    config.data.num_train, config.data.num_val, config.data.num_test = 64, 8, 8  # start fast
    config.lock()
    with self.assertLogs(level="WARNING") as logs:
      trainer = steps.Trainer(config)
    self.assertTrue(any("warming up over 5 updates" in line for line in logs.output))
    self.assertAlmostEqual(float(trainer.schedule(5)), config.optim.learning_rate, places=7)

  def test_the_start_says_what_data_it_reads(self):
    with self.assertLogs(level="INFO") as logs:
      steps.Trainer(tiny_config())
    log = "\n".join(logs.output)
    self.assertIn("reading data synthetic_aerial ...", log)
    self.assertIn("data synthetic_aerial: 8 train / 3 val / 2 test examples of 32x32", log)

  def test_excluded_classes_must_be_some_of_the_datasets(self):
    names = tiny_dataset().class_names
    for exclude, message in ((("clouds",), r"\['clouds'\] is not one"), (names, "not all")):
      with mock.patch.object(jax, "jit") as jit, self.assertRaisesRegex(
          errors.ConfigError, rf"eval.exclude_classes=.*must name some .*{message}"):
        steps.Trainer(tiny_config(**{"eval.exclude_classes": exclude}), tiny_dataset())
      jit.assert_not_called()

  def test_guards_run_before_compiling(self):
    with mock.patch.object(jax, "jit") as jit:
      with self.assertRaises(ValueError):
        steps.Trainer(tiny_config(**{"model.num_classes": 3}), tiny_dataset())
      jit.assert_not_called()

  def test_class_weights(self):
    dataset = tiny_dataset()
    counts = data_lib.class_pixel_counts(dataset.train, 6)
    labels = np.stack([dataset.train[i]["label"] for i in range(len(dataset.train))])
    np.testing.assert_array_equal(counts, [(labels == c).sum() for c in range(6)])
    config = tiny_config(**{"loss.class_weighting": "given"})
    with self.assertRaisesRegex(ValueError, "class_weights has 1 entries"):
      steps.class_weights(config.loss, dataset, 6)
    config = tiny_config(**{"loss.class_weighting": "sqrt"})
    with self.assertRaisesRegex(ValueError, "class_weighting"):
      steps.class_weights(config.loss, dataset, 6)
    for mode in ("median", "inverse"):
      weights = steps.class_weights(tiny_config(**{"loss.class_weighting": mode}).loss,
                                    dataset, 6)
      np.testing.assert_allclose(
          weights, losses.class_weights_from_counts([(labels == c).sum() for c in range(6)],
                                                    mode), rtol=1e-6)


class FreezeTest(parameterized.TestCase):
  """optim.backbone_modules checks; a frozen backbone in training: tests/test_init_from.py."""

  @parameterized.parameters(
      (("encoder",), "'encoder'"),
      (("backbone", "neck"), "'neck'"),  # unet has no neck
  )
  def test_backbone_modules_not_in_the_model_fail_before_compiling(self, names, unknown):
    config = tiny_config("unet", **{"optim.backbone": "freeze",
                                    "optim.backbone_modules": names})
    with mock.patch.object(jax, "jit") as jit:
      with self.assertRaisesRegex(errors.ConfigError, rf"backbone_modules.*{unknown}.*"
                                  r"\['backbone', 'decoder', 'head'\]"):
        steps.Trainer(config, tiny_dataset())
      jit.assert_not_called()


def _event_tags(workdir):
  """Tags of every value in the workdir's TensorBoard event files."""
  return {v.tag for path in glob.glob(os.path.join(workdir, writers.EVENT_FILES))
          for event in writers.read_events(path) for v in event.summary.value}


def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _nan_config(**overrides):
  """A config whose SGD step at learning rate 1e30 makes the loss non-finite at step 2."""
  return tiny_config(**{"optim.name": "sgd", "optim.learning_rate": 1e30,
                        "optim.schedule": "constant", "optim.warmup_steps": 0,
                        "optim.momentum": 0.0, "optim.grad_clip_norm": 0.0, **overrides})


class ClassifierTest(absltest.TestCase):

  def test_trains_and_scores_its_classification_accuracy(self):
    config = tiny_config(**{
        "model.name": "simple_cnn",
        "model.kwargs": ml_collections.ConfigDict({"widths": (4, 8)}),
        "data.labels": "majority", "data.min_purity": 0.3, "data.num_val": 8,
        "train.num_steps": 2})
    dataset = data_lib.get_dataset(config.data)
    self.assertGreater(len(dataset.val), 3)
    workdir = tempfile.mkdtemp()
    final = train.train_and_evaluate(config, workdir, dataset).final
    self.assertEqual(final["step"], config.train.num_steps)

    # The last step's state, run as the bare classifier on the val images.
    checkpointer = workdir_lib.RunDir(workdir).checkpointer(read_only=True)
    state, step = checkpointer.restore_state(
        state_lib.abstract_state(config, 6, dataset.image_size), "latest")
    checkpointer.close()
    self.assertEqual(step, config.train.num_steps)
    classifier = models.create("simple_cnn", num_classes=6, widths=(4, 8))
    images = (dataset.val.images - dataset.mean) / dataset.std
    logits = classifier.apply({"params": state.params, "batch_stats": state.batch_stats},
                              images, train=False)
    preds, labels = np.argmax(logits, axis=-1), dataset.val.labels[:, 0, 0]
    self.assertAlmostEqual(final["pixel_accuracy"], np.mean(preds == labels), places=6)
    for k, name in enumerate(dataset.class_names):  # recall per class, NaN for an absent one
      if (labels == k).any():
        self.assertAlmostEqual(final["accuracy"][name], np.mean(preds[labels == k] == k),
                               places=6, msg=name)
      else:
        self.assertTrue(np.isnan(final["accuracy"][name]), name)


class LoopTest(absltest.TestCase):

  @pytest.mark.slow  # trains, resumes, is preempted and evaluates, in process and as commands
  def test_outputs_resume_sigterm_and_eval_mode(self):
    dataset = tiny_dataset()
    config = tiny_config()
    straight = tempfile.mkdtemp()
    with self.assertLogs(level="INFO") as logs:
      final = train.train_and_evaluate(config, straight, dataset).final
    records = self.check_outputs(straight, dataset, final)
    self.check_progress_log("\n".join(logs.output), straight)
    again = train.train_and_evaluate(config, straight, dataset).final  # finished: nothing retrained
    self.assertEqual(again["miou"], final["miou"])
    self.assertLen(_read_jsonl(os.path.join(straight, "metrics.jsonl")), 2)
    self.check_sigterm_resume(config, dataset, final)
    self.check_eval_only(straight, records)

    # A rerun with another learning rate is refused, and config.json stays as it was.
    before = snapshot(straight)
    with self.assertRaisesRegex(
        errors.WorkdirError, r"another config .*optim.learning_rate: 0.003 -> 0.01"):
      train.train_and_evaluate(tiny_config(**{"optim.learning_rate": 0.01}), straight, dataset)
    self.assertEqual(snapshot(straight), before)

  def check_outputs(self, straight, dataset, final):
    """The files of a finished run; returns its metrics.jsonl records."""
    for name in ("config.json", "metrics.jsonl", "final_metrics.json", "confusion_matrix.png",
                 "curves.png", "predictions/step_2.png", "predictions/step_4.png"):
      self.assertTrue(os.path.exists(os.path.join(straight, name)), name)
    self.assertEqual(sorted(os.listdir(os.path.join(straight, "predictions"))),
                     ["step_2.png", "step_4.png"])
    self.assertContainsSubset(
        {"train/loss", "train/lr", "train/grad_norm", "val/miou", "val/iou/water",
         "val/prediction_0", "val/prediction_1"}, _event_tags(straight))
    records = _read_jsonl(os.path.join(straight, "metrics.jsonl"))
    self.assertEqual([r["step"] for r in records], [2, 4])
    self.assertEqual(sorted(records[0]["iou"]), sorted(dataset.class_names))
    self.assertEqual(final["miou"], records[-1]["miou"])
    return records

  def check_progress_log(self, log, straight):
    """The start says what it does while it compiles; the end lists what was written."""
    self.assertIn("data synthetic_aerial: 8 train / 3 val / 2 test examples of 32x32", log)
    self.assertIn("compiling the train step (persistent compilation cache: ", log)
    self.assertRegex(log, r"train step ready in [\d.]+s \(cached: (yes|no)")
    listing = log[log.index(f"{straight} holds:"):]
    for name in ("config.json", "dataset.json", "metrics.jsonl", "events.out.tfevents",
                 "predictions/", "checkpoints/", "curves.png", "confusion_matrix.png",
                 "final_metrics.json"):
      self.assertIn(f"\n  {name}", listing)

  def check_sigterm_resume(self, config, dataset, final):
    """A SIGTERM during step 3's input fetch: the loop finishes step 3, saves, and returns."""
    interrupted = tempfile.mkdtemp()
    make_pipeline = steps.Trainer.train_pipeline

    def pipeline_with_sigterm(trainer, seed=None):
      inner = make_pipeline(trainer, seed)
      real_next = type(inner).__next__

      class Wrapped(type(inner)):

        def __next__(self):
          batch = real_next(self)
          if self._calls == 2:
            os.kill(os.getpid(), signal.SIGTERM)
          self._calls += 1
          return batch

      inner.__class__ = Wrapped
      inner._calls = 0
      return inner

    with mock.patch.object(steps.Trainer, "train_pipeline", pipeline_with_sigterm):
      out = train.train_and_evaluate(config, interrupted, dataset)
    self.assertEqual((out.preempted, out.step, out.finals), (True, 3, []))
    self.assertFalse(os.path.exists(os.path.join(interrupted, "final_metrics.json")))
    self.assertTrue(os.path.isdir(os.path.join(interrupted, "checkpoints", "3")))

    resumed = train.train_and_evaluate(config, interrupted, dataset).final
    self.assertEqual(resumed, final)

  def check_eval_only(self, straight, records):
    """Eval-only reads the run folder only (it may be read-only) and writes elsewhere."""
    before = snapshot(straight)
    output_dir = os.path.join(tempfile.mkdtemp(), "eval")
    record = train.run(tiny_config(**{"train.mode": "eval", "eval.output_dir": output_dir}),
                       straight).final
    self.assertEqual(snapshot(straight), before)
    best = max(records, key=lambda r: r["miou"])
    self.assertEqual(record["step"], best["step"])
    self.assertAlmostEqual(record["miou"], best["miou"], places=6)
    for name in ("eval_val.json", "eval_val_table.txt", "confusion_matrix_val.png"):
      self.assertTrue(os.path.exists(os.path.join(output_dir, name)), name)
    with self.assertLogs(level="INFO") as logs:
      test_record = train.run(tiny_config(**{"train.mode": "eval", "eval.split": "test",
                                             "eval.checkpoint": "latest"}), straight).final
    self.assertEqual((test_record["split"], test_record["step"]), ("test", 4))
    # The latest checkpoint's scores are named apart from the best one's (eval_test.json).
    self.assertTrue(os.path.exists(os.path.join(straight, "eval_test_latest.json")))
    self.assertTrue(any(f"wrote the scores to {straight}/eval_test_latest.json" in line
                        for line in logs.output), logs.output)
    train_record = train.run(tiny_config(**{"train.mode": "eval", "eval.split": "train",
                                            "eval.checkpoint": "latest"}), straight).final
    self.assertEqual((train_record["split"], train_record["step"]), ("train", 4))
    self.assertNotEqual(train_record["miou"], test_record["miou"])
    self.assertTrue(os.path.exists(os.path.join(straight, "eval_train_latest.json")))

  def test_larger_num_steps_extends_a_finished_run(self):
    constant = {"optim.schedule": "constant"}  # the same schedule whatever num_steps is
    straight = train.train_and_evaluate(tiny_config(**constant), tempfile.mkdtemp(),
                                        tiny_dataset()).final
    workdir = tempfile.mkdtemp()
    train.train_and_evaluate(tiny_config(**constant, **{"train.num_steps": 2}), workdir,
                             tiny_dataset())
    with self.assertLogs(level="WARNING") as logs:
      extended = train.train_and_evaluate(tiny_config(**constant), workdir,
                                          tiny_dataset()).final
    self.assertEqual(extended, straight)
    # The schedule keeps the first launch's length, and the log says what that means.
    self.assertEqual(workdir_lib.RunDir(workdir).load_config().optim.schedule_steps, 2)
    self.assertTrue(any("goes past the learning-rate schedule of 2 steps" in line
                        and "steps 3-4 run at its final rate 3.00e-03" in line
                        for line in logs.output), logs.output)
    self.assertEqual([r["step"] for r in _read_jsonl(os.path.join(workdir, "metrics.jsonl"))],
                     [2, 4])
    self.assertEqual(workdir_lib.RunDir(workdir).load_config().train.num_steps, 4)
    with self.assertRaisesRegex(errors.WorkdirError, "trained to step 4, past "
                                "train.num_steps=2; pass --config.train.num_steps=4 or more"):
      train.train_and_evaluate(tiny_config(**constant, **{"train.num_steps": 2}), workdir,
                               tiny_dataset())

  def test_resume_skips_a_corrupt_latest_checkpoint(self):
    dataset = tiny_dataset()
    config = tiny_config()
    workdir = tempfile.mkdtemp()
    final = train.train_and_evaluate(config, workdir, dataset).final
    arrays = [p for p in glob.glob(os.path.join(workdir, "checkpoints", "4", "state", "**", "d",
                                                "*"), recursive=True)]
    largest = max(arrays, key=os.path.getsize)
    with open(largest, "r+b") as f:
      f.truncate(os.path.getsize(largest) // 2)
    os.remove(os.path.join(workdir, "final_metrics.json"))
    with self.assertLogs(level="WARNING") as logs:
      resumed = train.train_and_evaluate(config, workdir, dataset).final
    self.assertTrue(any("checkpoint 4" in line and "unreadable" in line for line in logs.output))
    self.assertEqual(resumed, final)
    self.assertEqual([r["step"] for r in _read_jsonl(os.path.join(workdir, "metrics.jsonl"))],
                     [2, 4])
    self.assertTrue(os.path.isdir(os.path.join(workdir, "checkpoints_unreadable", "4")))
    self.assertEqual(sorted(os.listdir(os.path.join(workdir, "checkpoints"))), ["2", "4"])

  def test_non_finite_loss_stops_two_steps_later_and_keeps_last_good_checkpoint(self):
    workdir = tempfile.mkdtemp()
    with self.assertRaisesRegex(
        errors.NonFiniteLossError, r"stopped at step 2: .* at step 2 is not finite; the last "
        r"checkpoint is step 1 .*enable optim.grad_clip_norm"):  # a save checks all before it
      train.train_and_evaluate(_nan_config(**{"train.checkpoint_every": 1}), workdir,
                               tiny_dataset())
    self.assertEqual(sorted(os.listdir(os.path.join(workdir, "checkpoints"))), ["1"])
    # Between logs and saves the check runs two steps behind, without waiting on the device.
    config = _nan_config(**{"train.num_steps": 40, "train.log_every": 40,
                            "train.eval_every": 40, "train.checkpoint_every": 40})
    with self.assertRaisesRegex(errors.NonFiniteLossError,
                                r"stopped at step 4: .* at step 2 is not finite; no checkpoint"):
      train.train_and_evaluate(config, tempfile.mkdtemp(), tiny_dataset())

  def test_non_finite_advice_fits_the_clipping_setting(self):
    values = {"loss": np.array([float("nan")]), "grad_norm": np.array([float("inf")])}
    for clip, expected, unexpected in ((1.0, "optim.grad_clip_norm (now 1)", "enable"),
                                       (0.0, "enable optim.grad_clip_norm", "now 0")):
      describe = watchdog.non_finite_message(_nan_config(**{"optim.grad_clip_norm": clip}),
                                           ["/runs/x"], lambda: 7)
      message = describe(9, 7, values)
      self.assertIn("stopped at step 9: loss nan / gradient norm inf at step 7", message)
      self.assertIn("the last checkpoint is step 7 in /runs/x", message)
      self.assertIn(expected, message)
      self.assertNotIn(unexpected, message)

  def test_eval_mode_without_checkpoint(self):
    workdir = tempfile.mkdtemp()
    with self.assertRaisesRegex(errors.WorkdirError, "no 'best' checkpoint"):
      train.run(tiny_config(**{"train.mode": "eval"}), workdir)
    self.assertEqual(os.listdir(workdir), [])

  def test_unknown_mode(self):
    with self.assertRaisesRegex(errors.ConfigError, "train.mode"):
      train.run(tiny_config(**{"train.mode": "predict"}), tempfile.mkdtemp())

  def test_eval_loss_is_the_loss_of_the_whole_split(self):
    weights = (0.5, 1.0, 2.0, 3.0, 1.5, 0.25)
    trainer = steps.Trainer(tiny_config(**{"loss.class_weighting": "given",
                                           "loss.class_weights": weights,
                                           "loss.dice_weight": 0.5}), tiny_dataset())
    state = trainer.initial_state()
    result, _, _ = trainer.evaluate(state)  # 3 images in batches of 2: the last one padded
    val = trainer.dataset.val
    images = np.stack([val[i]["image"] for i in range(len(val))]).astype(np.float32)
    labels = np.stack([val[i]["label"] for i in range(len(val))]).astype(np.int64)
    normalised = (images - trainer.dataset.mean) / trainer.dataset.std
    logits = np.asarray(state.apply_fn({"params": state.params,
                                        "batch_stats": state.batch_stats},
                                       jnp.asarray(normalised), train=False), np.float64)
    mask = labels < 6
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    lab = np.where(mask, labels, 0)
    nll = -np.take_along_axis(logp, lab[..., None], -1)[..., 0]
    w = np.asarray(weights)[lab] * mask
    ce = (w * nll).sum() / w.sum()
    probs = np.exp(logp)[mask]
    onehot = np.eye(6)[lab[mask]]
    tp = (probs * onehot).sum(0)
    fp = probs.sum(0) - tp
    fn = onehot.sum(0) - tp
    present = onehot.sum(0) > 0
    dice = 1 - np.mean((2 * tp / (2 * tp + fp + fn))[present])
    np.testing.assert_allclose(result["loss"], ce + 0.5 * dice, rtol=2e-5)


_FOUR_DEVICE_SCRIPT = """
import json, sys
import jax
from tests import train_testing
from seg_jax import steps
dataset = train_testing.tiny_dataset()
config = train_testing.tiny_config(**{"train.global_batch_size": 4, "eval.global_batch_size": 4})
losses = {}
for n in (1, 4):
  trainer = steps.Trainer(config, dataset, devices=jax.devices()[:n])
  state = trainer.initial_state()
  pipeline = trainer.train_pipeline()
  out = []
  for _ in range(2):
    state, m = trainer.train_step(state, next(pipeline), jax.random.key(0))
    out.append(float(m["loss"]))
  losses[n] = out
print("LOSSES" + json.dumps(losses))
"""


class ShardingTest(absltest.TestCase):

  def test_four_devices_match_one_device(self):
    env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "") +
               " --xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    script = _FOUR_DEVICE_SCRIPT
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    line = [l for l in proc.stdout.splitlines() if l.startswith("LOSSES")][0]
    losses = json.loads(line[len("LOSSES"):])
    self.assertTrue(np.all(np.isfinite(losses["1"])))
    np.testing.assert_allclose(losses["4"], losses["1"], rtol=2e-5)


class VizWritersTest(absltest.TestCase):

  def test_prediction_panel(self):
    palette = np.array([[10, 20, 30], [40, 50, 60]], np.uint8)
    labels = np.array([[0, 1], [255, 1]])
    panel = viz.prediction_panel(np.full((2, 2, 3), 300.0), labels, labels, palette)
    self.assertEqual(panel.shape, (2, 6, 3))
    self.assertEqual(panel[0, 0, 0], 255)
    np.testing.assert_array_equal(panel[:, 4:], [[[10, 20, 30], [40, 50, 60]],
                                                 [[0, 0, 0], [40, 50, 60]]])

  def test_discard_after_drops_later_steps_and_cut_records(self):
    workdir = tempfile.mkdtemp()
    writer = workdir_lib.RunDir(workdir).metric_writer()
    for step in (1, 2, 3, 4):
      writer.scalars(step, {"train/loss": step / 10})
      writer.jsonl({"step": step, "split": "val"})
    writer.images(2, {"val/prediction_0": np.zeros((2, 3, 3), np.uint8)})
    writer.close()
    [events_file] = glob.glob(os.path.join(workdir, writers.EVENT_FILES))
    with open(events_file, "ab") as f:
      f.write(b"\x20\x00\x00")  # a record cut short by a kill
    with open(os.path.join(workdir, workdir_lib.METRICS_FILE), "a") as f:
      f.write('{"step": 5, "spl')
    for step in (2, 3, 10):
      os.makedirs(os.path.join(workdir, workdir_lib.PREDICTIONS_DIR), exist_ok=True)
      writers.write_png(workdir_lib.RunDir(workdir).prediction_grid(step), np.zeros((2, 2, 3), np.uint8))
    with open(workdir_lib.RunDir(workdir).prediction_grid(4) + ".tmp", "wb") as f:
      f.write(b"\x89PN")  # a picture cut short by a kill
    workdir_lib.RunDir(workdir).discard_after(2)
    self.assertEqual(os.listdir(os.path.join(workdir, workdir_lib.PREDICTIONS_DIR)), ["step_2.png"])
    np.testing.assert_allclose(workdir_lib.RunDir(workdir).scalars("train/loss"), [(1, 0.1), (2, 0.2)])
    self.assertEqual([r["step"] for r in _read_jsonl(os.path.join(workdir, "metrics.jsonl"))],
                     [1, 2])
    values = [(v.tag, e.step) for e in writers.read_events(events_file) for v in e.summary.value]
    self.assertEqual(values, [("train/loss", 1), ("train/loss", 2), ("val/prediction_0", 2)])
    self.assertEqual(os.path.getsize(events_file),
                     sum(16 + e.ByteSize() for e in writers.read_events(events_file)))

  def test_pngs_and_json(self):
    workdir = tempfile.mkdtemp()
    viz.save_confusion_matrix(np.array([[3, 1], [0, 0]]), ["a", "b"],
                              os.path.join(workdir, "cm.png"))
    viz.save_curves({"run": [{"step": 1, "miou": 0.1, "loss": None},
                             {"step": 2, "miou": 0.2, "loss": 1.0}]},
                    os.path.join(workdir, "curves.png"))
    for name in ("cm.png", "curves.png"):
      with open(os.path.join(workdir, name), "rb") as f:
        self.assertEqual(f.read(4), b"\x89PNG")
    writers.write_json(os.path.join(workdir, "x.json"),
                       {"a": np.float32(np.nan), "b": np.arange(2), "c": np.int64(3)})
    with open(os.path.join(workdir, "x.json")) as f:
      self.assertEqual(json.load(f), {"a": None, "b": [0, 1], "c": 3})


def _optim_config(**overrides):
  config = default_config.get_config().optim
  config.update(overrides)
  return config


class OptimTest(parameterized.TestCase):

  def test_warmup_cosine(self):
    schedule = optim.create_schedule(
        _optim_config(learning_rate=1.0, warmup_steps=10, end_lr_factor=0.0), 110)
    np.testing.assert_allclose([schedule(0), schedule(5), schedule(10), schedule(60),
                                schedule(110)], [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)

  def test_poly_and_constant(self):
    poly = optim.create_schedule(_optim_config(
        schedule="poly", learning_rate=1.0, warmup_steps=0, end_lr_factor=0.0,
        poly_power=0.9), 100)
    np.testing.assert_allclose(poly(50), 0.5 ** 0.9, rtol=1e-6)
    constant = optim.create_schedule(_optim_config(schedule="constant", warmup_steps=0), 100)
    self.assertAlmostEqual(float(constant(77)), 3e-3)
    accumulated = optim.create_schedule(_optim_config(
        learning_rate=1.0, warmup_steps=0, end_lr_factor=0.0, accumulation_steps=4), 400)
    self.assertAlmostEqual(float(accumulated(50)), 0.5, places=6)

  def test_schedule_steps_sets_the_schedule_length(self):
    # A 100-step run extended to 140: the last 40 steps at the final learning rate.
    config = _optim_config(learning_rate=1.0, warmup_steps=0, end_lr_factor=0.1,
                           schedule_steps=100)
    schedule = optim.create_schedule(config, 140)
    np.testing.assert_allclose([schedule(50), schedule(100), schedule(120), schedule(139)],
                               [0.55, 0.1, 0.1, 0.1], atol=1e-6)
    with self.assertRaisesRegex(ValueError, "schedule_steps must be >= 0"):
      optim.create_schedule(_optim_config(schedule_steps=-1), 100)

  def test_bad_schedule_and_warmup(self):
    with self.assertRaisesRegex(ValueError, "schedule"):
      optim.create_schedule(_optim_config(schedule="step"), 100)
    with self.assertRaisesRegex(ValueError, "warmup_steps must be >= 0"):
      optim.create_schedule(_optim_config(warmup_steps=-1), 100)

  def test_warmup_longer_than_the_run_is_shortened_to_half(self):
    config = _optim_config(learning_rate=1.0, warmup_steps=100, end_lr_factor=0.0)
    self.assertEqual(optim.warmup_updates(config, 10), 5)
    schedule = optim.create_schedule(config, 10)
    np.testing.assert_allclose([schedule(0), schedule(5), schedule(10)], [0.0, 1.0, 0.0],
                               atol=1e-6)

  def test_weight_decay_mask(self):
    params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.ones(4)},
              "norm": {"bn": {"scale": jnp.ones(4), "bias": jnp.ones(4)}}}
    self.assertEqual(optim.weight_decay_mask(params),
                     {"conv": {"kernel": True, "bias": False},
                      "norm": {"bn": {"scale": False, "bias": False}}})

  @parameterized.parameters(*optim.OPTIMIZERS)
  def test_every_optimizer_decays_kernels_only(self, name):
    params = {"encoder": {"kernel": jnp.ones((2, 2))}, "head": {"kernel": jnp.ones((2, 2)),
                                                                "bias": jnp.ones(2)}}
    tx = optim.create_optimizer(_optim_config(
        name=name, weight_decay=0.5, warmup_steps=0, schedule="constant", learning_rate=0.1),
                                10, params)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    self.assertLess(float(updates["head"]["kernel"][0, 0]), 0.0)
    self.assertEqual(float(updates["head"]["bias"][0]), 0.0)

  def test_backbone_freeze_and_scale(self):
    params = {"backbone": {"kernel": jnp.ones((2, 2))}, "head": {"kernel": jnp.ones((2, 2))}}
    grads = jax.tree.map(jnp.ones_like, params)
    base = dict(name="sgd", momentum=0.0, weight_decay=0.0, warmup_steps=0,
                schedule="constant", learning_rate=1.0, grad_clip_norm=0.0)
    tx = optim.create_optimizer(_optim_config(backbone="freeze", **base), 10, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    self.assertEqual(float(updates["backbone"]["kernel"][0, 0]), 0.0)
    self.assertEqual(float(updates["head"]["kernel"][0, 0]), -1.0)
    tx = optim.create_optimizer(
        _optim_config(backbone="scale", backbone_lr_factor=0.1, **base), 10, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    self.assertAlmostEqual(float(updates["backbone"]["kernel"][0, 0]), -0.1, places=6)

  @parameterized.parameters("freeze", "scale")
  def test_backbone_modules_must_be_top_level_modules(self, mode):
    params = {"backbone": {"encoder": {"kernel": jnp.ones((2, 2))}},
              "head": {"kernel": jnp.ones((2, 2))}}
    for names in (("encoder",), ("backbone", "neck"), ()):
      with self.assertRaisesRegex(ValueError, r"optim.backbone_modules=.*must name top-level "
                                  r"modules.*\['backbone', 'head'\]"):
        optim.create_optimizer(_optim_config(backbone=mode, backbone_modules=names), 10, params)
    # Unused when the backbone trains like the rest.
    optim.create_optimizer(_optim_config(backbone_modules=("encoder",)), 10, params)

  def test_frozen_gradients_do_not_count_in_clipping(self):
    params = {"backbone": {"kernel": jnp.zeros((2, 2))}, "head": {"kernel": jnp.zeros((2,))}}
    grads = {"backbone": {"kernel": jnp.full((2, 2), 100.0)}, "head": {"kernel": jnp.full(2, 0.3)}}
    tx = optim.create_optimizer(_optim_config(
        backbone="freeze", name="sgd", momentum=0.0, weight_decay=0.0, warmup_steps=0,
        schedule="constant", learning_rate=1.0, grad_clip_norm=1.0), 10, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["head"]["kernel"], [-0.3, -0.3], rtol=1e-6)
    np.testing.assert_array_equal(updates["backbone"]["kernel"], 0.0)

  def test_clipping_and_accumulation(self):
    params = {"w": jnp.zeros((2, 2))}
    base = dict(name="sgd", momentum=0.0, weight_decay=0.0, warmup_steps=0,
                schedule="constant", learning_rate=1.0)
    tx = optim.create_optimizer(_optim_config(grad_clip_norm=1.0, **base), 10, params)
    updates, _ = tx.update({"w": jnp.full((2, 2), 10.0)}, tx.init(params), params)
    self.assertAlmostEqual(float(optax.tree.norm(updates)), 1.0, places=5)
    tx = optim.create_optimizer(
        _optim_config(grad_clip_norm=0.0, accumulation_steps=2, **base), 10, params)
    opt_state = tx.init(params)
    first, opt_state = tx.update({"w": jnp.full((2, 2), 1.0)}, opt_state, params)
    second, _ = tx.update({"w": jnp.full((2, 2), 3.0)}, opt_state, params)
    np.testing.assert_allclose(first["w"], 0.0)
    np.testing.assert_allclose(second["w"], -2.0)


if __name__ == "__main__":
  absltest.main()
