"""Prepares a TFDS builder as array_record files.

  python -m seg_jax.data.prepare --dataset=dubai_aerial/resized_144x256 \
      --manual_dir=../shared/data/dubai_aerial --data_dir=~/tensorflow_datasets
  python -m seg_jax.data.prepare --dataset=synthetic_aerial --data_dir=~/tensorflow_datasets
"""

from __future__ import annotations

import functools
import os

from absl import flags
import tensorflow_datasets as tfds

from seg_jax import cli
from seg_jax import errors
import seg_jax.data.tfds_builders  # pylint: disable=unused-import  (registers the builders)

FLAGS = flags.FLAGS


@functools.cache
def define_flags() -> None:
  """Defines this command's flags (once per process)."""
  flags.DEFINE_string("dataset", "synthetic_aerial",
                      "Builder name with optional config, e.g. dubai_aerial/patches_256.")
  flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "TFDS data directory.")
  flags.DEFINE_string("manual_dir", "", "Dataset folder (dubai_aerial only).")


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


def main(argv) -> None:
  """Prepares --dataset and prints where its files are."""
  del argv
  try:
    path = prepare(FLAGS.dataset, FLAGS.data_dir, FLAGS.manual_dir)
  except ValueError as e:  # a --manual_dir that is not a folder
    raise errors.DataError(str(e)) from e
  print(f"Prepared {FLAGS.dataset} in {path}")


if __name__ == "__main__":
  cli.run(main, define_flags=define_flags, shared=[])
