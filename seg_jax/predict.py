r"""Predicts class masks for image files and rasters with the model of a training workdir.

  python -m seg_jax.predict --workdir=/tmp/seg_dubai --input="photos/*.jpg" --output=/tmp/pred
  python -m seg_jax.predict --workdir=/tmp/seg_dubai --input=tile.jpg --output=/tmp/pred \
      --mode=slide --window=144,256 --overlap=0.25 --blend=smooth --tta=flips --save_probs
  python -m seg_jax.predict --model=/tmp/dubai.onnx --input=tile.jpg --output=/tmp/pred

`--model` predicts with an exported artifact (`seg_jax.export`: FILE.onnx or FILE.stablehlo and its
sidecar FILE.json) instead of a workdir, through the same modes and into the same outputs.

`--input` is an image file, a folder (the images in it, not in subfolders) or a glob, or several
of these separated by commas. For each
JPEG/PNG image `<stem>`, `--output` receives `<stem>_mask.png` (a palette PNG of the input's height
and width whose pixel values are class indices and whose palette holds the class colours),
`<stem>_overlay.png` (the image blended with the class colours, a legend below) and, with
`--save_probs`, `<stem>_probs.npy` (float32 (H, W, C) class probabilities). See
`seg_jax.inference` for the modes, blending, TTA and scales.

Images are read as 8-bit RGB. Greyscale is repeated into three channels and an alpha channel is
dropped (the colours stored under transparent pixels are predicted), each with a warning naming
the file, since the model was trained on opaque colour images; 16-bit, 32-bit and float images
are refused. Normalisation uses the training data's mean and std, read from the workdir's
dataset.json.

Rasters (`.tif`, `.tiff`, `.vrt`: GeoTIFFs or anything GDAL opens, any band count, uint8, uint16,
int16 or float32) are read, predicted and written window by window, so memory is bounded by a
strip one window high (window height x scene width x classes float32: 123 MB for 6 classes at
256 x 20000) and a row of output tiles, not by the scene:

  python -m seg_jax.predict --workdir=/tmp/seg_naip --input=scene.tif --output=/tmp/pred --cog

- the model reads the bands its training rasters gave it (dataset.json `bands`, by number); a
  raster with fewer is refused, one with more has the rest left out with a warning;
- a pixel is nodata where any band read holds the file's nodata value or is not finite; it is
  fed to the model as the training band mean (as in training) and is nodata in every output;
- slide mode at the raster's own resolution (scale 1; `--mode` applies to JPEG/PNG inputs,
  `--scales` other than 1 is refused), with `--window`, `--overlap`, `--blend`, `--tta` and
  `--batch_size` as for images; every window is predicted, nodata or not; an exported artifact
  (`--model`) takes uint8 rasters only;
- `<stem>_classes.tif`: one uint8 band of class indices on the input's grid (size, CRS,
  transform), 255 where the input is nodata, the dataset's colours as its colour table, tiled
  256x256 and DEFLATE-compressed; `--cog` writes it (and the probabilities) as a Cloud-Optimized
  GeoTIFF with overviews (nearest for classes, average for probabilities);
- `--save_probs`: `<stem>_probs.tif`, one uint8 band per class named by it, round(p x 254), 255
  where nodata, band scale 1/254 (`seg_jax.data.geotiff`);
- `<stem>_overlay.png`: the red, green and blue bands (`data.rgb_bands`; the first band in grey
  without them) stretched between their 2nd and 98th percentiles, blended with the classes,
  nodata in the palette's ignore colour, a legend below; a scene longer than `PREVIEW_SIDE`
  (2048) pixels is shown by every n-th pixel.

`--mosaic=NAME` stitches the raster inputs into one scene by their transforms
(`seg_jax.data.mosaic`: one CRS, band count, pixel type and pixel size, corners on one pixel
grid) and predicts it as one, so windows span the tiles' edges; its outputs are
`NAME_classes.tif` (and the others) on the grid of the tiles' union, nodata where no tile lies:

  python -m seg_jax.predict --workdir=/tmp/seg_naip --input="tiles/*.tif" --output=/tmp/pred \
      --mosaic=area

Every raster's header is checked before anything compiles: a file GDAL cannot open, one cut short
(its TIFF blocks end past the file's end), one with no bands or too few, or of another pixel type
fails with one line naming it, and the other inputs are still predicted.

Exit codes (`seg_jax.errors`, as every seg_jax command): 0 when every image was predicted; 1 when
some images failed (each one named; the others are still predicted); 2 when nothing could run (bad
flags, workdir or input; one line on stderr). Before this table, 1 and 2 were the other way round.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import io
import os
import sys
import time
from collections.abc import Callable, Sequence
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
from seg_jax import scenes
from seg_jax import state as state_lib
from seg_jax import storage
from seg_jax import viz
from seg_jax import workdir as workdir_lib
from seg_jax import writers
from seg_jax.data import dubai
from seg_jax.data import geotiff
from seg_jax.data import mosaic as mosaic_lib
from seg_jax.data import palettes
from seg_jax.data import raster
from seg_jax.data import sources
from seg_jax.data import windows

FLAGS = flags.FLAGS


@functools.cache
def define_flags() -> None:
  """Defines this command's flags besides --workdir and --model (once per process)."""
  # Flag defaults are those of inference.predict.
  defaults = {k: p.default for k, p in inspect.signature(inference.predict).parameters.items()}
  flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                    "Checkpoint: best validation mIoU or latest.")
  flags.DEFINE_string("input", None, "Image file, folder of images, or glob; several "
                      "separated by commas.")
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
  flags.DEFINE_bool("save_probs", False, "Also write the class probabilities: <stem>_probs.npy "
                    "(JPEG/PNG), <stem>_probs.tif (rasters: uint8, one band per class).")
  flags.DEFINE_bool("cog", False, "Write the GeoTIFFs of raster inputs as Cloud-Optimized "
                    "GeoTIFFs with overviews.")
  flags.DEFINE_string("mosaic", "", "Stitch the raster inputs by their transforms into one "
                      "scene of this name and predict it as one (NAME_classes.tif, ...).")
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
                             std=self.info.std, value_scale=self.info.scale,
                             dtype=state_lib.dtype_from_name(self.config.model.dtype), **kwargs)

  def predict_scene(self, scene: windows.ImageScene, counts: dict[str, int], **kwargs):
    """`scenes.strips` of a raster read window by window, with this model's mean/std, training
    size and compute dtype."""
    kwargs.setdefault("window", self.info.image_size)
    return scenes.strips(self.model, self.variables, scene, mean=self.info.mean,
                         std=self.info.std, scale=self.info.scale,
                         dtype=state_lib.dtype_from_name(self.config.model.dtype),
                         ignore_index=scene.NODATA, counts=counts, **kwargs)

  def check_raster(self, info: raster.RasterInfo) -> None:
    """Nothing to check beyond the bands: a run's dataset.json does not record a pixel type."""
    del info

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

  def predict_scene(self, scene: windows.ImageScene, counts: dict[str, int], **kwargs):
    """`scenes.strips` of a raster read window by window, through the artifact."""
    kwargs.setdefault("window", self.default_window)
    return scenes.strips(self.artifact, None, scene, mean=None, std=None, scale=1.0, dtype=None,
                         ignore_index=scene.NODATA, counts=counts, **kwargs)

  def check_raster(self, info: raster.RasterInfo) -> None:
    """ValueError naming a raster whose pixels the artifact does not take (it takes uint8)."""
    if info.dtype != "uint8":
      raise ValueError(f"{info.path}: {info.dtype} pixels, but {self.artifact.path} takes uint8 "
                       "pixels only; predict it with the run's --workdir")

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


# Inputs read through GDAL (rasterio) and predicted window by window into GeoTIFFs; the other
# images are read by PIL as 8-bit RGB.
RASTER_EXTENSIONS = (".tif", ".tiff", ".vrt")
INPUT_EXTENSIONS = tuple(dict.fromkeys(dubai.IMAGE_EXTENSIONS + RASTER_EXTENSIONS))
# The longest side of a raster's overlay: a larger scene is shown by every n-th pixel.
PREVIEW_SIDE = 2048


def is_raster(path: str) -> bool:
  """Whether `path` is predicted as a raster (by its extension, `RASTER_EXTENSIONS`)."""
  return os.path.splitext(path)[1].lower() in RASTER_EXTENSIONS


def find_images(spec: str) -> list[str]:
  """Image files named by `spec`: a file, a folder's images (by extension) or a glob, or several
  of these separated by commas (each file once, in the order named)."""
  if "," in spec:
    return list(dict.fromkeys(p for part in spec.split(",") if part
                              for p in find_images(part)))
  if storage.has_magic(spec):
    paths = sorted(p for p in storage.glob(spec) if storage.isfile(p))
  elif storage.isdir(spec):
    files = sorted(storage.join(spec, f) for f in storage.listdir(spec)
                   if storage.isfile(storage.join(spec, f)) and not f.startswith("."))
    paths = [p for p in files if os.path.splitext(p)[1].lower() in INPUT_EXTENSIONS]
    if len(paths) < len(files):
      logging.warning("%s: %d files without an image extension %s left out: %s", spec,
                      len(files) - len(paths), INPUT_EXTENSIONS,
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


def _stem(output: str, path: str) -> str:
  """The path in `output` that the outputs of input `path` start with."""
  return storage.join(output, os.path.splitext(os.path.basename(path))[0])


def _shares(names: Sequence[str], counts: np.ndarray) -> str:
  """"name share, ..." of class pixel `counts`."""
  return ", ".join(f"{n} {c / max(counts.sum(), 1):.0%}" for n, c in zip(names, counts))


def predict_file(trained: TrainedModel, path: str, output: str, *, save_probs: bool,
                 overlay: palettes.Palette | None = None, **options) -> str:
  """Predicts one image file into `output`; returns a one-line description of the result.

  The mask holds the dataset's colours; the overlay is drawn in `overlay` (None: those too).
  """
  image = read_image(path)
  start = time.time()
  probs = trained.predict(image, **options)
  labels = np.argmax(probs, axis=-1).astype(np.uint8)
  stem = _stem(output, path)
  palette = trained.info.palette
  save_mask(stem + "_mask.png", labels, palette)
  overlay = overlay or palette
  writers.write_png(stem + "_overlay.png",
                    viz.with_legend(viz.overlay(image, labels, overlay), overlay))
  if save_probs:
    writers.write_atomic(stem + "_probs.npy", lambda f: np.save(f, probs))
  counts = np.bincount(labels.ravel(), minlength=len(palette.names))
  return (f"{path}: {image.shape[1]}x{image.shape[0]} in {time.time() - start:.1f}s, "
          + _shares(palette.names, counts))


def check_raster(trained: TrainedModel | ExportedModel, path: str) -> raster.RasterInfo:
  """The header of raster `path` if `trained` can predict it, read before anything compiles.

  Raises ValueError naming the file: GDAL cannot open it, it is cut short, it has no bands or
  fewer than the model reads, its pixel type is not read. Bands past those the model reads are
  left out with a warning.
  """
  info = raster.describe(path)
  bands = tuple(trained.info.bands)
  if info.count < max(bands):
    raise ValueError(f"{path}: {info.count} bands, but the model was trained on {len(bands)} "
                     f"(band numbers {bands} of its training rasters, "
                     f"{workdir_lib.DATA_INFO_FILE})")
  if info.dtype not in raster.DTYPES:
    raise ValueError(f"{path}: {info.dtype} pixels are not read; rasters hold one of "
                     f"{raster.DTYPES}")
  trained.check_raster(info)
  if info.count > max(bands):
    logging.warning("%s: %d bands, but the model reads band numbers %s only: bands %d to %d are "
                    "not read", path, info.count, bands, max(bands) + 1, info.count)
  return info


def preview_step(shape: Sequence[int]) -> int:
  """Every how many pixels a raster of `shape` (H, W) is shown in its overlay (`PREVIEW_SIDE`)."""
  return max(1, -(-max(shape) // PREVIEW_SIDE))


def _preview(scene: windows.ImageScene, step: int, classes: np.ndarray,
             info: workdir_lib.DataInfo, palette: palettes.Palette) -> np.ndarray:
  """The overlay of a raster: every `step`-th pixel, its red, green and blue bands stretched
  (`Bands.preview`), `classes` blended in `palette`'s colours, nodata in its ignore colour, a
  legend below."""
  reads = [scene.read(y, 0, 1, scene.shape[1]) for y in range(0, scene.shape[0], step)]
  image = np.concatenate([r["image"][:, ::step] for r in reads])
  nodata = np.concatenate([r["label"][:, ::step] for r in reads]) == scene.NODATA
  bands = sources.Bands(numbers=info.bands, rgb=info.rgb_bands, scale=info.scale)
  picture = viz.overlay(bands.preview(image), classes, palette)
  picture[nodata] = palette.ignore_color or palettes.BLACK
  return viz.with_legend(picture, palette)


def predict_raster(trained: TrainedModel | ExportedModel,
                   info: raster.RasterInfo | mosaic_lib.Mosaic, output: str,
                   *, save_probs: bool, cog: bool = False, overlay: palettes.Palette | None = None,
                   progress: Callable[[int, int], None] | None = None, **options) -> str:
  """Predicts raster (or mosaic) `info` window by window into `output`; returns a one-line
  description.

  Writes `<stem>_classes.tif`, with `save_probs` `<stem>_probs.tif` (`seg_jax.data.geotiff`;
  `cog`: Cloud-Optimized) and `<stem>_overlay.png`. `options` are those of `scenes.strips`.
  """
  start, stem, palette = time.time(), _stem(output, info.path), trained.info.palette
  fill = raster.fill_values(trained.info.mean, trained.info.scale, info.dtype)
  counts, pixels = {}, np.zeros(len(palette.names) + 1, np.int64)  # the last: nodata
  step, preview = preview_step((info.height, info.width)), []
  total = inference.window_count((info.height, info.width), options["window"],
                                 options["overlap"])
  with contextlib.ExitStack() as stack:
    stack.enter_context(raster.gdal_env())  # a small block cache for the written files too
    scene_type = mosaic_lib.MosaicScene if isinstance(info, mosaic_lib.Mosaic) else (
        windows.ImageScene)
    scene = stack.enter_context(scene_type(info, trained.info.bands, fill))
    outputs = [stack.enter_context(geotiff.class_writer(stem + "_classes.tif", scene.dataset,
                                                        palette, cog=cog))]
    if save_probs:
      outputs.append(stack.enter_context(geotiff.probs_writer(
          stem + "_probs.tif", scene.dataset, palette.names, cog=cog)))
    for top, probs, labels in trained.predict_scene(scene, counts, **options):
      nodata = labels == scene.NODATA
      classes = geotiff.encode_classes(np.argmax(probs, axis=-1), nodata)
      outputs[0].write(classes)
      if save_probs:
        outputs[1].write(geotiff.encode_probs(probs, nodata))
      pixels += np.bincount(np.minimum(classes.ravel(), len(palette.names)),
                            minlength=len(pixels))
      preview.append(classes[0, (-top) % step::step, ::step])
      if progress is not None:
        progress(counts.get("predicted", 0), total)
    picture = _preview(scene, step, np.concatenate(preview), trained.info, overlay or palette)
  writers.write_png(stem + "_overlay.png", picture)
  return (f"{info.path}: {info.width}x{info.height} in {time.time() - start:.1f}s, "
          f"{counts.get('predicted', 0)} windows, nodata {pixels[-1] / pixels.sum():.0%}; "
          + _shares(palette.names, pixels[:-1]))


def _raster_options(trained: TrainedModel | ExportedModel, options: dict[str, Any],
                    scales: tuple[float, ...]) -> dict[str, Any]:
  """The options rasters are predicted with: slide mode at their own resolution (scale 1).

  Raises FlagError for --scales other than 1, which rasters do not take.
  """
  if scales not in ((), (1.0,)):
    raise errors.FlagError(f"--scales={','.join(map(str, scales))}: raster inputs are predicted "
                           "window by window at their own resolution (scale 1); --scales "
                           "applies to JPEG/PNG inputs")
  if options["mode"] != "slide":
    logging.info("raster inputs are predicted in slide mode, window by window (--mode=%s "
                 "applies to JPEG/PNG inputs)", options["mode"])
  prediction_scales(trained.info, "slide", (1.0,))  # warns if far off the training scale
  return dict(options, mode="slide", scales=(1.0,))


def _setup(workdir: str | None, input_spec: str, output: str, *, checkpoint: str,
           window: tuple[int, int] | None, model_file: str | None, overlay_palette: str,
           options: dict[str, Any]):
  """(model, overlay palette, input paths, {kind: options}) of `run`'s arguments.

  The options are those of JPEG/PNG inputs ("image") and of rasters ("raster"), checked.
  Raises ValueError, OSError or RunError when nothing can run.
  """
  trained = load_model(workdir, model_file, checkpoint)
  options = dict(options, window=tuple(window or trained.default_window))
  user_scales = tuple(options["scales"])
  options["scales"] = prediction_scales(trained.info, options["mode"], user_scales)
  overlay = overlay_colors(trained.info.palette, overlay_palette)
  paths = find_images(input_spec)
  kinds = {"image": options}
  if any(is_raster(p) for p in paths):
    kinds["raster"] = _raster_options(trained, options, user_scales)
  for kind_options in kinds.values():
    inference.check_options(**kind_options, min_size=trained.min_input_size)
  if storage.isfile(output):
    raise ValueError(f"--output {output} is a file: it must be a folder (new or existing) "
                     "that receives the masks and overlays")
  storage.makedirs(output)
  return trained, overlay, paths, kinds


def _check_rasters(trained, paths: Sequence[str], failures: dict[str, str]):
  """{path: header} of the rasters of `paths` that can be predicted; the others' errors go into
  `failures` (logged), all before anything compiles."""
  infos = {}
  for path in filter(is_raster, paths):
    try:
      infos[path] = check_raster(trained, path)
    except ValueError as e:
      failures[path] = str(e) if path in str(e) else f"{path}: {e}"
      logging.error("%s", failures[path])
  return infos


def _plan_mosaic(name: str, paths: Sequence[str], rasters: dict[str, raster.RasterInfo],
                 failures: dict[str, str]) -> mosaic_lib.Mosaic:
  """The mosaic `name` of every input, all rasters whose headers were read (`_check_rasters`).

  Raises ValueError naming the first input that is not such a raster or does not fit the grid.
  """
  for path in paths:
    if path in failures:
      raise ValueError(f"--mosaic={name}: {failures[path]}")
    if path not in rasters:
      raise ValueError(f"--mosaic={name}: {path} is not a raster (.tif, .tiff, .vrt); a mosaic "
                       "stitches rasters only")
  plan = mosaic_lib.plan(name, [rasters[p] for p in paths])
  logging.info("mosaic %s: %d rasters on a grid of %dx%d, %.0f%% of it covered", name,
               len(plan.tiles), plan.width, plan.height, 100 * plan.tile_share)
  if plan.tile_share < 0.5:
    logging.warning("mosaic %s: the rasters cover %.0f%% of their bounding grid, and every "
                    "window of it is predicted; rasters far apart are better predicted one by "
                    "one", name, 100 * plan.tile_share)
  return plan


def run(workdir: str | None, input_spec: str, output: str, *, checkpoint: str,
        window: tuple[int, int] | None, save_probs: bool, model_file: str | None = None,
        overlay_palette: str = "dataset", cog: bool = False, mosaic: str = "",
        **options) -> int:
  """Predicts every image of `input_spec` into `output`; returns the exit code.

  The model is the workdir's, or with `model_file` (and `workdir` None) an exported artifact's.
  `overlay_palette` colours the overlays (`OVERLAY_PALETTES`). `window` None means the training
  image size (a fixed-size artifact's size); `options` are the other options of
  `inference.predict`, all given: mode, overlap, blend, tta, scales, batch_size; scales () means
  the default of `prediction_scales`. Rasters (`RASTER_EXTENSIONS`) are checked first, then
  predicted window by window in slide mode (`predict_raster`; `cog` for Cloud-Optimized
  GeoTIFFs); the other images as a whole (`predict_file`). `mosaic`: the rasters as one scene.
  """
  try:
    trained, overlay, paths, kinds = _setup(
        workdir, input_spec, output, checkpoint=checkpoint, window=window,
        model_file=model_file, overlay_palette=overlay_palette, options=options)
  except (OSError, ValueError, errors.RunError) as e:
    cli.print_error(getattr(e, "kind", "input"), str(e))
    return errors.EXIT_USER_ERROR
  logging.info("%s; %d images", trained.describe(workdir, checkpoint), len(paths))
  failures: dict[str, str] = {}
  rasters = _check_rasters(trained, paths, failures)
  if mosaic:
    try:
      rasters = {mosaic: _plan_mosaic(mosaic, paths, rasters, failures)}
    except ValueError as e:
      cli.print_error("input", str(e))
      return errors.EXIT_USER_ERROR
    paths, failures = [mosaic], {}
  stems: dict[str, str] = {}
  with tqdm.tqdm(total=len(paths), initial=len(failures), unit="image",
                 disable=None) as images_bar, \
      tqdm.tqdm(unit="window", leave=False, disable=None) as windows_bar:

    def progress(done: int, total: int) -> None:
      windows_bar.total, windows_bar.n = total, done
      windows_bar.refresh()

    for path in (p for p in paths if p not in failures):
      stem = os.path.splitext(os.path.basename(path))[0]
      windows_bar.reset()
      try:
        if stem in stems:
          raise ValueError(f"{path}: its outputs would overwrite those of {stems[stem]} (same "
                           f"name stem {stem!r}); rename one")
        stems[stem] = path
        if path in rasters:
          done = predict_raster(trained, rasters[path], output, save_probs=save_probs, cog=cog,
                                overlay=overlay, progress=progress, **kinds["raster"])
        else:
          done = predict_file(trained, path, output, save_probs=save_probs, overlay=overlay,
                              progress=progress, **kinds["image"])
        logging.info("%s", done)
      except (OSError, ValueError, MemoryError) as e:
        failures[path] = str(e) if path in str(e) else f"{path}: {e}"
        logging.error("%s", failures[path])
      images_bar.update()
  return _report(paths, failures, output)


def _report(paths: Sequence[str], failures: dict[str, str], output: str) -> int:
  """Prints what was predicted and what failed; returns the exit code."""
  print(f"predicted {len(paths) - len(failures)} of {len(paths)} images into {output}")
  if failures:
    print(f"{len(failures)} failed:", file=sys.stderr)
    for path in paths:
      if path in failures:
        print(f"  {failures[path]}", file=sys.stderr)
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
             overlay_palette=FLAGS.overlay_palette, cog=FLAGS.cog, mosaic=FLAGS.mosaic,
             overlap=FLAGS.overlap, blend=FLAGS.blend, tta=FLAGS.tta, scales=scales,
             batch_size=FLAGS.batch_size)


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, shared=["workdir", "model"],
          required=["input", "output"])
