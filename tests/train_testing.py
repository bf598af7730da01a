"""Tiny trainer configs and data shared by the trainer tests; also a config file for main.

  python -m seg_jax.main --config=tests/train_testing.py --workdir=DIR [--config.x=y]
"""

import os
import sys

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
from configs import default as default_config  # pylint: disable=g-import-not-at-top,wrong-import-position

# Smallest widths of each registered segmentation model; every registered one must be listed.
_TINY_RESNET = {"width": 2, "stage_sizes": (1, 1, 1, 1)}
_TINY_VGG = dict(backbone_kwargs={"widths": (2, 2, 2, 2, 2)}, neck_kwargs={"features": 8})
TINY_KWARGS = {
    "unet": dict(backbone_kwargs={"widths": (4, 8, 16), "dropout_rate": 0.1}),
    "asym_unet": dict(backbone_kwargs={"widths": (4, 8, 8), "blocks": 1, "se_reduction": 2},
                      neck_kwargs={"features": 8}, decoder_kwargs={"widths": (8, 4)}),
    "unetpp_resnet34": dict(backbone_kwargs=_TINY_RESNET,
                            decoder_kwargs={"widths": (8, 8, 4, 4, 4)}),
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

# The model of the tests of the loop, checkpoints and commands: the tiny U-Net (with dropout, so
# that resumes must restore the dropout keys) traces and compiles in half the time of the tiny
# asym_unet; every model's own train step is tested in tests/test_train.py.
LOOP_MODEL = "unet"

_DATASET = None


def tiny_config(model: str = LOOP_MODEL, **overrides) -> ml_collections.ConfigDict:
  """The default config shrunk to a tiny `model`, 32x32 images, batch 2 and a few steps, locked.

  `overrides` are "group.field" (or "group.sub.field") names with their values.
  """
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
    *groups, field = key.split(".")
    node = config
    for group in groups:
      node = node[group]
    node[field] = value
  config.lock()
  return config


def tiny_dataset():
  """8 train / 3 val / 2 test synthetic scenes of 32x32 (built once per test process)."""
  global _DATASET
  if _DATASET is None:
    from seg_jax import data as data_lib  # pylint: disable=g-import-not-at-top
    _DATASET = data_lib.get_dataset(tiny_config().data)
  return _DATASET


def snapshot(directory):
  """(path, size, mtime) of everything under `directory`: any write shows up as a difference."""
  out = set()
  for root, dirs, files in os.walk(directory):
    for name in dirs + files:
      path = os.path.join(root, name)
      info = os.stat(path)
      out.add((os.path.relpath(path, directory), info.st_size, info.st_mtime_ns))
  return out


def get_config(model: str = LOOP_MODEL) -> ml_collections.ConfigDict:
  """`tiny_config(model)` as a config file for `python -m seg_jax.main`."""
  return tiny_config(model)
