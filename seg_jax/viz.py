"""Pictures of results: label maps, overlays with a class legend, prediction grids, confusion
matrix, training curves, and grids of images and line plots for the course experiments. The only
module that imports matplotlib."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from seg_jax import writers
from seg_jax.data.palettes import encode_mask
from seg_jax.data.palettes import palette_colors


def prediction_panel(image: np.ndarray, label: np.ndarray, pred: np.ndarray, palette: Any
                     ) -> np.ndarray:
  """uint8 (H, 3W, 3) side by side: image | true labels | predicted labels."""
  image = np.clip(np.asarray(image, np.float32), 0, 255).astype(np.uint8)
  return np.concatenate([image, encode_mask(label, palette), encode_mask(pred, palette)], axis=1)


def save_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path: str,
                          title: str = "") -> None:
  """Writes a PNG of the row-normalised confusion matrix (rows: true class) with counts."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  cm = np.asarray(cm, np.float64)
  rows = cm.sum(axis=1, keepdims=True)
  norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
  n = len(class_names)
  fig, ax = plt.subplots(figsize=(1.1 * n + 3, 1.0 * n + 2.5))
  im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
  ax.set_xticks(range(n), class_names, rotation=45, ha="right")
  ax.set_yticks(range(n), class_names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  if title:
    ax.set_title(title)
  for i in range(n):
    for j in range(n):
      ax.text(j, i, f"{norm[i, j]:.2f}\n{int(cm[i, j])}", ha="center", va="center", fontsize=7,
              color="white" if norm[i, j] > 0.5 else "black")
  fig.tight_layout()
  writers.write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100))
  plt.close(fig)


# The axis of every score plot (mIoU, accuracy, Dice): a flat curve looks flat.
SCORE_RANGE = (0.0, 1.0)


def save_curves(runs: dict[str, list[dict]], path: str, keys: Sequence[str] = ("miou", "loss")
                ) -> None:
  """Writes a PNG with one panel per score in `keys` against step, one line per run.

  Scores (keys without "loss") are drawn on `SCORE_RANGE`, losses on their own range.

  Args:
    runs: run label -> its metrics.jsonl records (dicts with "step" and the keys).
    path: output PNG path.
    keys: scalar record fields to plot.
  """
  panels = []
  for key in keys:
    curves = {}
    for label, records in runs.items():
      points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
      if points:
        curves[label] = tuple(zip(*points))
    panels.append(Curves(curves, xlabel="step", ylabel=f"val {key}", markers=True,
                         ylim=None if "loss" in key else SCORE_RANGE))
  save_curve_panels(panels, path, ncols=len(keys), panel_inches=5, height_inches=3.5)


ERROR_COLOR = (255, 0, 0)


def _pyplot():
  """matplotlib.pyplot on the file-only Agg backend (imported on first use)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _font(size: int) -> ImageFont.ImageFont:
  return ImageFont.load_default(size=size)


def _text_size(width: int) -> int:
  """Font size in pixels for a picture `width` pixels wide: readable when shown whole."""
  return int(np.clip(width // 60, 11, 40))


def overlay(image: np.ndarray, labels: np.ndarray, palette: Any, alpha: float = 0.5
            ) -> np.ndarray:
  """uint8 (H, W, 3): the image blended with each pixel's class colour.

  Pixels of no class (labels outside [0, num_classes), e.g. ignore_index) keep the image.
  """
  image = np.clip(np.asarray(image, np.float32), 0, 255)
  labels = np.asarray(labels)
  colours = encode_mask(labels, palette).astype(np.float32)
  has_class = ((labels >= 0) & (labels < len(palette_colors(palette))))[..., None]
  blended = np.where(has_class, (1 - alpha) * image + alpha * colours, image)
  return np.round(blended).astype(np.uint8)


def legend(palette: Any, width: int, extra: Sequence[tuple[str, Sequence[int]]] = ()
           ) -> np.ndarray:
  """uint8 (h, width, 3) white strip: a swatch of each class colour and its name, wrapped.

  `palette` is a `Palette` (its names are used); `extra` adds (name, colour) entries such as the
  error colour of `prediction_grid`.
  """
  entries = list(zip(palette.names, palette.colors)) + list(extra)
  size = _text_size(width)
  font, pad = _font(size), max(size // 2, 3)
  measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  x, y, placed = pad, pad, []
  for name, color in entries:
    item = size + pad // 2 + int(measure.textlength(name, font=font)) + 2 * pad
    if x > pad and x + item > width:
      x, y = pad, y + size + pad
    placed.append((x, y, name, tuple(int(c) for c in color)))
    x += item
  strip = Image.new("RGB", (width, y + size + pad), (255, 255, 255))
  draw = ImageDraw.Draw(strip)
  for x, y, name, color in placed:
    draw.rectangle([x, y, x + size - 1, y + size - 1], fill=color, outline=(0, 0, 0))
    draw.text((x + size + pad // 2, y + size // 2), name, fill=(0, 0, 0), font=font, anchor="lm")
  return np.asarray(strip)


def with_legend(picture: np.ndarray, palette: Any,
                extra: Sequence[tuple[str, Sequence[int]]] = ()) -> np.ndarray:
  """The picture with `legend(palette, its width, extra)` below it."""
  return np.concatenate([picture, legend(palette, picture.shape[1], extra)], axis=0)


def error_map(image: np.ndarray, labels: np.ndarray, preds: np.ndarray, num_classes: int,
              color: Sequence[int] = ERROR_COLOR) -> np.ndarray:
  """uint8 (H, W, 3): the image in light grey with wrongly predicted pixels in `color`.

  Pixels whose label is no class (e.g. ignore_index) are not scored and stay grey.
  """
  image = np.asarray(image, np.float32)
  grey = 0.5 * (image @ np.array([0.299, 0.587, 0.114], np.float32)) + 100
  out = np.repeat(np.clip(grey, 0, 255)[..., None], 3, axis=-1).astype(np.uint8)
  labels = np.asarray(labels)
  out[(labels < num_classes) & (labels != np.asarray(preds))] = color
  return out


def prediction_grid(images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                    preds: Sequence[np.ndarray], palette: Any, gap: int = 4) -> np.ndarray:
  """uint8 picture, one row per example: image | truth | prediction | errors, legend below.

  All examples must share one size; errors (wrong pixels in red) are counted where the label is
  a class.
  """
  num_classes = len(palette_colors(palette))
  shapes = {np.shape(x)[:2] for x in list(images) + list(labels) + list(preds)}
  if len(shapes) != 1:
    raise ValueError(f"images, labels and predictions must share one (H, W), got {shapes}")
  (h, w), columns = shapes.pop(), ("image", "truth", "prediction", "errors")
  white = np.full((h, gap, 3), 255, np.uint8)
  rows = []
  for image, label, pred in zip(images, labels, preds):
    image = np.clip(np.asarray(image, np.float32), 0, 255).astype(np.uint8)
    panels = [image, encode_mask(label, palette), encode_mask(pred, palette),
              error_map(image, label, pred, num_classes)]
    rows.append(np.concatenate([p for panel in panels for p in (panel, white)][:-1], axis=1))
  width = rows[0].shape[1]
  size = _text_size(width)
  header = Image.new("RGB", (width, size + gap * 2), (255, 255, 255))
  draw = ImageDraw.Draw(header)
  for k, title in enumerate(columns):
    draw.text((k * (w + gap) + w // 2, gap + size // 2), title, fill=(0, 0, 0), font=_font(size),
              anchor="mm")
  spaced = [np.asarray(header)]
  for row in rows:
    spaced += [row, np.full((gap, width, 3), 255, np.uint8)]
  return with_legend(np.concatenate(spaced, axis=0), palette,
                     extra=(("error", ERROR_COLOR), ("not scored", palette.ignore_color)))


def save_run_curves(records: Sequence[dict], path: str, title: str = "") -> None:
  """Writes a PNG of loss and mIoU against step from a run's metrics.jsonl records.

  Each record has "step" and "split": "train" records give the training "loss", evaluation
  records ("val", "test") their "loss" and "miou". Left panel: the loss of every split;
  right panel: the mIoU of every evaluated split, on `SCORE_RANGE`.
  """
  splits = sorted({r["split"] for r in records}, key=lambda s: (s != "train", s))
  panels = []
  for key, name in (("loss", "loss"), ("miou", "mIoU")):
    curves = {}
    for split in splits:
      rows = sorted((r for r in records if r["split"] == split), key=lambda r: r["step"])
      points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
      if points:
        curves[f"{split} {name}"] = tuple(zip(*points))
    panels.append(Curves(curves, xlabel="step", ylabel=name, markers=True,
                         ylim=SCORE_RANGE if key == "miou" else None))
  save_curve_panels(panels, path, ncols=2, title=title, panel_inches=5, height_inches=3.8)


@dataclasses.dataclass(frozen=True)
class Panel:
  """One array of a ``save_panels`` grid, shown as an image.

  ``image`` is (H, W), drawn with ``cmap`` from ``vmin`` to ``vmax`` (None: the array's own
  minimum or maximum), or (H, W, 3) RGB (uint8, or floats in [0, 1]). ``symmetric`` centres the
  colours on zero for signed maps (use a diverging ``cmap``): the range is +-the 99th percentile
  of |x|, so a few extreme pixels do not wash out the rest. ``annotate`` writes each value in its
  cell (small kernels); ``boxes`` are ``(top, left, height, width)`` rectangles in pixels.
  """
  image: Any
  title: str = ""
  cmap: str = "gray"
  vmin: Optional[float] = None
  vmax: Optional[float] = None
  symmetric: bool = False
  annotate: bool = False
  boxes: Sequence[tuple[float, float, float, float]] = ()


def save_panels(rows: Sequence[Sequence[Optional[Panel]]], path: str, *, title: str = "",
                same_scale: bool = False, panel_inches: float = 2.6,
                legend: Optional[Mapping[str, Sequence[int]]] = None) -> None:
  """Writes a PNG grid of ``Panel``s, one list per row (``None`` leaves a cell empty).

  With ``same_scale`` every panel is drawn in pixel units on shared axes, so arrays of different
  sizes keep their relative size (e.g. outputs of different paddings or strides); otherwise each
  panel fills its cell and the axes are hidden. ``legend`` maps names to uint8 RGB colours (e.g.
  class colours), drawn in one row under the grid.
  """
  shapes = []
  for panel in (p for r in rows for p in r if p is not None):
    shapes.append(np.shape(panel.image))
    if len(shapes[-1]) != 2 and shapes[-1][2:] != (3,):
      raise ValueError(f"panel {panel.title!r}: image must be (H, W) or (H, W, 3), got shape "
                       f"{shapes[-1]}")
  if not shapes:
    raise ValueError(f"save_panels({path!r}) got no Panel to draw")
  plt = _pyplot()
  nrows, ncols = len(rows), max(len(r) for r in rows)
  aspect = max(s[0] for s in shapes) / max(s[1] for s in shapes)
  fig, axes = plt.subplots(
      nrows, ncols, squeeze=False, sharex=same_scale, sharey=same_scale,
      figsize=(panel_inches * ncols, panel_inches * nrows * min(max(aspect, 0.4), 1.5) + 0.5))
  for r in range(nrows):
    for c in range(ncols):
      ax = axes[r, c]
      panel = rows[r][c] if c < len(rows[r]) else None
      if panel is None:
        ax.set_visible(False)
        continue
      _draw_panel(ax, panel)
      if not same_scale:
        ax.set_axis_off()
  if same_scale:
    axes[0, 0].set_xlim(-0.5, max(s[1] for s in shapes) - 0.5)
    axes[0, 0].set_ylim(max(s[0] for s in shapes) - 0.5, -0.5)
  if legend:
    import matplotlib.patches  # pylint: disable=g-import-not-at-top
    handles = [matplotlib.patches.Patch(facecolor=np.asarray(c) / 255, edgecolor="black",
                                        label=name) for name, c in legend.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
  if title:
    fig.suptitle(title)
  # Room for the legend row: about a third of an inch at the bottom.
  _save_quantized(fig, path, bottom=0.35 / fig.get_figheight() if legend else 0.0)


def _save_quantized(fig, path: str, bottom: float = 0.0) -> None:
  """Lays out ``fig`` above ``bottom`` (a fraction of its height), saves it as a 256-colour PNG
  (a few times smaller than full colour) and closes it."""
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  fig.tight_layout(rect=(0.0, bottom, 1.0, 1.0))
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100)
  _pyplot().close(fig)
  with Image.open(buffer) as image:
    # Octree keeps flat colours (class colours, legend swatches) closer than median cut does.
    quantized = image.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
  writers.write_atomic(path, lambda f: quantized.save(f, format="PNG", optimize=True))


def _draw_panel(ax, panel: Panel) -> None:
  import matplotlib.patches  # pylint: disable=g-import-not-at-top
  image = np.asarray(panel.image)
  if image.ndim == 3:
    im = ax.imshow(image, interpolation="nearest")
  else:
    vmin, vmax = panel.vmin, panel.vmax
    if panel.symmetric:
      vmax = float(np.percentile(np.abs(image), 99)) or float(np.max(np.abs(image))) or 1.0
      vmin = -vmax
    im = ax.imshow(image, cmap=panel.cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    if panel.annotate:
      for (i, j), v in np.ndenumerate(image):
        r, g, b, _ = im.cmap(im.norm(v))
        ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=7,
                color="white" if 0.3 * r + 0.6 * g + 0.1 * b < 0.5 else "black")
  for top, left, height, width in panel.boxes:
    # Pixel (i, j) covers [j - 0.5, j + 0.5] x [i - 0.5, i + 0.5] in imshow coordinates.
    ax.add_patch(matplotlib.patches.Rectangle((left - 0.5, top - 0.5), width, height, fill=False,
                                              edgecolor="yellow", linewidth=1.2))
  ax.set_title(panel.title, fontsize=9)


@dataclasses.dataclass(frozen=True)
class Curves:
  """One plot of a ``save_curve_panels`` grid: named ``(x, y)`` curves on shared axes.

  A curve given as ``(x, y, spread)`` is drawn with a shaded band from y - spread to y + spread
  (e.g. the std over seeds; NaN spreads draw no band), or with ``errorbars`` as error bars (for
  curves of single points). ``xticklabels`` names the categories at x = 0, 1, ...; ``markers``
  marks every point; ``ylim`` fixes the y range (None: fitted to the data).
  """
  curves: Mapping[str, tuple[Any, Any]]
  title: str = ""
  xlabel: str = ""
  ylabel: str = ""
  xticklabels: Optional[Sequence[str]] = None
  markers: bool = False
  ylim: Optional[tuple[float, float]] = None
  errorbars: bool = False


def save_curve_panels(panels: Sequence[Curves], path: str, *, ncols: int = 4, title: str = "",
                      panel_inches: float = 3.2, height_inches: float | None = None) -> None:
  """Writes a PNG grid of line plots, ``ncols`` per row, each with its legend.

  A panel is ``panel_inches`` wide and 0.8 of that high, unless ``height_inches`` gives the
  figure's height.
  """
  if not panels:
    raise ValueError(f"save_curve_panels({path!r}) got no Curves to draw")
  plt = _pyplot()
  nrows = -(-len(panels) // ncols)
  ncols = min(ncols, len(panels))
  height = height_inches or 0.8 * panel_inches * nrows + 0.4
  fig, axes = plt.subplots(nrows, ncols, squeeze=False, figsize=(panel_inches * ncols, height))
  for ax in axes.flat[len(panels):]:
    ax.set_visible(False)
  for ax, panel in zip(axes.flat, panels):
    for label, (x, y, *spread) in panel.curves.items():
      if panel.errorbars:
        yerr = np.nan_to_num(np.asarray(spread[0], float)) if spread else None
        ax.errorbar(x, y, yerr=yerr, marker="o", markersize=5, capsize=3, label=label)
        continue
      line, = ax.plot(x, y, marker="o" if panel.markers else None, markersize=4, label=label)
      if spread:
        y, spread = np.asarray(y, float), np.asarray(spread[0], float)
        ax.fill_between(x, y - spread, y + spread, color=line.get_color(), alpha=0.2,
                        linewidth=0)
    if panel.xticklabels is not None:
      ax.set_xticks(range(len(panel.xticklabels)), panel.xticklabels, rotation=30, ha="right")
    ax.set_title(panel.title, fontsize=10)
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    if panel.ylim is not None:
      ax.set_ylim(*panel.ylim)
    ax.grid(alpha=0.3)
    if panel.curves:
      ax.legend(fontsize=8)
  if title:
    fig.suptitle(title)
  _save_quantized(fig, path)
