"""Prepares a TFDS builder as array_record files.

  python -m seg_jax.data.prepare --dataset=dubai_aerial/resized_144x256 \
      --manual_dir=../shared/data/dubai_aerial --data_dir=~/tensorflow_datasets
  python -m seg_jax.data.prepare --dataset=synthetic_aerial --data_dir=~/tensorflow_datasets
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
import tensorflow_datasets as tfds

import seg_jax.data.tfds_builders  # pylint: disable=unused-import  (registers the builders)

_DATASET = flags.DEFINE_string("dataset", "synthetic_aerial",
                               "Builder name with optional config, e.g. dubai_aerial/patches_256.")
_DATA_DIR = flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "TFDS data directory.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", "", "Dataset folder (dubai_aerial only).")


def prepare(dataset: str, data_dir: str, manual_dir: str = "") -> str:
  """Builds `dataset` under `data_dir` and returns the folder of its files."""
  data_dir = os.path.expanduser(data_dir)
  builder = tfds.builder(dataset, data_dir=data_dir, file_format="array_record")
  config = None
  if manual_dir:
    manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
    if not os.path.isdir(manual_dir):
      raise ValueError(f"manual_dir {manual_dir} is not a folder.")
    config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  builder.download_and_prepare(download_config=config)
  return str(builder.data_dir)


def main(argv):
  del argv
  path = prepare(_DATASET.value, _DATA_DIR.value, _MANUAL_DIR.value)
  print(f"Prepared {_DATASET.value} in {path}")


if __name__ == "__main__":
  app.run(main)
