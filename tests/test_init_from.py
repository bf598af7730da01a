"""Tests of seg_jax.init_from: initial weights from workdirs, weight files and library names."""

import dataclasses
import os
import shutil
import sys
import tempfile
import types
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import h5py
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from safetensors.numpy import save_file

from seg_jax import data as data_lib
from seg_jax import errors
from seg_jax import init_from
from seg_jax import models
from seg_jax import state as state_lib
from seg_jax import steps
from seg_jax import train
from seg_jax import weights
from seg_jax import workdir as workdir_lib
from seg_jax.weights import common as weights_common
from seg_jax.weights import keras_layout
from tests.models.testing import random_variables
from tests.train_testing import TINY_KWARGS, tiny_config, tiny_dataset

X = np.zeros((1, 64, 64, 3), np.float32)
# deeplabv3plus's tiny backbone (train_testing): a resnet50 layout at width 2, one block a stage.
RESNET = TINY_KWARGS["deeplabv3plus"]["backbone_kwargs"]
XCEPTION = dict(width_divisor=32, middle_repeats=1)


def setUpModule():
  jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp())
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _config(model="deeplabv3plus", kwargs=None, **overrides):
  if kwargs is not None:
    overrides["model.kwargs"] = ml_collections.ConfigDict(kwargs)
  return tiny_config(model, **overrides)


def _load(config):
  """init_from.load for `config` against its model's shapes (nothing is compiled)."""
  trainer = steps.Trainer(config, tiny_dataset())
  return init_from.load(config.model, trainer.model, trainer.abstract_state)


def _torch_file(folder, name, num_classes=10, extra=None, **kwargs):
  """A .safetensors file of torchvision-layout weights of seg_jax model `name`, and them."""
  variables = random_variables(models.create(name, num_classes=num_classes, **kwargs), X)
  path = os.path.join(folder, f"{name}.safetensors")
  save_file({**weights.to_torch(name, variables), **(extra or {})}, path)
  return path, variables


def _keras_file(folder, **kwargs):
  """A Keras .weights.h5 file of Xception (seg_jax fields `kwargs`), and its variables."""
  variables = random_variables(models.create("xception", num_classes=10, **kwargs), X)
  path = os.path.join(folder, "xception.weights.h5")
  with h5py.File(path, "w") as f:
    for seg_path, name in keras_layout.h5_names("xception", **kwargs).items():
      value = np.asarray(weights_common.flatten(variables)[seg_path])
      if seg_path.endswith("depthwise/kernel"):  # seg_jax (kh, kw, 1, C) -> Keras (kh, kw, C, 1)
        value = value.transpose(0, 1, 3, 2)
      f.create_dataset(name, data=value)
  return path, variables


def _assert_backbone_is(test, initial, variables, skipped):
  """Every backbone variable came from `variables`, the rest from the seed; `skipped` left out."""
  source = weights_common.flatten(variables)
  for path, how in initial.provenance.items():
    collection, module, *rest = path.split("/")
    if module == "backbone":
      test.assertEqual(how, "imported", path)
      np.testing.assert_array_equal(initial.variables[path],
                                    source["/".join([collection, *rest])], err_msg=path)
    elif how != "skipped":
      test.assertEqual(how, "initialised", path)
  test.assertCountEqual([p for p, how in initial.provenance.items() if how == "skipped"],
                        [p for p in source if p.split("/")[1] in skipped])


class FilesAndNamesTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.folder = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.folder)

  def test_torch_file_initialises_the_backbone(self):
    path, variables = _torch_file(self.folder, "resnet50", **RESNET)
    initial = _load(_config(**{"model.init_from": path}))
    _assert_backbone_is(self, initial, variables, skipped={"fc"})
    lines = init_from.describe(initial).splitlines()
    self.assertIn(f"initial weights from {path}:", lines[0])
    self.assertRegex(lines[1], r"  backbone: \d+ arrays \([\d,]+ values\) imported from the "
                     "source")
    self.assertRegex(init_from.describe(initial),
                     r"head: 2 arrays \(\d+ values\) initialised from the seed")
    self.assertIn("not taken from the source (2 arrays): params/fc/bias, params/fc/kernel",
                  init_from.describe(initial))

  def test_keras_file_initialises_an_xception_backbone(self):
    path, variables = _keras_file(self.folder, **XCEPTION)
    config = _config(kwargs=dict(TINY_KWARGS["deeplabv3plus"], backbone="xception",
                                 backbone_kwargs=XCEPTION), **{"model.init_from": path})
    _assert_backbone_is(self, _load(config), variables, skipped={"predictions"})

  def test_torchvision_name_uses_its_download_function(self):
    _, variables = _torch_file(self.folder, "resnet50", **RESNET)
    state = weights.to_torch("resnet50", variables)
    get_model = mock.Mock(return_value=mock.Mock(state_dict=mock.Mock(return_value=state)))
    fake = types.SimpleNamespace(models=types.SimpleNamespace(get_model=get_model))
    with mock.patch.dict(sys.modules, {"torchvision": fake}):
      initial = _load(_config(**{"model.init_from": "torchvision:resnet50:IMAGENET1K_V2"}))
    get_model.assert_called_once_with("resnet50", weights="IMAGENET1K_V2")
    _assert_backbone_is(self, initial, variables, skipped={"fc"})
    get_model.side_effect = OSError("<urlopen error [Errno -3] no network>")
    with mock.patch.dict(sys.modules, {"torchvision": fake}):
      with self.assertRaisesRegex(errors.ConfigError, r"could not download resnet50 "
                                  "IMAGENET1K_V2 .*no network.*give its path"):
        _load(_config(**{"model.init_from": "torchvision:resnet50:IMAGENET1K_V2"}))

  def test_keras_name_uses_its_application(self):
    path, variables = _keras_file(self.folder, **XCEPTION)
    saved = mock.Mock(name="keras.Model", save_weights=lambda p: shutil.copy(path, p))
    saved.name = "xception"
    application = mock.Mock(return_value=saved)
    fake = types.SimpleNamespace(applications=types.SimpleNamespace(Xception=application))
    config = _config(kwargs=dict(TINY_KWARGS["deeplabv3plus"], backbone="xception",
                                 backbone_kwargs=XCEPTION),
                     **{"model.init_from": "keras:xception:imagenet"})
    with mock.patch.dict(sys.modules, {"keras": fake}):
      initial = _load(config)
    application.assert_called_once_with(weights="imagenet")
    _assert_backbone_is(self, initial, variables, skipped={"predictions"})

  def test_whole_model_reinitialises_a_head_of_another_class_count(self):
    kwargs = TINY_KWARGS["deeplabv3_resnet50"]
    path, variables = _torch_file(
        self.folder, "deeplabv3_resnet50", num_classes=21, **kwargs,
        extra={"aux_classifier.4.weight": np.zeros((21, 8, 1, 1), np.float32)})
    initial = _load(_config("deeplabv3_resnet50", **{"model.init_from": path,
                                                     "model.init_part": "model"}))
    head = {"params/head/classifier/kernel", "params/head/classifier/bias"}
    source = weights_common.flatten(variables)
    for path_, how in initial.provenance.items():
      if path_ in head:
        self.assertRegex(how, r"re-initialised: imported shape \((1, 1, 8, )?21,?\)")
      elif how == "skipped":
        self.assertEqual(path_, "aux_classifier.4.weight")
      else:
        self.assertEqual(how, "imported", path_)
        np.testing.assert_array_equal(initial.variables[path_], source[path_])
    self.assertIn("re-initialised (class count differs): params/head/classifier/kernel "
                  "(imported shape (1, 1, 8, 21), model shape (1, 1, 8, 6))",
                  init_from.describe(initial))

  @parameterized.named_parameters(
      ("missing_file", "{folder}/resnet50.pth", {}, r"resnet50.pth': no such file"),
      ("unknown_kind", "{folder}", {"model.init_from": "{folder}/weights.npz"},
       r"must be a seg_jax workdir, a Keras file"),
      ("another_architecture", "resnet18", {},
       r"missing \['layer1.0.bn3.bias', .*\], unexpected \['layer1.1.bn1.bias', "),
      ("shapes_that_do_not_fit", "wider", {},
       r"mis-shaped \['bn1.running_mean: \(4,\) gives \(4,\), batch_stats/bn1/bn/mean needs "
       r"\(2,\)', .*, \.\.\. \d+ more\]$"),
      ("no_keras_layout", "keras", {}, r"keras weights are known for \['xception'\], and the "
       r"model's backbone is 'resnet50'"),
      ("whole_model_without_torch_layout", "resnet50", {"model.init_part": "model"},
       r"known for .*, and the model is 'deeplabv3plus' \(model.init_part='backbone'"),
      ("library_name_of_another_model", "torchvision:resnet18:IMAGENET1K_V1", {},
       r"names torchvision's 'resnet18', but the model's backbone is 'resnet50'"),
      ("library_spec", "torchvision:resnet50", {}, r"torchvision:<model>:<weights>"),
      ("unknown_part", "resnet50", {"model.init_part": "neck"}, r"model.init_part must be one "
       r"of \('backbone', 'model'\), got 'neck'"),
      ("not_a_workdir", "{folder}", {}, r"config.json does not exist"),
  )
  def test_bad_source_is_a_one_line_config_error(self, source, overrides, message):
    files = {"resnet50": lambda: _torch_file(self.folder, "resnet50", **RESNET)[0],
             "resnet18": lambda: _torch_file(self.folder, "resnet18", width=2)[0],
             "wider": lambda: _torch_file(self.folder, "resnet50", width=4,
                                          stage_sizes=(1, 1, 1, 1))[0],
             "keras": lambda: _keras_file(self.folder, **XCEPTION)[0]}
    spec = files[source]() if source in files else source.format(folder=self.folder)
    overrides = {k: v.format(folder=self.folder) for k, v in overrides.items()}
    config = _config(**{"model.init_from": spec, **overrides})
    with self.assertRaisesRegex(errors.ConfigError, message) as raised:
      _load(config)
    self.assertNotIn("\n", str(raised.exception))
    if "model.init_part" not in str(raised.exception)[:20]:
      self.assertStartsWith(str(raised.exception), f"model.init_from={config.model.init_from!r}")

  def test_torchvision_missing_is_a_config_error(self):
    with mock.patch.dict(sys.modules, {"torchvision": None}):
      with self.assertRaisesRegex(errors.ConfigError, r"needs torch and torchvision"):
        _load(_config(**{"model.init_from": "torchvision:resnet50:IMAGENET1K_V2"}))

  def test_empty_init_from_loads_nothing(self):
    self.assertIsNone(_load(_config()))


def _restore(workdir, config, which="latest"):
  """Flat {path: array} of the variables of a workdir's checkpoint."""
  ckpt = workdir_lib.RunDir(workdir).checkpointer(read_only=True)
  try:
    state, _ = ckpt.restore_state(state_lib.abstract_state(config, 6, (32, 32)), which)
  finally:
    ckpt.close()
  return weights_common.flatten(jax.tree.map(
      np.asarray, {"params": state.params, "batch_stats": state.batch_stats}))


def _workdir(config):
  """A workdir of a run of `config` whose best checkpoint holds random variables."""
  workdir = tempfile.mkdtemp()
  trainer = steps.Trainer(config, tiny_dataset())
  state = trainer.initial_state()
  rng = np.random.default_rng(0)
  state = state.replace(**{k: jax.tree.map(
      lambda x: jnp.asarray(rng.uniform(0.5, 1.5, x.shape), x.dtype), getattr(state, k))
                           for k in ("params", "batch_stats")})
  workdir_lib.RunDir(workdir).save_config(config)
  workdir_lib.RunDir(workdir).save_data_info(trainer.dataset)
  ckpt = workdir_lib.RunDir(workdir).checkpointer()
  ckpt.save(3, state, trainer.train_pipeline().get_state(), miou=0.5)
  ckpt.close()
  return workdir


class WorkdirTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.source_config = tiny_config("asym_unet")
    cls.source = _workdir(cls.source_config)
    cls.best = _restore(cls.source, cls.source_config, "best")

  def test_fine_tune_a_workdir_with_a_frozen_backbone_then_resume_without_it(self):
    source = tempfile.mkdtemp()
    shutil.copytree(self.source, source, dirs_exist_ok=True)
    workdir = tempfile.mkdtemp()
    overrides = {"model.init_from": source, "model.init_part": "model",
                 "optim.backbone": "freeze", "train.num_steps": 2}
    with self.assertLogs(level="INFO") as logs:
      train.train_and_evaluate(tiny_config("asym_unet", **overrides), workdir, tiny_dataset())
    log = "\n".join(logs.output)
    self.assertIn(f"initial weights from the best checkpoint of {source} (step 3, model "
                  "'asym_unet')", log)
    for part in ("backbone", "neck", "decoder", "head"):
      self.assertRegex(log, rf"  {part}: \d+ arrays \([\d,]+ values\) imported from the source")
    self.assertNotIn("from the seed", log)
    # The log confirms what is frozen: the backbone's parameters, the rest trainable.
    params = state_lib.abstract_state(tiny_config("asym_unet"), 6, (32, 32)).params
    frozen = models.count_params({"params": params["backbone"]})
    total = models.count_params({"params": params})
    self.assertIn(f"model asym_unet: {total:,} parameters ({frozen:,} frozen in backbone by "
                  f"optim.backbone=freeze, {total - frozen:,} trainable)", log)
    # The frozen backbone is the source's to the bit, params and BatchNorm statistics; every
    # other array trained away from it.
    tuned = _restore(workdir, tiny_config("asym_unet", **overrides))
    for path, value in tuned.items():
      if path.split("/")[1] == "backbone":
        np.testing.assert_array_equal(value, self.best[path], err_msg=path)
      else:
        self.assertFalse(np.array_equal(value, self.best[path]), path)

    # A resumed run continues from its own checkpoint: the source is never read again.
    shutil.rmtree(source)
    overrides["train.num_steps"] = 4
    with mock.patch.object(init_from, "load", side_effect=AssertionError("read")) as load:
      final = train.train_and_evaluate(tiny_config("asym_unet", **overrides), workdir, tiny_dataset()).final
    load.assert_not_called()
    self.assertEqual(final["step"], 4)

  def test_workdir_of_another_architecture_is_refused_before_anything_is_written(self):
    workdir = tempfile.mkdtemp()
    for part, message in [("model", r"no place for \['batch_stats/neck/atrous0/norm/bn/mean'"),
                          ("backbone", r"mis-shaped \['batch_stats/stage2/conv0/norm/bn/mean: "
                                       r"\(8,\) vs \(16,\)'")]:
      config = tiny_config("unet", **{"model.init_from": self.source, "model.init_part": part})
      with mock.patch.object(train._Loop, "run") as loop:
        with self.assertRaisesRegex(errors.ConfigError,
                                    rf"^model.init_from='{self.source}': .*{message}"):
          train.train_and_evaluate(config, workdir, tiny_dataset())
      loop.assert_not_called()
      self.assertFalse(workdir_lib.RunDir(workdir).has_config())
      self.assertEqual(workdir_lib.RunDir(workdir).checkpointer(read_only=True).steps(), [])

  def test_for_another_class_count(self):
    for part in ("model", "backbone"):
      config = tiny_config("asym_unet", **{"model.init_from": self.source, "model.init_part": part})
      initial = init_from.load(config.model, state_lib.build_model(config, 4),
                               state_lib.abstract_state(config, 4, (32, 32)))
      for path, how in initial.provenance.items():
        if part == "backbone" and path.split("/")[1] != "backbone":
          self.assertEqual(how, "initialised", path)
        elif part == "model" and path.startswith("params/head/classifier/"):
          self.assertRegex(how, r"^re-initialised: imported shape \(.*6,?\), model shape "
                           r"\(.*4,?\)$")
        else:
          self.assertEqual(how, "imported", path)
          np.testing.assert_array_equal(initial.variables[path], self.best[path])

  def test_rgb_workdir_into_more_bands_with_extra_kernels_zeroed_gives_its_logits(self):
    # 5 bands, of which bands 2, 4, 5 are red, green, blue: input channels 1, 3, 4.
    bands = data_lib.Bands(numbers=(1, 2, 3, 4, 5), rgb=(2, 4, 5))
    config = tiny_config("asym_unet", **{"model.init_from": self.source, "model.init_part": "model"})
    dataset = _with_bands(bands)
    trainer = steps.Trainer(config, dataset)
    initial = init_from.load(config.model, trainer.model, trainer.abstract_state, bands)
    self.assertNotIn("initialised", initial.provenance.values())
    (path, axis), = init_from.input_layers(trainer.model, 5, 32).items()
    self.assertRegex(init_from.describe(initial), rf"RGB weights onto the input bands: {path}: "
                     r"band 2 <- red, band 4 <- green, band 5 <- blue, bands 1, 3 <- the mean "
                     r"of the RGB kernels; all times 3/5")
    variables = dict(initial.variables)
    kernel = np.moveaxis(np.array(variables[path]), axis, 0)
    source = np.moveaxis(self.best[path], axis, 0)
    for channel, rgb in ((1, 0), (3, 1), (4, 2)):
      np.testing.assert_allclose(kernel[channel], source[rgb] * 3 / 5, rtol=1e-6)
    for channel in (0, 2):
      np.testing.assert_allclose(kernel[channel], source.mean(axis=0) * 3 / 5, rtol=1e-6)
    kernel[[0, 2]] = 0.0  # the extra bands' kernels zeroed, the 3/N scale undone
    variables[path] = np.moveaxis(kernel * 5 / 3, 0, axis)
    rgb = np.random.default_rng(0).normal(size=(1, 32, 32, 3)).astype(np.float32)
    x = np.random.default_rng(1).normal(size=(1, 32, 32, 5)).astype(np.float32)
    x[..., [1, 3, 4]] = rgb
    apply = jax.jit(lambda v, inputs: trainer.model.apply(
        weights_common.unflatten(v), inputs, train=False))
    np.testing.assert_allclose(apply(variables, x), apply(self.best, rgb), rtol=1e-4, atol=1e-5)


def _with_bands(bands):
  """The tiny dataset as if its images held `bands`."""
  zeros = np.zeros(len(bands), np.float32)
  return dataclasses.replace(tiny_dataset(), bands=bands, mean=zeros, std=zeros + 1)


class BandsTest(absltest.TestCase):
  """RGB weights (a torch file) into a model whose input has other bands."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.folder = tempfile.mkdtemp()
    cls.path, variables = _torch_file(cls.folder, "resnet50", **RESNET)
    cls.source = weights_common.flatten(variables)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.folder)
    super().tearDownClass()

  def _load(self, bands, **overrides):
    """(initial, path and band axis of the input layer) for a model reading `bands`."""
    config = _config(**{"model.init_from": self.path, **overrides})
    trainer = steps.Trainer(config, _with_bands(bands))
    (path, axis), = init_from.input_layers(trainer.model, len(bands), 64).items()
    return init_from.load(config.model, trainer.model, trainer.abstract_state, bands), path, axis

  def test_red_green_blue_in_order_import_bit_for_bit_as_before(self):
    initial, path, _ = self._load(data_lib.Bands())
    rgb_import = _load(_config(**{"model.init_from": self.path}))
    self.assertEqual(initial.band_mapping, ())
    self.assertCountEqual(initial.variables, rgb_import.variables)
    for name, value in initial.variables.items():
      np.testing.assert_array_equal(value, rgb_import.variables[name], err_msg=name)
    np.testing.assert_array_equal(initial.variables[path],
                                  self.source[path.replace("backbone/", "", 1)])

  def test_bands_in_another_order_get_their_kernels(self):
    initial, path, axis = self._load(data_lib.Bands(numbers=(3, 2, 1), rgb=(1, 2, 3)))
    np.testing.assert_array_equal(
        initial.variables[path],
        np.flip(self.source[path.replace("backbone/", "", 1)], axis=axis))
    self.assertIn("band 1 <- red, band 2 <- green, band 3 <- blue; all times 3/3",
                  init_from.describe(initial))

  def test_rgb_weights_need_rgb_bands(self):
    with self.assertRaisesRegex(errors.ConfigError, r"^model.init_from=.*reads bands \(1, 2, 3, "
                                r"4\), none named red, green, blue: set data.rgb_bands$"):
      self._load(data_lib.Bands(numbers=(1, 2, 3, 4), rgb=()),
                 **{"data.augment.enabled": False})


if __name__ == "__main__":
  absltest.main()
