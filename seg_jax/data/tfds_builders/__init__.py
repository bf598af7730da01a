"""TFDS builders `dubai_aerial` and `synthetic_aerial` (array_record; readable without TensorFlow)."""

from seg_jax.data.tfds_builders.common import load_prepared
from seg_jax.data.tfds_builders.dubai_aerial import DubaiAerial
from seg_jax.data.tfds_builders.dubai_aerial import DubaiAerialConfig
from seg_jax.data.tfds_builders.synthetic_aerial import SyntheticAerial
from seg_jax.data.tfds_builders.synthetic_aerial import SyntheticAerialConfig
