"""Tests of seg_jax.train, seg_jax.optim and the run outputs, on tiny models and images."""

import glob
import json
import os
import signal
import struct
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
from tensorboardX.proto import event_pb2

from seg_jax import data as data_lib
from seg_jax import losses
from seg_jax import models
from seg_jax import optim
from seg_jax import train
from seg_jax import viz
from seg_jax import writers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import default as default_config  # pylint: disable=g-import-not-at-top,wrong-import-position

# Smallest widths of each registered segmentation model; every registered one must be listed.
_TINY_RESNET = {"width": 2, "stage_sizes": (1, 1, 1, 1)}
_TINY_VGG = dict(backbone_kwargs={"widths": (2, 2, 2, 2, 2)}, neck_kwargs={"features": 8})
TINY_KWARGS = {
    "unet": dict(backbone_kwargs={"widths": (4, 8, 16)}),
    "asym_unet": dict(backbone_kwargs={"widths": (4, 8, 8), "blocks": 1, "se_reduction": 2},
                      neck_kwargs={"features": 8}, decoder_kwargs={"widths": (8, 4)}),
    "deeplabv3": dict(backbone_kwargs=_TINY_RESNET, neck_kwargs={"features": 8}),
    "deeplabv3plus": dict(backbone_kwargs=_TINY_RESNET, neck_kwargs={"features": 8},
                          decoder_kwargs={"low_level_features": 4, "features": 8}),
    "deeplabv3plus_xception": dict(
        backbone_kwargs={"width_divisor": 32, "middle_repeats": 1}, neck_kwargs={"features": 8},
        decoder_kwargs={"low_level_features": 4, "features": 8}),
    "deeplabv3_resnet50": dict(backbone_kwargs=_TINY_RESNET, neck_kwargs={"features": 8},
                               head_kwargs={"features": 8}),
    "fcn32s": _TINY_VGG,
    "fcn16s": _TINY_VGG,
    "fcn8s": _TINY_VGG,
    "fcn_resnet50": dict(backbone_kwargs=_TINY_RESNET, head_kwargs={"features": 8}),
}

_DATASET = None


def setUpModule():
  # Each Trainer jits fresh closures; the persistent cache lets identical steps skip XLA.
  jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp())
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def tiny_dataset() -> data_lib.Dataset:
  """8 train / 3 val / 2 test synthetic scenes of 32x32 (built once per test process)."""
  global _DATASET
  if _DATASET is None:
    _DATASET = data_lib.get_dataset(tiny_config().data)
  return _DATASET


def tiny_config(model: str = "asym_unet", **overrides) -> ml_collections.ConfigDict:
  """The default config shrunk to 32x32 images, batch 2 and a few steps."""
  config = default_config.get_config()
  config.model.name = model
  config.model.kwargs = ml_collections.ConfigDict(TINY_KWARGS[model])
  config.data.image_size = (32, 32)
  config.data.num_train, config.data.num_val, config.data.num_test = 8, 3, 2
  config.train.num_steps = 4
  config.train.global_batch_size = 2
  config.train.log_every = 1
  config.train.eval_every = 2
  config.train.checkpoint_every = 2
  config.eval.global_batch_size = 2
  config.eval.num_images = 2
  config.optim.warmup_steps = 0
  for key, value in overrides.items():
    group, field = key.split(".")
    config[group][field] = value
  config.lock()
  return config


class ModelsTrainTest(parameterized.TestCase):

  def test_every_segmentation_model_is_listed(self):
    self.assertEqual(sorted(TINY_KWARGS),
                     sorted(n for n in models.available() if models.is_segmentation(n)))

  # unet runs with bfloat16 compute to cover that option without another compilation.
  @parameterized.parameters(*[(n, "bfloat16" if n == "unet" else "float32")
                              for n in sorted(TINY_KWARGS)])
  def test_one_train_step_and_evaluation(self, name, dtype):
    dataset = tiny_dataset()
    trainer = train.Trainer(tiny_config(name, **{"model.dtype": dtype}), dataset)
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
    result, cm, panels = trainer.evaluate(state)
    labels = np.stack([dataset.val[i]["label"] for i in range(len(dataset.val))])
    self.assertEqual(int(cm.sum()), int((labels != dataset.ignore_index).sum()))
    self.assertBetween(result["miou"], 0.0, 1.0)
    self.assertLen(panels, 2)
    self.assertEqual(panels[0].shape, (32, 96, 3))



class GuardsTest(parameterized.TestCase):

  def test_unknown_model(self):
    with self.assertRaisesRegex(ValueError, "model.name.*'unet3d'"):
      train.check_setup(tiny_config(**{"model.name": "unet3d"}), tiny_dataset(), 1)

  def test_classifier_is_not_segmentation(self):
    config = tiny_config()
    with config.unlocked():
      config.model.name = "resnet18"
    with self.assertRaisesRegex(ValueError, "classifier"):
      train.check_setup(config, tiny_dataset(), 1)

  def test_num_classes_must_match_dataset(self):
    with self.assertRaisesRegex(ValueError, "model.num_classes=5.*6 classes"):
      train.check_setup(tiny_config(**{"model.num_classes": 5}), tiny_dataset(), 1)

  def test_palette_must_match_class_names(self):
    dataset = tiny_dataset()
    broken = data_lib.Dataset(**{**dataset.__dict__, "class_names": dataset.class_names[:5]})
    with self.assertRaisesRegex(ValueError, "5 class names but 6 palette colours"):
      train.check_setup(tiny_config(), broken, 1)

  def test_image_smaller_than_model_minimum(self):
    dataset = tiny_dataset()
    small = data_lib.Dataset(**{**dataset.__dict__, "image_size": (16, 24)})
    with self.assertRaisesRegex(ValueError, r"\(16, 24\).*at least 32x32"):
      train.check_setup(tiny_config(), small, 1)

  @parameterized.parameters("train.global_batch_size", "eval.global_batch_size")
  def test_batch_not_divisible_by_devices(self, field):
    config = tiny_config(**{"train.global_batch_size": 4, "eval.global_batch_size": 4,
                            field: 6})
    with self.assertRaisesRegex(ValueError, f"{field}=6 .* device count 4"):
      train.check_setup(config, tiny_dataset(), 4)

  def test_unknown_dataset(self):
    with self.assertRaisesRegex(ValueError, "data.name.*'cityscapes'"):
      train.Trainer(tiny_config(**{"data.name": "cityscapes"}))

  def test_bad_dtype(self):
    with self.assertRaisesRegex(ValueError, "dtype.*'float8'"):
      train.check_setup(tiny_config(**{"model.dtype": "float8"}), tiny_dataset(), 1)

  def test_guards_run_before_compiling(self):
    with mock.patch.object(jax, "jit") as jit:
      with self.assertRaises(ValueError):
        train.Trainer(tiny_config(**{"model.num_classes": 3}), tiny_dataset())
      jit.assert_not_called()

  def test_class_weights(self):
    dataset = tiny_dataset()
    counts = train.class_pixel_counts(dataset.train, 6)
    labels = np.stack([dataset.train[i]["label"] for i in range(len(dataset.train))])
    np.testing.assert_array_equal(counts, [(labels == c).sum() for c in range(6)])
    config = tiny_config(**{"loss.class_weighting": "given"})
    with self.assertRaisesRegex(ValueError, "class_weights has 1 entries"):
      train.class_weights(config.loss, dataset, 6)
    config = tiny_config(**{"loss.class_weighting": "sqrt"})
    with self.assertRaisesRegex(ValueError, "class_weighting"):
      train.class_weights(config.loss, dataset, 6)
    for mode in ("median", "inverse"):
      weights = train.class_weights(tiny_config(**{"loss.class_weighting": mode}).loss,
                                    dataset, 6)
      np.testing.assert_allclose(
          weights, losses.class_weights_from_counts([(labels == c).sum() for c in range(6)],
                                                    mode), rtol=1e-6)


def _event_tags(workdir):
  """Tags of every value in the workdir's TensorBoard event files."""
  tags = set()
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    with open(path, "rb") as f:
      data = f.read()
    i = 0
    while i < len(data):  # TFRecord framing: length, length crc, payload, payload crc
      n = struct.unpack("<Q", data[i:i + 8])[0]
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      tags |= {v.tag for v in event.summary.value}
      i += 12 + n + 4
  return tags


def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


class LoopTest(absltest.TestCase):

  def test_outputs_resume_sigterm_and_eval_mode(self):
    dataset = tiny_dataset()
    config = tiny_config()
    straight = tempfile.mkdtemp()
    final = train.train_and_evaluate(config, straight, dataset)
    for name in ("config.json", "metrics.jsonl", "final_metrics.json", "confusion_matrix.png"):
      self.assertTrue(os.path.exists(os.path.join(straight, name)), name)
    self.assertContainsSubset(
        {"train/loss", "train/lr", "train/grad_norm", "val/miou", "val/iou/water",
         "val/prediction_0", "val/prediction_1"}, _event_tags(straight))
    records = _read_jsonl(os.path.join(straight, "metrics.jsonl"))
    self.assertEqual([r["step"] for r in records], [2, 4])
    self.assertEqual(sorted(records[0]["iou"]), sorted(dataset.class_names))
    self.assertEqual(final["miou"], records[-1]["miou"])
    again = train.train_and_evaluate(config, straight, dataset)  # finished: nothing retrained
    self.assertEqual(again["miou"], final["miou"])
    self.assertLen(_read_jsonl(os.path.join(straight, "metrics.jsonl")), 2)

    # A SIGTERM during step 3's input fetch: the loop finishes step 3, saves, and returns.
    interrupted = tempfile.mkdtemp()
    make_pipeline = train.Trainer.train_pipeline

    def pipeline_with_sigterm(trainer):
      inner = make_pipeline(trainer)
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

    with mock.patch.object(train.Trainer, "train_pipeline", pipeline_with_sigterm):
      out = train.train_and_evaluate(config, interrupted, dataset)
    self.assertEqual(out, {"preempted": True, "step": 3})
    self.assertFalse(os.path.exists(os.path.join(interrupted, "final_metrics.json")))
    self.assertTrue(os.path.isdir(os.path.join(interrupted, "checkpoints", "3")))

    resumed = train.train_and_evaluate(config, interrupted, dataset)
    self.assertEqual(resumed, final)

    eval_config = tiny_config(**{"train.mode": "eval"})
    record = train.run(eval_config, straight)
    best = max(records, key=lambda r: r["miou"])
    self.assertEqual(record["step"], best["step"])
    self.assertAlmostEqual(record["miou"], best["miou"], places=6)
    for name in ("eval_val.json", "eval_val_table.txt", "confusion_matrix_val.png"):
      self.assertTrue(os.path.exists(os.path.join(straight, name)), name)

  def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(self):
    config = tiny_config(**{"optim.name": "sgd", "optim.learning_rate": 1e30,
                            "optim.schedule": "constant", "optim.warmup_steps": 0,
                            "optim.grad_clip_norm": 0.0, "optim.momentum": 0.0,
                            "train.checkpoint_every": 1})
    workdir = tempfile.mkdtemp()
    with self.assertRaisesRegex(train.NonFiniteLossError,
                                r"at step 2 is not finite; last good checkpoint: step 1"):
      train.train_and_evaluate(config, workdir, tiny_dataset())
    self.assertEqual(sorted(os.listdir(os.path.join(workdir, "checkpoints"))), ["1"])

  def test_eval_mode_without_checkpoint(self):
    with self.assertRaisesRegex(ValueError, "no 'best' checkpoint"):
      train.run(tiny_config(**{"train.mode": "eval"}), tempfile.mkdtemp())

  def test_unknown_mode(self):
    with self.assertRaisesRegex(ValueError, "train.mode"):
      train.run(tiny_config(**{"train.mode": "predict"}), tempfile.mkdtemp())


_FOUR_DEVICE_SCRIPT = """
import json, sys
import jax
sys.path.insert(0, {tests!r})
import test_train
from seg_jax import train
dataset = test_train.tiny_dataset()
config = test_train.tiny_config(**{{"train.global_batch_size": 4, "eval.global_batch_size": 4}})
losses = {{}}
for n in (1, 4):
  trainer = train.Trainer(config, dataset, devices=jax.devices()[:n])
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
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    script = _FOUR_DEVICE_SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)))
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

  def test_bad_schedule_and_warmup(self):
    with self.assertRaisesRegex(ValueError, "schedule"):
      optim.create_schedule(_optim_config(schedule="step"), 100)
    with self.assertRaisesRegex(ValueError, "warmup_steps"):
      optim.create_schedule(_optim_config(warmup_steps=100), 100)

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
    params = {"encoder": {"kernel": jnp.ones((2, 2))}, "head": {"kernel": jnp.ones((2, 2))}}
    grads = jax.tree.map(jnp.ones_like, params)
    base = dict(name="sgd", momentum=0.0, weight_decay=0.0, warmup_steps=0,
                schedule="constant", learning_rate=1.0, grad_clip_norm=0.0)
    tx = optim.create_optimizer(_optim_config(backbone="freeze", **base), 10, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    self.assertEqual(float(updates["encoder"]["kernel"][0, 0]), 0.0)
    self.assertEqual(float(updates["head"]["kernel"][0, 0]), -1.0)
    tx = optim.create_optimizer(
        _optim_config(backbone="scale", backbone_lr_factor=0.1, **base), 10, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    self.assertAlmostEqual(float(updates["encoder"]["kernel"][0, 0]), -0.1, places=6)
    with self.assertRaisesRegex(ValueError, "no submodule named"):
      optim.create_optimizer(_optim_config(backbone="freeze", **base), 10,
                             {"head": params["head"]})

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
