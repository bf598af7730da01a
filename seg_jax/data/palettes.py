"""Class palettes and conversion between RGB masks and class-index label maps."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from seg_jax import storage

Color = tuple[int, int, int]
BLACK: Color = (0, 0, 0)


@dataclasses.dataclass(frozen=True)
class Palette:
  """Class names and their mask colours, in class-index order."""

  names: tuple[str, ...]
  colors: tuple[Color, ...]
  # Pixels of this colour belong to no class; they decode to ignore_index without being
  # counted as unknown. None: every colour outside `colors` is unknown (a dataset whose
  # classes include black).
  ignore_color: Optional[Color] = BLACK

  def __post_init__(self):
    if len(self.names) != len(self.colors):
      raise ValueError(
          f"Palette names ({len(self.names)}) and colors ({len(self.colors)})"
          " differ in length.")
    if not self.names:
      raise ValueError("Palette needs at least one class, got none.")
    if len(set(self.colors)) != len(self.colors):
      raise ValueError(f"Palette colors must be distinct, got {self.colors}.")
    for c in self.colors + (() if self.ignore_color is None else (self.ignore_color,)):
      if len(c) != 3 or not all(0 <= v <= 255 for v in c):
        raise ValueError(f"Palette colour must be 3 values in [0, 255], got {c}.")
    if self.ignore_color is not None and tuple(self.ignore_color) in set(self.colors):
      name = self.names[self.colors.index(tuple(self.ignore_color))]
      raise ValueError(
          f"Palette ignore colour {to_hex(self.ignore_color)} is also the colour of class "
          f"{name!r}: choose another ignore colour or none (data.ignore_color='none').")

  @property
  def num_classes(self) -> int:
    """Number of classes."""
    return len(self.names)

  def as_array(self) -> np.ndarray:
    """Colours as a uint8 array of shape (num_classes, 3)."""
    return np.asarray(self.colors, dtype=np.uint8).reshape(-1, 3)

  @property
  def display_ignore_color(self) -> Color:
    """Colour that draws ignored pixels: the ignore colour, else the darkest grey no class has."""
    if self.ignore_color is not None:
      return tuple(self.ignore_color)
    return next((v, v, v) for v in range(256) if (v, v, v) not in set(self.colors))

  def to_dict(self) -> dict[str, str]:
    """The palette as JSON-ready `{"name": "#RRGGBB"}` in class order."""
    return {n: to_hex(c) for n, c in zip(self.names, self.colors)}


def parse_color(value: Any, what: str) -> Color:
  """`"#RRGGBB"` as an (R, G, B) tuple; ValueError naming `what` otherwise."""
  s = str(value).strip().lstrip("#")
  if len(s) != 6 or not re.fullmatch(r"[0-9a-fA-F]{6}", s):
    raise ValueError(f"{what} must be '#RRGGBB', got {value!r}.")
  return (int(s[0:2], 16), int(s[2:4], 16), int(s[4:6], 16))


def parse_ignore_color(value: Any) -> Optional[Color]:
  """An ignore colour given as `"#RRGGBB"`, `"none"` / None (no ignore colour) or an RGB tuple."""
  if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
    return None
  if isinstance(value, str):
    return parse_color(value, "ignore colour (data.ignore_color)")
  color = tuple(int(v) for v in value)
  if len(color) != 3 or not all(0 <= v <= 255 for v in color):
    raise ValueError(f"ignore colour must be 3 values in [0, 255], got {value!r}.")
  return color


def to_hex(c: Sequence[int]) -> str:
  """(R, G, B) as "#RRGGBB"."""
  return "#{:02X}{:02X}{:02X}".format(*c)


# Colours measured on the released masks (its classes.json lists other ones).
DUBAI_AERIAL = Palette(
    names=("building", "land", "road", "vegetation", "water", "unlabeled"),
    colors=(
        (0x3C, 0x10, 0x98),
        (0x84, 0x29, 0xF6),
        (0x6E, 0xC1, 0xE4),
        (0xFE, 0xDD, 0x3A),
        (0xE2, 0xA9, 0x29),
        (0x9B, 0x9B, 0x9B),
    ),
)

# Distinct colours that stay apart when blended with aerial images, for overlays only (masks keep
# a dataset's own colours). The first six follow the aerial classes of DUBAI_AERIAL and the
# synthetic scenes (building red, land yellow, road magenta, vegetation green, water blue,
# unlabeled white); the rest are from Sasha Trubetskoy's list of 20 distinct colours.
CONTRAST_COLORS: tuple[Color, ...] = (
    (230, 25, 75), (255, 225, 25), (240, 50, 230), (60, 180, 75), (0, 130, 200),
    (255, 255, 255), (245, 130, 48), (70, 240, 240), (145, 30, 180), (210, 245, 60),
    (0, 128, 128), (170, 110, 40), (128, 0, 0), (0, 0, 128), (128, 128, 0), (250, 190, 212),
    (170, 255, 195), (220, 190, 255), (255, 215, 180), (0, 0, 0))


def high_contrast(palette: Palette) -> Palette:
  """`palette`'s classes in `CONTRAST_COLORS`, in class order (for drawing, not decoding masks).

  Raises:
    ValueError: more classes than `CONTRAST_COLORS` holds.
  """
  n = len(palette.names)
  if n > len(CONTRAST_COLORS):
    raise ValueError(f"the contrast palette has {len(CONTRAST_COLORS)} colours, the dataset {n} "
                     "classes: draw it in the dataset's colours")
  return Palette(names=palette.names, colors=CONTRAST_COLORS[:n], ignore_color=None)


def _class_colors(mapping: Any, where: str) -> list[tuple[str, Any]]:
  """(name, colour) pairs of `{"name": "#RRGGBB"}` or `{"classes": [{"title", "color"}]}`."""
  if isinstance(mapping, Mapping) and set(mapping) >= {"classes"} and isinstance(
      mapping["classes"], list):
    out = []
    for i, c in enumerate(mapping["classes"]):
      if not isinstance(c, Mapping) or "title" not in c or "color" not in c:
        raise ValueError(f"{where}: classes[{i}] must hold 'title' and 'color', got {c!r}.")
      out.append((str(c["title"]), c["color"]))
    return out
  if isinstance(mapping, Mapping):
    return [(str(k), v) for k, v in mapping.items()]
  raise ValueError(
      f"{where} must hold a JSON object of name -> '#RRGGBB' or a classes.json "
      f"{{'classes': [{{'title', 'color'}}]}}, got {type(mapping).__name__}.")


def load_palette(path_or_dict: Union[str, os.PathLike, Mapping[str, Any]],
                 ignore_color: Any = BLACK) -> Palette:
  """Reads class names and mask colours, in class order, from a JSON file or dict.

  Two layouts: `{"class name": "#RRGGBB", ...}`, or a `classes.json` as exported by
  labelling tools, `{"classes": [{"title": "class name", "color": "#RRGGBB"}, ...]}`.
  `ignore_color` ("#RRGGBB", an RGB tuple, or None / "none") is the mask colour of pixels
  that belong to no class; choose another one, or none, when a class is black.
  """
  if isinstance(path_or_dict, Mapping):
    mapping, where = path_or_dict, "palette"
  else:
    path = os.fspath(path_or_dict)
    where = f"palette file {path}"
    try:
      mapping = json.loads(storage.read_text(path))
    except (OSError, ValueError) as e:
      raise ValueError(f"Cannot read {where}: {e}") from e
  pairs = _class_colors(mapping, where)
  names = tuple(name for name, _ in pairs)
  colors = tuple(parse_color(v, f"{where}: colour of class {name!r}") for name, v in pairs)
  try:
    return Palette(names=names, colors=colors, ignore_color=parse_ignore_color(ignore_color))
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from None


def palette_colors(palette: Union[Palette, np.ndarray, Sequence]) -> np.ndarray:
  """(K, 3) uint8 class colours of a ``Palette`` or of an array-like of RGB rows."""
  if isinstance(palette, Palette):
    return palette.as_array()
  arr = np.asarray(palette)
  if arr.ndim != 2 or arr.shape[1] != 3:
    raise ValueError(f"palette must be a Palette or (K, 3) colours, got shape {arr.shape}.")
  return arr.astype(np.uint8)


def _ignore_color(palette) -> Optional[Color]:
  """Ignore colour of a ``Palette`` (None when it has none); black for a plain array of colours."""
  return palette.ignore_color if isinstance(palette, Palette) else BLACK


def _rgb_key(rgb: np.ndarray) -> np.ndarray:
  rgb = rgb.astype(np.uint32)
  return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def decode_mask(rgb: np.ndarray, palette, ignore_index: int = 255, *,
                return_unknown: bool = False):
  """Maps an RGB mask (H, W, 3) uint8 to class indices (H, W) uint8.

  Pixels of the palette's ignore colour (black unless the palette says otherwise) and of
  unknown colours become `ignore_index`.

  Returns:
    The label map, or `(labels, num_unknown_pixels)` with `return_unknown`.
  """
  rgb = np.asarray(rgb)
  if rgb.ndim != 3 or rgb.shape[-1] != 3:
    raise ValueError(f"rgb mask must have shape (H, W, 3), got {rgb.shape}.")
  if not 0 <= ignore_index <= 255:
    raise ValueError(f"ignore_index must be in [0, 255], got {ignore_index}.")
  colors = palette_colors(palette)
  if ignore_index < len(colors):
    raise ValueError(
        f"ignore_index {ignore_index} collides with a class index (< {len(colors)}).")
  keys = _rgb_key(colors)
  order = np.argsort(keys)
  sorted_keys = keys[order]
  pix = _rgb_key(rgb)
  pos = np.searchsorted(sorted_keys, pix)
  pos = np.minimum(pos, len(sorted_keys) - 1)
  known = sorted_keys[pos] == pix
  labels = np.where(known, order[pos], ignore_index).astype(np.uint8)
  if not return_unknown:
    return labels
  unknown = ~known
  ignore = _ignore_color(palette)
  if ignore is not None:
    unknown &= pix != _rgb_key(np.asarray(ignore, np.uint8))
  return labels, int(np.count_nonzero(unknown))


def encode_mask(labels: np.ndarray, palette) -> np.ndarray:
  """Maps class indices (H, W) to an RGB mask (H, W, 3) uint8.

  Other values get the palette's ignore colour (black for a plain array of colours; for a
  palette without one, `Palette.display_ignore_color`).
  """
  labels = np.asarray(labels)
  if labels.ndim != 2:
    raise ValueError(f"labels must have shape (H, W), got {labels.shape}.")
  colors = palette_colors(palette)
  fill = palette.display_ignore_color if isinstance(palette, Palette) else BLACK
  table = np.concatenate([colors, np.asarray(fill, np.uint8)[None]], axis=0)
  idx = np.where((labels >= 0) & (labels < len(colors)), labels, len(colors))
  return table[idx.astype(np.intp)]
