"""Features, metadata and loading shared by the aerial TFDS builders."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from seg_jax.data import palettes
from seg_jax.data import sources


def features(size: tuple[int, int]) -> tfds.features.FeaturesDict:
  """Image, label, source name and tile; zlib tensors so that no TensorFlow is needed."""
  h, w = size
  return tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(shape=(h, w, 3), dtype=np.uint8,
                                    encoding=tfds.features.Encoding.ZLIB),
      "label": tfds.features.Tensor(shape=(h, w), dtype=np.uint8,
                                    encoding=tfds.features.Encoding.ZLIB),
      "name": tfds.features.Text(),
      "tile": np.int32,
  })


def store_metadata(info, *, mean, std, palette: palettes.Palette, ignore_index: int,
                   skipped, **extra) -> None:
  """Writes train-split statistics, the palette and the skipped files into metadata.json."""
  info.metadata["mean"] = [float(v) for v in mean]
  info.metadata["std"] = [float(v) for v in std]
  info.metadata["class_names"] = list(palette.names)
  info.metadata["palette"] = palette.to_dict()
  info.metadata["ignore_color"] = (
      "none" if palette.ignore_color is None else palettes.to_hex(palette.ignore_color))
  info.metadata["ignore_index"] = int(ignore_index)
  info.metadata["skipped"] = [list(s) for s in skipped]
  info.metadata.update(extra)


class _Source:
  """A tfds data source restricted to the "image" and "label" features."""

  def __init__(self, source):
    self._source = source

  def __len__(self):
    return len(self._source)

  def __getitem__(self, i):
    ex = self._source[int(i)]
    return {"image": ex["image"], "label": ex["label"]}


def load_prepared(name: str, data_dir: str) -> sources.Dataset:
  """Opens a prepared builder (e.g. "dubai_aerial/resized_144x256") as a `Dataset` without TensorFlow.

  The builders are registered with TFDS by importing this package, which every import of this
  module does first.
  """
  prepare = (f"prepare it with python -m seg_jax.data.prepare --dataset={name} "
             f"--data_dir={data_dir}")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except ValueError as e:  # Unknown builder or builder config; TFDS lists every dataset it has.
    raise ValueError(f"TFDS dataset {name!r} not found under {data_dir} "
                     f"({str(e).splitlines()[0]}); {prepare}.") from None
  if not builder.is_prepared():
    raise ValueError(f"TFDS dataset {name!r} is not prepared under {data_dir}; {prepare}.")
  split_sources = builder.as_data_source()
  meta = builder.info.metadata
  palette = palettes.load_palette(meta["palette"], ignore_color=meta["ignore_color"])
  h, w = builder.info.features["label"].shape
  return sources.Dataset(
      train=_Source(split_sources["train"]), val=_Source(split_sources["val"]),
      test=_Source(split_sources["test"]), class_names=tuple(meta["class_names"]), palette=palette,
      ignore_index=int(meta["ignore_index"]), image_size=(int(h), int(w)),
      mean=np.asarray(meta["mean"], np.float32), std=np.asarray(meta["std"], np.float32),
      skipped=tuple(tuple(s) for s in meta["skipped"]),
      # Datasets prepared before the training scale was recorded count as stored (1).
      training_scale=float(meta.get("training_scale", 1.0)))
