"""What a trained network sees: the proposal's first-layer filters, the feature maps of each
encoder stage, its SE gates on water and on city tiles, and what each ASPP branch contributes.

    python -m experiments.feature_maps.run [--workdir=RUN] [--out=DIR] [--data_root=DIR] [--toy]

``--workdir`` names a trained ``asym_unet`` run (its latest checkpoint, the end of training, is
read; nothing is written there); without it, ``configs/dubai.py:asym_unet`` with ``TRAINED`` is
trained in ``RUN`` (``TOY`` in ``<out>/run`` with ``--toy``), or read back if that run is
finished. Every
intermediate comes from the model itself: ``Module.apply(..., capture_intermediates=...)``
returns each module's output and the SE gates the model sows; ``flax.linen.intercept_methods``
replaces one ASPP branch's output with zeros to measure what the prediction loses without it.

Images: the val and test tiles (never trained on), resized to the run's ``data.image_size`` as
training does. Water and city images are picked by their labels: the ``GROUP_SIZE`` images with
the largest share of water pixels, and the ``GROUP_SIZE`` with the largest share of building +
road pixels among the rest.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Sequence
from typing import Any, Optional

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs import dubai as dubai_config
from experiments import common
from experiments import sweeps
from seg_jax import data as data_lib
from seg_jax import errors
from seg_jax import metrics
from seg_jax import state as state_lib
from seg_jax import steps
from seg_jax import sweep as sweep_lib
from seg_jax import viz
from seg_jax import workdir as workdir_lib
from seg_jax import writers
from seg_jax.data import augment

FOLDER = os.path.dirname(os.path.abspath(__file__))
RUN = os.path.join(tempfile.gettempdir(), "feature_maps_asym_unet")
# The run trained without --workdir: configs/dubai.py:asym_unet at half its image size, so that
# it trains in a few minutes on a 2-core CPU.
TRAINED = {"data.image_size": (72, 128), "train.num_steps": 200, "train.eval_every": 50,
           "train.checkpoint_every": 200}
GROUP_SIZE = 4
CHANNELS_SHOWN = 8  # feature maps per stage, the most active ones on the image
WATER, CITY = ("water",), ("building", "road")
TOY = {**sweeps.TOY, "data.num_val": 4, "data.num_test": 4, "data.num_train": 4,
       "model.kwargs": dubai_config.default.asym_unet_kwargs(**sweeps.TOY_PROPOSAL)}


def train_run(options: common.Options) -> tuple[str, Optional[data_lib.Dataset]]:
  """The folder of a trained proposal, ``--workdir`` or a short Dubai run trained here, and the
  dataset of the run trained here (None for ``--workdir``: it is read with the run's config)."""
  if options.workdir:
    return options.workdir, None
  workdir = os.path.join(options.out, "run") if options.toy else RUN
  data = ({"data.root": options.data_root} if options.data_root
          else {"data.name": "synthetic_aerial", "data.root": ""})
  config = sweep_lib.apply_overrides(dubai_config.get_config("asym_unet"),
                                     {**(TOY if options.toy else TRAINED), **data}, "feature_maps")
  dataset = data_lib.get_dataset(config.data)
  sweeps.train(config, workdir, dataset)
  return workdir, dataset


def pick_images(labels: np.ndarray, class_names: Sequence[str], size: int
                ) -> tuple[list[int], list[int], np.ndarray]:
  """Indices of the ``size`` images with the most water and, among the rest, the ``size`` with
  the most building + road pixels; and every image's share of each class (N, C)."""
  counts = np.stack([(labels == c).sum(axis=(1, 2)) for c in range(len(class_names))], -1)
  shares = counts / np.maximum(counts.sum(-1, keepdims=True), 1)

  def share(names):
    return shares[:, [class_names.index(n) for n in names]].sum(-1)

  water = list(np.argsort(-share(WATER), kind="stable")[:size])
  rest = [i for i in np.argsort(-share(CITY), kind="stable") if i not in water]
  return water, rest[:size], shares


def is_part_or_child(module: nn.Module, method: str) -> bool:
  """A ``capture_intermediates`` filter: the outputs of the backbone, the neck and their direct
  children (encoder stages, ASPP branches), not of every layer inside them."""
  return (method == "__call__" and module.path[:1] in (("backbone",), ("neck",))
          and len(module.path) <= 2)


@dataclasses.dataclass(frozen=True)
class Trained:
  """A run's trainer (config, model, dataset with its mean/std), variables and step."""

  trainer: steps.Trainer
  variables: dict[str, Any]
  step: int


def load_run(workdir: str, dataset: Optional[data_lib.Dataset] = None) -> Trained:
  """The latest checkpoint of the run in ``workdir`` (the trained network; the best-val one of a
  short run can be an early step), read only, with the run's own config and ``dataset`` (None:
  read it)."""
  run_dir = workdir_lib.RunDir(workdir)
  config = run_dir.load_config()
  if config.model.name != "asym_unet":
    raise errors.WorkdirError(f"--workdir={workdir} trained {config.model.name!r}; this "
                              "experiment reads the SE gates and ASPP branches of an asym_unet run")
  trainer = steps.Trainer(config, dataset)
  state, step = run_dir.restore(trainer.abstract_state, "latest")
  return Trained(trainer, state_lib.variables(state), step)


def forward(trained: Trained, images: np.ndarray, capture=True,
            zero: Optional[tuple[str, ...]] = None) -> tuple[jax.Array, dict[str, Any]]:
  """Logits and captured intermediates (module outputs under ``backbone`` and ``neck``, SE
  gates) of ``images`` (uint8 (N, H, W, 3)); ``zero`` names a module whose output is replaced
  by zeros."""
  x = augment.normalize(images, trained.trainer.dataset.mean, trained.trainer.dataset.std)

  def zero_output(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if zero is not None and context.method_name == "__call__" and context.module.path == zero:
      return jnp.zeros_like(out)
    return out

  keep = is_part_or_child if capture else False
  with nn.intercept_methods(zero_output):
    logits, state = trained.trainer.model.apply(
        trained.variables, x, train=False, capture_intermediates=keep, mutable=["intermediates"])
  return logits, state["intermediates"]


def stage_outputs(intermediates: dict[str, Any]) -> dict[str, np.ndarray]:
  """{stage name: its output (N, h, w, C)} of the encoder, shallowest first."""
  backbone = intermediates["backbone"]
  stages = sorted((k for k in backbone if k.startswith("stage")), key=lambda k: int(k[5:]))
  return {k: np.asarray(backbone[k]["__call__"][0]) for k in stages}


def se_gates(intermediates: dict[str, Any]) -> dict[str, np.ndarray]:
  """{stage name: SE gates (N, C)} of the encoder stages that have SE."""
  backbone = intermediates["backbone"]
  return {k: np.asarray(v["se"]["gate"][0]).reshape(len(v["se"]["gate"][0]), -1)
          for k, v in backbone.items() if isinstance(v, dict) and "se" in v}


def aspp_branches(intermediates: dict[str, Any]) -> dict[str, np.ndarray]:
  """{branch name: output (N, h, w, F)} of the ASPP neck's parallel branches, broadcast."""
  neck = intermediates["neck"]
  names = ["conv1x1"] + sorted(k for k in neck if k.startswith("atrous")) + (
      ["image_pool"] if "image_pool" in neck else [])
  shape = np.shape(neck["conv1x1"]["__call__"][0])
  return {k: np.broadcast_to(np.asarray(neck[k]["__call__"][0]), shape) for k in names}


def miou(logits: jax.Array, labels: np.ndarray, num_classes: int, ignore_index: int) -> float:
  """mIoU of the argmax of ``logits`` against ``labels``."""
  cm = metrics.ConfusionMatrix.from_model_output(
      labels=jnp.asarray(labels, jnp.int32), preds=jnp.argmax(logits, -1),
      num_classes=num_classes, ignore_index=ignore_index)
  return float(cm.compute()["miou"])


def filters_figure(kernel: np.ndarray, path: str) -> None:
  """Each first-layer filter (3x3x3 RGB) as a colour picture, scaled to its own range."""
  panels = []
  for c in range(kernel.shape[-1]):
    k = kernel[..., c]
    scaled = (k - k.min()) / max(float(np.ptp(k)), 1e-12)
    panels.append(viz.Panel(scaled, f"filter {c}"))
  cols = 8
  viz.save_panels([panels[i:i + cols] for i in range(0, len(panels), cols)], path,
                  panel_inches=1.3, title="first-layer filters (backbone/stage0/conv0), RGB, each "
                                          "scaled to its own min..max")


def feature_maps_figure(image: np.ndarray, stages: dict[str, np.ndarray], title: str,
                        path: str) -> list[list[Any]]:
  """Per encoder stage, its ``CHANNELS_SHOWN`` channels of highest mean activation on the image.

  Returns the table rows: stage, output size, channels, share of channels never active."""
  rows, table = [], []
  for name, out in stages.items():
    maps = out[0]
    order = np.argsort(-maps.mean(axis=(0, 1)))[:CHANNELS_SHOWN]
    rows.append([viz.Panel(image, f"{name}: input")] + [
        viz.Panel(maps[..., c], f"{name} ch {c} ({maps.shape[0]}x{maps.shape[1]})",
                  cmap="magma") for c in order])
    table.append([name, common.dims(maps.shape[:2]), maps.shape[-1],
                  f"{100 * np.mean(maps.max(axis=(0, 1)) <= 0):.0f}%"])
  viz.save_panels(rows, path, panel_inches=1.6, title=title)
  return table


@dataclasses.dataclass(frozen=True)
class Images:
  """The val and test images of a run's dataset: uint8 (N, H, W, 3), labels (N, H, W), names."""

  images: np.ndarray
  labels: np.ndarray
  names: list[str]

  @classmethod
  def of(cls, dataset: data_lib.Dataset) -> "Images":
    """The val images, then the test images of ``dataset``."""
    names = list(dataset.val.names or []) + list(dataset.test.names or [])
    if not names:
      names = [f"val/{i}" for i in range(len(dataset.val))] + [
          f"test/{i}" for i in range(len(dataset.test))]
    return cls(np.concatenate([dataset.val.images, dataset.test.images]),
               np.concatenate([dataset.val.labels, dataset.test.labels]), names)


def feature_maps_section(trained: Trained, data: Images, inter: dict[str, Any], one: int,
                         out: str) -> str:
  """The first-layer filters and the feature maps of each encoder stage on image ``one``."""
  params = trained.variables["params"]
  filters_figure(np.asarray(params["backbone"]["stage0"]["conv0"]["conv"]["kernel"]),
                 os.path.join(out, "filters.png"))
  table = feature_maps_figure(
      data.images[one], {k: v[one:one + 1] for k, v in stage_outputs(inter).items()},
      f"encoder feature maps of {data.names[one]}: per stage the {CHANNELS_SHOWN} most active "
      "channels (ReLU outputs, each its own colour scale)", os.path.join(out, "feature_maps.png"))
  return (
      f"### Feature maps\n\nImage `{data.names[one]}` (the city image with the most building "
      "and road pixels). Share of channels that stay at zero on this whole image (a ReLU that "
      "never fires here):\n\n" + writers.markdown_table(
          ["stage", "size", "channels", "channels never active"], table)
      + "\n\n![first-layer filters](filters.png)\n\n![feature maps per stage](feature_maps.png)")


def se_section(dataset: data_lib.Dataset, data: Images, inter: dict[str, Any],
               groups: dict[str, list[int]], shares: np.ndarray, out: str) -> str:
  """The SE gates of each encoder stage on the water and the city images."""
  names, (water, city) = list(dataset.class_names), groups.values()
  viz.save_panels(
      [[viz.Panel(viz.overlay(data.images[i], data.labels[i], dataset.palette),
                  f"{group}: {data.names[i]}") for i in ids] for group, ids in groups.items()],
      os.path.join(out, "se_images.png"), panel_inches=2.4,
      legend=dict(zip(names, dataset.palette.colors)),
      title="the images whose SE gates are compared, with their labels")
  se_table, panels = [], []
  for stage, g in se_gates(inter).items():
    gw, gc = g[water], g[city]
    between = np.abs(gw.mean(0) - gc.mean(0))
    within = 0.5 * (gw.std(0) + gc.std(0))
    top = int(np.argmax(between))
    se_table.append([stage, g.shape[1], f"{gw.mean():.3f}", f"{gc.mean():.3f}",
                     f"{between.mean():.3f}", f"{within.mean():.3f}",
                     f"{top}: {gw[:, top].mean():.2f} vs {gc[:, top].mean():.2f}"])
    channels = range(g.shape[1])
    panels.append(viz.Curves({f"water (n={len(water)})": (channels, gw.mean(0), gw.std(0)),
                              f"city (n={len(city)})": (channels, gc.mean(0), gc.std(0))},
                             title=f"{stage} SE", xlabel="channel", ylabel="gate"))
  viz.save_curve_panels(panels, os.path.join(out, "se_gates.png"), ncols=2,
                        title="SE gate per channel: mean ± std over the water and the city "
                              "images", panel_inches=5.0)
  pick = writers.markdown_table(
      ["group", "image", "water", "building + road"],
      [[group, data.names[i], f"{100 * shares[i, names.index('water')]:.0f}%",
        f"{100 * shares[i, [names.index(n) for n in CITY]].sum():.0f}%"]
       for group, ids in groups.items() for i in ids])
  return (
      "### SE gates: water vs city\n\nThe images, picked by their labels:\n\n" + pick
      + "\n\nPer encoder stage: the mean gate of each group, the mean over channels of "
      "|water mean - city mean| (*between*) against the mean over channels of the std within "
      "a group (*within*), and the channel whose gate differs most.\n\n"
      + writers.markdown_table(["stage", "channels", "mean gate, water", "mean gate, city",
                                "between", "within", "most different channel"], se_table)
      + "\n\n![water and city images](se_images.png)\n\n![SE gates](se_gates.png)")


def aspp_section(trained: Trained, data: Images, logits: jax.Array, inter: dict[str, Any],
                 out: str) -> str:
  """Each ASPP branch: the size of its output, and the prediction with it zeroed."""
  config = trained.trainer.config
  num_classes, ignore = len(trained.trainer.dataset.class_names), config.data.ignore_index
  base = miou(logits, data.labels, num_classes, ignore)
  preds = np.asarray(jnp.argmax(logits, -1))
  aspp_table, bars = [], {}
  rates = tuple(config.model.kwargs.neck_kwargs.rates)
  # Each branch, then the whole ASPP output (the decoder then has only the skips).
  outputs = {**aspp_branches(inter), "": np.asarray(inter["neck"]["__call__"][0])}
  for name, output in outputs.items():
    label = (f"{name} (rate {rates[int(name[6:])]})" if name.startswith("atrous")
             else name or "whole ASPP output")
    norm = np.linalg.norm(output, axis=-1).mean()
    zeroed, _ = forward(trained, data.images, capture=False,
                        zero=("neck", name) if name else ("neck",))
    changed = np.mean(np.asarray(jnp.argmax(zeroed, -1)) != preds)
    after = miou(zeroed, data.labels, num_classes, ignore)
    aspp_table.append([label, f"{norm:.3f}", f"{100 * changed:.1f}%", f"{after:.3f}",
                       f"{after - base:+.3f}"])
    bars[label] = (norm, 100 * changed, after - base)
  labels_x, x = list(bars), range(len(bars))
  viz.save_curve_panels([
      viz.Curves({"mean L2 norm per pixel": (x, [b[0] for b in bars.values()])},
                 title="size of each branch's output", xticklabels=labels_x, markers=True),
      viz.Curves({"pixels changed (%)": (x, [b[1] for b in bars.values()])},
                 title="prediction with the branch zeroed", xticklabels=labels_x, markers=True),
      viz.Curves({"mIoU change": (x, [b[2] for b in bars.values()])},
                 title="mIoU with the branch zeroed", xticklabels=labels_x, markers=True)],
      os.path.join(out, "aspp.png"), ncols=3)
  return (
      f"### ASPP branches\n\nOver the {len(data.images)} val and test images (mIoU of the whole "
      f"model {base:.3f}): the mean over pixels of the L2 norm (over channels) of each "
      "branch's output, and the prediction when that branch's output is replaced by zeros "
      "(the projection then sees only the others).\n\n"
      + writers.markdown_table(["branch", "mean L2 norm", "pixels whose class changes",
                                "mIoU without it", "change"], aspp_table)
      + "\n\n![ASPP branches](aspp.png)")


def run(options: common.Options) -> None:
  """Runs the experiment and writes the README section; see the module docstring."""
  logging.set_verbosity(logging.INFO)
  workdir, dataset = train_run(options)
  trained = load_run(workdir, dataset)
  config, dataset = trained.trainer.config, trained.trainer.dataset
  data = Images.of(dataset)
  water, city, shares = pick_images(data.labels, list(dataset.class_names),
                                    1 if options.toy else GROUP_SIZE)
  logits, inter = forward(trained, data.images)
  common.finish(options, __spec__.name, [
      f"Run: `{workdir}` ({config.model.name}, {config.data.name} at "
      f"{common.dims(config.data.image_size)}, latest checkpoint, step {trained.step}). "
      f"Images: the {len(data.images)} val and test images.",
      feature_maps_section(trained, data, inter, city[0], options.out),
      se_section(dataset, data, inter, {"water": water, "city": city}, shares, options.out),
      aspp_section(trained, data, logits, inter, options.out)])


if __name__ == "__main__":
  common.command(run, FOLDER, workdir=True)
