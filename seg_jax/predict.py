r"""Predicts class masks for image files with the model of a training workdir.

  python -m seg_jax.predict --workdir=/tmp/seg_dubai --input="photos/*.jpg" --output=/tmp/pred
  python -m seg_jax.predict --workdir=/tmp/seg_dubai --input=tile.jpg --output=/tmp/pred \
      --mode=slide --window=144,256 --overlap=0.25 --blend=smooth --tta=flips --save_probs
  python -m seg_jax.predict --model=/tmp/dubai.onnx --input=tile.jpg --output=/tmp/pred

`--model` predicts with an exported artifact (`seg_jax.export`: FILE.onnx or FILE.stablehlo and its
sidecar FILE.json) instead of a workdir, through the same modes and into the same outputs.

`--input` is an image file, a folder (the images in it, not in subfolders) or a glob. For each
image `<stem>`, `--output` receives `<stem>_mask.png` (a palette PNG of the input's height and
width whose pixel values are class indices and whose palette holds the class colours),
`<stem>_overlay.png` (the image blended with the class colours, a legend below) and, with
`--save_probs`, `<stem>_probs.npy` (float32 (H, W, C) class probabilities). See
`seg_jax.inference` for the modes, blending, TTA and scales.

Images are read as 8-bit RGB. Greyscale is repeated into three channels and an alpha channel is
dropped (the colours stored under transparent pixels are predicted), each with a warning naming
the file, since the model was trained on opaque colour images; 16-bit, 32-bit and float images
are refused. Normalisation uses the training data's mean and std, read from the workdir's
dataset.json.

Exit codes (`seg_jax.errors`, as every seg_jax command): 0 when every image was predicted; 1 when
some images failed (each one named; the others are still predicted); 2 when nothing could run (bad
flags, workdir or input; one line on stderr). Before this table, 1 and 2 were the other way round.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import os
import sys
import time
from typing import Any

from absl import flags
from absl import logging
import ml_collections
import numpy as np
from PIL import Image
from PIL import ImageOps
import tqdm

from seg_jax import artifact as artifact_lib
from seg_jax import cli
from seg_jax import errors
from seg_jax import inference
from seg_jax import models
from seg_jax import state as state_lib
from seg_jax import storage
from seg_jax import viz
from seg_jax import workdir as workdir_lib
from seg_jax import writers
from seg_jax.data import dubai
from seg_jax.data import palettes

FLAGS = flags.FLAGS


@functools.cache
def define_flags() -> None:
  """Defines this command's flags besides --workdir and --model (once per process)."""
  # Flag defaults are those of inference.predict.
  defaults = {k: p.default for k, p in inspect.signature(inference.predict).parameters.items()}
  flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                    "Checkpoint: best validation mIoU or latest.")
  flags.DEFINE_string("input", None, "Image file, folder of images, or glob.")
  flags.DEFINE_string("output", None, "Folder receiving the masks and overlays.")
  flags.DEFINE_enum("mode", defaults["mode"], list(inference.MODES),
                    "resize: to the training size and back; slide: windows at full size.")
  flags.DEFINE_list("window", [], "H,W of the window / resize target (default: the training "
                    "image size).")
  flags.DEFINE_float("overlap", defaults["overlap"],
                     "Share of a window overlapped by its neighbours.")
  flags.DEFINE_enum("blend", defaults["blend"], list(inference.BLENDS),
                    "Weighting of overlapping windows.")
  flags.DEFINE_enum("tta", defaults["tta"], list(inference.TTA_TRANSFORMS),
                    "Test-time augmentation.")
  flags.DEFINE_list("scales", [], "Scale factors whose predictions are averaged (default: 1 in "
                    "resize mode; in slide mode the training scale of the workdir's "
                    f"{workdir_lib.DATA_INFO_FILE}, the scale training showed objects at, e.g. "
                    "0.25 for tiles shrunk 4 times).")
  flags.DEFINE_integer("batch_size", defaults["batch_size"], "Windows per jitted call.")
  flags.DEFINE_bool("save_probs", False, "Also write <stem>_probs.npy.")
  flags.DEFINE_enum("overlay_palette", "dataset", list(OVERLAY_PALETTES),
                    "Colours of the overlays: the dataset's, or 'contrast', distinct colours "
                    "that stand out on aerial images (the masks keep the dataset's).")


# --overlay_palette: the colours an overlay is drawn in, from the dataset's palette.
OVERLAY_PALETTES = {"dataset": lambda palette: palette, "contrast": palettes.high_contrast}


def overlay_colors(palette: palettes.Palette, name: str) -> palettes.Palette:
  """The palette overlays are drawn in: `OVERLAY_PALETTES[name]` of the dataset's `palette`."""
  if name not in OVERLAY_PALETTES:
    raise errors.FlagError(f"--overlay_palette must be one of {tuple(OVERLAY_PALETTES)}, got "
                           f"{name!r}")
  return OVERLAY_PALETTES[name](palette)


def prediction_scales(info: workdir_lib.DataInfo, mode: str,
                      scales: tuple[float, ...]) -> tuple[float, ...]:
  """The scales to predict at, logged: `scales`, or when none are given 1 in resize mode (the
  image goes to the training size) and in slide mode the training scale of dataset.json, so that
  windows show objects at the size training showed them. A slide scale more than 2 times off the
  training scale is predicted with a warning."""
  trained = info.training_scale
  if mode != "slide":
    scales = tuple(scales) or (1.0,)
    logging.info("resize mode: each image resized to the window, at scales %s", scales)
    return scales
  if not scales:
    logging.info("slide mode at scale %.3g, the training scale in %s (training showed objects at "
                 "%.3g times their size in the files; --scales sets another)",
                 trained, workdir_lib.DATA_INFO_FILE, trained)
    return (trained,)
  for s in scales:
    if max(s / trained, trained / s) > 2:
      logging.warning("--scales=%g shows objects at %.2g times the size the model learned them "
                      "at (training scale %.3g, %s); leave --scales out to predict at the "
                      "training scale", s, s / trained, trained, workdir_lib.DATA_INFO_FILE)
  logging.info("slide mode at scales %s (training scale %.3g)", tuple(scales), trained)
  return tuple(scales)


# Modes read as they are or converted by PIL to RGB; alpha ("A", "a") is dropped.
GREY_MODES = ("1", "L", "LA", "La")
COLOUR_MODES = ("P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr")


@dataclasses.dataclass
class TrainedModel:
  """A workdir's model with its restored variables, config and dataset info."""

  model: Any
  variables: dict[str, Any]
  config: ml_collections.ConfigDict
  info: workdir_lib.DataInfo
  step: int

  def predict(self, image: np.ndarray, **kwargs) -> np.ndarray:
    """`inference.predict` with this model's mean/std, training size and compute dtype."""
    kwargs.setdefault("window", self.info.image_size)
    return inference.predict(self.model, self.variables, image, mean=self.info.mean,
                             std=self.info.std,
                             dtype=state_lib.dtype_from_name(self.config.model.dtype), **kwargs)

  @property
  def min_input_size(self) -> int:
    """The smallest window side the model accepts."""
    return models.min_input_size(self.config.model.name)

  @property
  def default_window(self) -> tuple[int, int]:
    """The window when none is given: the training size."""
    return tuple(self.info.image_size)

  def describe(self, workdir: str, checkpoint: str) -> str:
    """Where the weights come from, for the log."""
    return f"{checkpoint} checkpoint (step {self.step}) of {workdir}"


@dataclasses.dataclass
class ExportedModel:
  """An exported artifact (`seg_jax.export`) as a model to predict with, without a workdir."""

  artifact: artifact_lib.Artifact

  def __post_init__(self):
    if self.artifact.sidecar.outputs == "classes":
      raise errors.ArtifactError(f"{self.artifact.path} outputs class indices; prediction "
                                 "needs logits or probs (seg_jax.export --outputs=logits)")

  @property
  def info(self) -> workdir_lib.DataInfo:
    """Classes, colours, mean/std and training size, from the sidecar."""
    return self.artifact.sidecar.data

  @property
  def min_input_size(self) -> int:
    """The smallest window side the artifact accepts."""
    return self.artifact.sidecar.min_input_size

  @property
  def default_window(self) -> tuple[int, int]:
    """The window when none is given: a fixed-size artifact's size, else the training size."""
    return tuple(self.artifact.sidecar.input_size or self.info.image_size)

  def predict(self, image: np.ndarray, **kwargs) -> np.ndarray:
    """`inference.predict` through the artifact (which normalises), at `default_window`."""
    kwargs.setdefault("window", self.default_window)
    return inference.predict(self.artifact, None, image, **kwargs)

  def describe(self, workdir: str, checkpoint: str) -> str:
    """Where the weights come from, for the log."""
    del workdir, checkpoint
    sidecar = self.artifact.sidecar
    return f"{self.artifact.path} ({sidecar.format}, step {sidecar.step} of {sidecar.model})"


def load_model(workdir: str | None, model_file: str | None,
               which: str = "best") -> TrainedModel | ExportedModel:
  """The model of a workdir or of an exported artifact (exactly one of them given)."""
  if (workdir is None) == (model_file is None):
    raise errors.FlagError("give exactly one of --workdir (a training run) and --model (an "
                           "exported artifact)")
  if model_file is not None:
    return ExportedModel(artifact_lib.Artifact(model_file))
  return load_workdir(workdir, which)


def load_workdir(workdir: str, which: str = "best") -> TrainedModel:
  """Config, dataset info, model and variables of a training workdir, without writing to it."""
  run_dir = workdir_lib.RunDir(workdir)
  config = run_dir.load_config()
  info = run_dir.data_info()
  num_classes = len(info.class_names)
  if config.model.num_classes not in (0, num_classes):
    raise errors.WorkdirError(f"{workdir}: config model.num_classes={config.model.num_classes} "
                              f"but {workdir_lib.DATA_INFO_FILE} lists {num_classes} classes")
  model = state_lib.build_model(config, num_classes)
  variables, step = state_lib.restore_variables(run_dir, config, info, which, model)
  return TrainedModel(model, variables, config, info, step)


def find_images(spec: str) -> list[str]:
  """Image files named by `spec`: a file, a folder's images (by extension) or a glob."""
  if storage.has_magic(spec):
    paths = [p for p in storage.glob(spec) if storage.isfile(p)]
  elif storage.isdir(spec):
    files = [storage.join(spec, f) for f in storage.listdir(spec)
             if storage.isfile(storage.join(spec, f)) and not f.startswith(".")]
    paths = [p for p in files if os.path.splitext(p)[1].lower() in dubai.IMAGE_EXTENSIONS]
    if len(paths) < len(files):
      logging.warning("%s: %d files without an image extension %s left out: %s", spec,
                      len(files) - len(paths), dubai.IMAGE_EXTENSIONS,
                      [os.path.basename(p) for p in files if p not in paths][:10])
  elif storage.isfile(spec):
    paths = [spec]
  else:
    raise ValueError(f"{spec}: no such file or folder")
  if not paths:
    raise ValueError(f"{spec}: holds no image")
  return paths


def read_image(path: str) -> np.ndarray:
  """uint8 (H, W, 3) RGB of an image file; ValueError naming the file if it cannot be used.

  Greyscale is repeated into R, G and B and alpha is dropped, each with a logged warning.
  """
  try:
    im = Image.open(io.BytesIO(storage.read_bytes(path)))
    im.load()
    im = ImageOps.exif_transpose(im)  # the EXIF orientation, as training reads images
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f"{path}: cannot read image ({e})") from e
  with im:
    bands = im.getbands()
    if im.mode not in GREY_MODES + COLOUR_MODES:
      raise ValueError(f"{path}: image mode {im.mode!r} (bands {','.join(bands)}) is not "
                       "8-bit greyscale, RGB, RGBA, CMYK or palette; convert it to 8-bit RGB")
    if im.mode in ("P", "PA"):
      im = im.convert("RGBA")
      bands = im.getbands()
    alpha_band = next((b for b in bands if b in ("A", "a")), None)
    if alpha_band is not None:
      opaque = np.asarray(im.getchannel(alpha_band)) == 255
      if not opaque.all():
        logging.warning("%s: alpha channel dropped; %d of %d pixels are not opaque and are "
                        "predicted from their stored colours", path, (~opaque).sum(),
                        opaque.size)
    if im.mode in GREY_MODES:
      logging.warning("%s: greyscale image, its channel repeated into R, G and B (the model "
                      "was trained on colour images)", path)
      return np.repeat(np.asarray(im.convert("L"))[..., None], 3, axis=-1)
    return np.asarray(im.convert("RGB"))


def save_mask(path: str, labels: np.ndarray, palette) -> None:
  """Writes class indices (H, W) as a palette PNG whose palette is the class colours."""
  im = Image.fromarray(labels.astype(np.uint8), mode="L")
  im.putpalette(palette.as_array().ravel().tolist())  # "L" + palette = mode "P", same values
  writers.write_atomic(path, lambda f: im.save(f, format="PNG"))


def predict_file(trained: TrainedModel, path: str, output: str, *, save_probs: bool,
                 overlay: palettes.Palette | None = None, **options) -> str:
  """Predicts one image file into `output`; returns a one-line description of the result.

  The mask holds the dataset's colours; the overlay is drawn in `overlay` (None: those too).
  """
  image = read_image(path)
  start = time.time()
  probs = trained.predict(image, **options)
  labels = np.argmax(probs, axis=-1).astype(np.uint8)
  stem = storage.join(output, os.path.splitext(os.path.basename(path))[0])
  palette = trained.info.palette
  save_mask(stem + "_mask.png", labels, palette)
  overlay = overlay or palette
  writers.write_png(stem + "_overlay.png",
                    viz.with_legend(viz.overlay(image, labels, overlay), overlay))
  if save_probs:
    writers.write_atomic(stem + "_probs.npy", lambda f: np.save(f, probs))
  shares = np.bincount(labels.ravel(), minlength=len(palette.names)) / labels.size
  return (f"{path}: {image.shape[1]}x{image.shape[0]} in {time.time() - start:.1f}s, "
          + ", ".join(f"{n} {s:.0%}" for n, s in zip(palette.names, shares)))


def run(workdir: str | None, input_spec: str, output: str, *, checkpoint: str,
        window: tuple[int, int] | None, save_probs: bool, model_file: str | None = None,
        overlay_palette: str = "dataset", **options) -> int:
  """Predicts every image of `input_spec` into `output`; returns the exit code.

  The model is the workdir's, or with `model_file` (and `workdir` None) an exported artifact's.
  `overlay_palette` colours the overlays (`OVERLAY_PALETTES`). `window` None means the training image size (a fixed-size artifact's size); `options` are the
  other options of `inference.predict`, all given: mode, overlap, blend, tta, scales, batch_size;
  scales () means the default of `prediction_scales`.
  """
  try:
    trained = load_model(workdir, model_file, checkpoint)
    window = tuple(window or trained.default_window)
    options["scales"] = prediction_scales(trained.info, options["mode"], options["scales"])
    overlay = overlay_colors(trained.info.palette, overlay_palette)
    inference.check_options(window=window, **options, min_size=trained.min_input_size)
    paths = find_images(input_spec)
    if storage.isfile(output):
      raise ValueError(f"--output {output} is a file: it must be a folder (new or existing) "
                       "that receives the masks and overlays")
    storage.makedirs(output)
  except (OSError, ValueError, errors.RunError) as e:
    cli.print_error(getattr(e, "kind", "input"), str(e))
    return errors.EXIT_USER_ERROR
  logging.info("%s; %d images", trained.describe(workdir, checkpoint), len(paths))
  failures: list[str] = []
  stems: dict[str, str] = {}
  with tqdm.tqdm(total=len(paths), unit="image", disable=None) as images_bar, \
      tqdm.tqdm(unit="window", leave=False, disable=None) as windows_bar:

    def progress(done: int, total: int) -> None:
      windows_bar.total, windows_bar.n = total, done
      windows_bar.refresh()

    for path in paths:
      stem = os.path.splitext(os.path.basename(path))[0]
      windows_bar.reset()
      try:
        if stem in stems:
          raise ValueError(f"{path}: its outputs would overwrite those of {stems[stem]} (same "
                           f"name stem {stem!r}); rename one")
        stems[stem] = path
        logging.info("%s", predict_file(trained, path, output, save_probs=save_probs,
                                        overlay=overlay, window=window, progress=progress,
                                        **options))
      except (OSError, ValueError, MemoryError) as e:
        failures.append(str(e) if path in str(e) else f"{path}: {e}")
        logging.error("%s", failures[-1])
      images_bar.update()
  print(f"predicted {len(paths) - len(failures)} of {len(paths)} images into {output}")
  if failures:
    print(f"{len(failures)} failed:", file=sys.stderr)
    for message in failures:
      print(f"  {message}", file=sys.stderr)
    return errors.EXIT_SOME_FAILED
  return errors.EXIT_OK


def main(argv) -> int:
  """Runs `run` with the parsed flags; returns the exit code."""
  del argv
  try:
    window = tuple(int(v) for v in FLAGS.window) or None
    scales = tuple(float(v) for v in FLAGS.scales)
  except ValueError as e:
    raise errors.FlagError(f"--window must be H,W integers and --scales numbers ({e})") from e
  return run(FLAGS.workdir, FLAGS.input, FLAGS.output, checkpoint=FLAGS.checkpoint,
             window=window, save_probs=FLAGS.save_probs, model_file=FLAGS.model, mode=FLAGS.mode,
             overlay_palette=FLAGS.overlay_palette,
             overlap=FLAGS.overlap, blend=FLAGS.blend, tta=FLAGS.tta, scales=scales,
             batch_size=FLAGS.batch_size)


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, shared=["workdir", "model"],
          required=["input", "output"])
