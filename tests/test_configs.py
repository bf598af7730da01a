"""Every config in configs/ loads, names only things that exist, and main rejects typos."""

import importlib
import os
import subprocess
import sys
import tempfile
import textwrap

from absl import flags
from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
from ml_collections import config_flags

from seg_jax import data as data_lib
from seg_jax import models
from seg_jax import optim
from seg_jax import state as state_lib
from seg_jax import steps
from seg_jax.models import asym_unet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

CONFIG_FILES = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "configs"))
                      if f.endswith(".py") and f != "__init__.py")
# (file, argument after the colon) of every config a user can launch.
VARIANTS = [(name, None) for name in CONFIG_FILES if name not in ("dubai", "dubai_patches")] + [
    ("dubai", arch) for arch in ("asym_unet", "unet", "deeplabv3plus")] + [
    ("dubai_patches", arch) for arch in ("mlp", "cnn", "locally_connected")] + [("naip", "rgb")]


def load(name, arg=None):
  """get_config() of configs/<name>.py (with the `:arg` part when given), locked."""
  module = importlib.import_module(f"configs.{name}")
  config = module.get_config() if arg is None else module.get_config(arg)
  config.lock()
  return config


def installed_env() -> dict[str, str]:
  """Environment where seg_jax imports as if installed and `import configs` fails.

  As for a user outside the repository: the repository root is not on sys.path.
  """
  site = tempfile.mkdtemp()
  os.symlink(os.path.join(REPO, "seg_jax"), os.path.join(site, "seg_jax"))
  return dict(os.environ, PYTHONPATH=site)


def _keys(config, prefix=""):
  out = set()
  for key, value in config.items():
    out.add(prefix + key)
    if hasattr(value, "items"):
      out |= _keys(value, f"{prefix}{key}.")
  return out


def parse(*args):
  """The config main.py would get from ``args`` (its config flag, in a flag set of our own)."""
  argv = ["main", *args]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def param_tree(config):
  """Parameter shapes of the model ``config`` builds, at 6 classes and 64x64."""
  model = state_lib.build_model(config, num_classes=6)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                        jnp.zeros((1, 64, 64, 3)))["params"]


class ConfigsTest(parameterized.TestCase):

  def test_expected_files_exist(self):
    for name in ("default", "unet", "asym_unet", "deeplabv3_resnet50",
                 "deeplabv3plus_xception", "fcn8s", "dubai"):
      self.assertIn(name, CONFIG_FILES)
    self.assertTrue(any(n.startswith("gpu_") for n in CONFIG_FILES))
    self.assertTrue(any(n.startswith("tpu_") for n in CONFIG_FILES))

  @parameterized.parameters(*CONFIG_FILES)
  def test_docstring_opens_with_launch_command(self, name):
    doc = importlib.import_module(f"configs.{name}").__doc__
    self.assertStartsWith(doc.strip().splitlines()[0],
                          f"python -m seg_jax.main --config=configs/{name}.py --workdir=")

  @parameterized.parameters(*VARIANTS)
  def test_same_fields_as_default(self, name, arg):
    default_keys = _keys(load("default"))
    model_kwargs = {k for k in default_keys if k.startswith("model.kwargs.")}
    keys = {k for k in _keys(load(name, arg)) if not k.startswith("model.kwargs.")}
    self.assertEqual(keys, default_keys - model_kwargs)

  def test_data_package_holds_no_second_copy_of_defaults(self):
    # Every data field's default lives in configs/default.py; library code only reads groups.
    data_dir = os.path.join(REPO, "seg_jax", "data")
    for folder, _, files in os.walk(data_dir):
      for f in files:
        if f.endswith(".py"):
          with open(os.path.join(folder, f)) as source:
            self.assertNotIn("ConfigDict(", source.read(), os.path.join(folder, f))

  def test_every_config_loads_from_another_working_directory(self):
    # The way seg_jax.main loads --config=/abs/path/configs/X.py, from a folder outside the repo.
    script = textwrap.dedent(f"""
        import sys
        from absl import flags
        from ml_collections import config_flags
        config = config_flags.DEFINE_config_file("config")
        for spec in {[os.path.join(REPO, "configs", f"{n}.py") + (f":{a}" if a else "")
                      for n, a in VARIANTS]!r}:
          flags.FLAGS(["prog", "--config=" + spec])
          print(spec, config.value.model.name, config.value.data.root)
        """)
    cwd = tempfile.mkdtemp()
    proc = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True,
                          text=True, env=installed_env(), timeout=120, check=False)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertLen(proc.stdout.splitlines(), len(VARIANTS))
    # The Dubai root is found next to the repository, wherever the command runs.
    self.assertEqual(load("dubai").data.root,
                     os.path.normpath(os.path.join(REPO, "..", "shared", "data", "dubai_aerial")))

  def test_missing_data_root_says_how_to_set_it_and_where_to_get_the_data(self):
    workdir = os.path.join(tempfile.mkdtemp(), "run")
    proc = subprocess.run(
        [sys.executable, "-m", "seg_jax.main", f"--config={REPO}/configs/dubai.py",
         f"--workdir={workdir}", "--config.data.root=/nonexistent/dubai"],
        cwd=tempfile.mkdtemp(), capture_output=True, text=True, timeout=300, check=False,
        env=installed_env())
    self.assertNotEqual(proc.returncode, 0)
    self.assertIn("data.root '/nonexistent/dubai' is not a folder", proc.stderr)
    self.assertIn("--config.data.root=", proc.stderr)
    self.assertIn("kaggle.com/datasets/humansintheloop/semantic-segmentation-of-aerial-imagery",
                  proc.stderr)

  @parameterized.parameters(*VARIANTS)
  def test_names_exist_and_model_builds(self, name, arg):
    config = load(name, arg)
    self.assertIn(config.model.name, models.available())
    # A classifier trains on one class per example.
    self.assertTrue(models.is_segmentation(config.model.name) or config.data.labels == "majority")
    self.assertIn(config.data.labels, data_lib.dataset.LABELS)
    self.assertIn(config.data.name, data_lib.dataset.NAMES)
    self.assertIn(config.optim.name, optim.OPTIMIZERS)
    self.assertIn(config.optim.backbone, optim.BACKBONE_MODES)
    self.assertIn(config.loss.class_weighting, steps.CLASS_WEIGHTINGS)
    self.assertIn(config.train.mode, ("train", "eval"))
    self.assertIn(config.eval.split, ("val", "test"))
    self.assertIn(config.eval.checkpoint, ("best", "latest"))
    optim.create_schedule(config.optim, config.train.num_steps)
    model = state_lib.build_model(config, num_classes=6)
    shape = jax.eval_shape(
        lambda x: model.init(jax.random.key(0), x, train=False), jnp.zeros((1, 64, 64, 3)))
    self.assertIn("params", shape)

  def test_main_rejects_misspelled_override_before_running(self):
    workdir = os.path.join(tempfile.mkdtemp(), "run")
    proc = subprocess.run(
        [sys.executable, "-m", "seg_jax.main", "--config=configs/default.py",
         f"--workdir={workdir}", "--config.train.num_step=1"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    self.assertNotEqual(proc.returncode, 0)
    self.assertIn('Did you mean "num_steps" instead of "num_step"?', proc.stderr)
    self.assertFalse(os.path.exists(workdir))  # nothing ran: the workdir is made by training

  @parameterized.parameters(*asym_unet.ABLATIONS)
  def test_every_ablation_from_the_command_line(self, ablation):
    config = parse(f"--config={REPO}/configs/dubai.py:asym_unet",
                   f"--config.model.ablation={ablation}")
    params = param_tree(config)
    switches = asym_unet.ABLATIONS[ablation]
    self.assertEqual("neck" in params, switches["neck"] == "aspp")
    self.assertEqual("se" in params["backbone"]["stage1"], switches["backbone_kwargs"]["se"])

  @parameterized.parameters(
      ("backbone_kwargs.se=False", lambda p: "se" not in p["backbone"]["stage1"]),
      ("neck=none", lambda p: "neck" not in p),
      ("decoder_kwargs.skip_se=True", lambda p: "skip_se0" in p["decoder"]),
      ("decoder_kwargs.se=True", lambda p: "se" in p["decoder"]["stage0"]),
  )
  def test_every_switch_from_the_command_line(self, override, holds):
    for name in ("default", "asym_unet", "dubai"):
      config = parse(f"--config={REPO}/configs/{name}.py", f"--config.model.kwargs.{override}")
      self.assertTrue(holds(param_tree(config)), name)

  def test_unknown_ablation_fails_when_the_model_is_built(self):
    config = parse(f"--config={REPO}/configs/default.py", "--config.model.ablation=no_se")
    with self.assertRaisesRegex(ValueError, "ablation of model 'asym_unet' must be one of"):
      state_lib.build_model(config, num_classes=6)

  def test_dubai_rejects_unknown_architecture(self):
    with self.assertRaisesRegex(ValueError, "arch.*'segformer'"):
      load("dubai", "segformer")
    with self.assertRaisesRegex(ValueError, "arch.*'resnet'"):
      load("dubai_patches", "resnet")

  def test_dubai_patches_variants_are_listed(self):
    module = importlib.import_module("configs.dubai_patches")
    self.assertEqual(sorted(module.ARCHITECTURES),
                     sorted(arch for name, arch in VARIANTS if name == "dubai_patches"))


if __name__ == "__main__":
  absltest.main()
