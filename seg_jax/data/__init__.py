"""Datasets (synthetic aerial scenes, image/mask folders, rasters), augmentation and the input
pipeline.

`DATASETS` lists every `data.name` (`dataset.py`), with the `data` fields each reads.

`augment` and `pipeline` (JAX) and `tfds_builders` (TFDS) are imported on their own.
"""

from seg_jax.data import dubai
from seg_jax.data import folder
from seg_jax.data import palettes
from seg_jax.data import preprocess
from seg_jax.data import sources
from seg_jax.data import splits
from seg_jax.data import synthetic
from seg_jax.data.dataset import DATASETS
from seg_jax.data.dataset import full_resolution_examples
from seg_jax.data.dataset import get_dataset
from seg_jax.data.palettes import decode_mask
from seg_jax.data.palettes import encode_mask
from seg_jax.data.palettes import load_palette
from seg_jax.data.palettes import Palette
from seg_jax.data.preprocess import class_pixel_counts
from seg_jax.data.sources import ArraySource
from seg_jax.data.sources import Bands
from seg_jax.data.sources import Dataset
