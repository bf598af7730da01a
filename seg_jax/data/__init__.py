"""Datasets (synthetic aerial scenes, Dubai aerial imagery), augmentation and the input pipeline.

`augment` and `pipeline` (JAX) and `tfds_builders` (TFDS) are imported on their own.
"""

from seg_jax.data import dubai
from seg_jax.data import palettes
from seg_jax.data import preprocess
from seg_jax.data import splits
from seg_jax.data import synthetic
from seg_jax.data.dataset import ArraySource
from seg_jax.data.dataset import Dataset
from seg_jax.data.dataset import full_resolution_examples
from seg_jax.data.dataset import get_dataset
from seg_jax.data.palettes import decode_mask
from seg_jax.data.palettes import encode_mask
from seg_jax.data.palettes import load_palette
from seg_jax.data.palettes import Palette
