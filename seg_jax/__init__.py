"""seg_jax: semantic segmentation with convolutional networks in JAX/Flax (Linen)."""

__version__ = "0.1.0"
