"""Class palettes and conversion between RGB masks and class-index label maps."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping, Sequence, Union

import numpy as np


@dataclasses.dataclass(frozen=True)
class Palette:
  """Class names and their mask colours, in class-index order."""

  names: tuple[str, ...]
  colors: tuple[tuple[int, int, int], ...]
  # Pixels of this colour belong to no class; they decode to ignore_index
  # without being counted as unknown.
  ignore_color: tuple[int, int, int] = (0, 0, 0)

  def __post_init__(self):
    if len(self.names) != len(self.colors):
      raise ValueError(
          f"Palette names ({len(self.names)}) and colors ({len(self.colors)})"
          " differ in length.")
    if not self.names:
      raise ValueError("Palette needs at least one class, got none.")
    if len(set(self.colors)) != len(self.colors):
      raise ValueError(f"Palette colors must be distinct, got {self.colors}.")
    if tuple(self.ignore_color) in set(map(tuple, self.colors)):
      raise ValueError(
          f"Palette ignore_color {self.ignore_color} is also a class colour.")
    for c in self.colors:
      if len(c) != 3 or not all(0 <= v <= 255 for v in c):
        raise ValueError(f"Palette colour must be 3 values in [0, 255], got {c}.")

  @property
  def num_classes(self) -> int:
    """Number of classes."""
    return len(self.names)

  def as_array(self) -> np.ndarray:
    """Colours as a uint8 array of shape (num_classes, 3)."""
    return np.asarray(self.colors, dtype=np.uint8).reshape(-1, 3)

  def to_dict(self) -> dict[str, str]:
    """The palette as JSON-ready `{"name": "#RRGGBB"}` in class order."""
    return {n: _to_hex(c) for n, c in zip(self.names, self.colors)}


def _parse_hex(value: str, name: str) -> tuple[int, int, int]:
  s = value.strip().lstrip("#")
  if len(s) != 6:
    raise ValueError(f"Colour for class {name!r} must be '#RRGGBB', got {value!r}.")
  try:
    return (int(s[0:2], 16), int(s[2:4], 16), int(s[4:6], 16))
  except ValueError:
    raise ValueError(
        f"Colour for class {name!r} must be '#RRGGBB', got {value!r}.") from None


def _to_hex(c: Sequence[int]) -> str:
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


def load_palette(path_or_dict: Union[str, os.PathLike, Mapping[str, str]]) -> Palette:
  """Reads a palette from a JSON file or dict `{"class name": "#RRGGBB", ...}` in class order."""
  if isinstance(path_or_dict, Mapping):
    mapping = path_or_dict
  else:
    path = os.fspath(path_or_dict)
    try:
      with open(path) as f:
        mapping = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise ValueError(f"Cannot read palette file {path}: {e}") from e
    if not isinstance(mapping, dict):
      raise ValueError(
          f"Palette file {path} must hold a JSON object of name -> '#RRGGBB', "
          f"got {type(mapping).__name__}.")
  names = tuple(str(k) for k in mapping)
  colors = tuple(_parse_hex(str(v), k) for k, v in mapping.items())
  return Palette(names=names, colors=colors)


def palette_colors(palette: Union[Palette, np.ndarray, Sequence]) -> np.ndarray:
  """(K, 3) uint8 class colours of a ``Palette`` or of an array-like of RGB rows."""
  if isinstance(palette, Palette):
    return palette.as_array()
  arr = np.asarray(palette)
  if arr.ndim != 2 or arr.shape[1] != 3:
    raise ValueError(f"palette must be a Palette or (K, 3) colours, got shape {arr.shape}.")
  return arr.astype(np.uint8)


def _ignore_color(palette) -> np.ndarray:
  """(3,) uint8 ignore colour of a ``Palette``; black for a plain array of colours."""
  return np.asarray(palette.ignore_color if isinstance(palette, Palette) else (0, 0, 0),
                    np.uint8)


def _rgb_key(rgb: np.ndarray) -> np.ndarray:
  rgb = rgb.astype(np.uint32)
  return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def decode_mask(rgb: np.ndarray, palette, ignore_index: int = 255, *,
                return_unknown: bool = False):
  """Maps an RGB mask (H, W, 3) uint8 to class indices (H, W) uint8.

  Pixels of the palette's ignore colour (black) and of unknown colours become
  `ignore_index`.

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
  ignore_key = _rgb_key(_ignore_color(palette))
  num_unknown = int(np.count_nonzero(~known & (pix != ignore_key)))
  return labels, num_unknown


def encode_mask(labels: np.ndarray, palette) -> np.ndarray:
  """Maps class indices (H, W) to an RGB mask (H, W, 3) uint8; other values become black."""
  labels = np.asarray(labels)
  if labels.ndim != 2:
    raise ValueError(f"labels must have shape (H, W), got {labels.shape}.")
  colors = palette_colors(palette)
  table = np.concatenate([colors, _ignore_color(palette)[None]], axis=0)
  idx = np.where((labels >= 0) & (labels < len(colors)), labels, len(colors))
  return table[idx.astype(np.intp)]
