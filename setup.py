"""Installs seg_jax: semantic segmentation with convolutional networks in JAX/Flax."""

import setuptools

setuptools.setup(
    name="seg_jax",
    version="0.1.0",
    description="Semantic segmentation with convolutional networks in JAX/Flax (Linen).",
    packages=setuptools.find_packages(include=["seg_jax", "seg_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "tensorflow-datasets>=4.9.10",
        "array-record",
        "importlib_resources",
        "pillow",
        "clu==0.0.12",
        "ml-collections>=1.1",
        "absl-py>=2.1",
        "numpy>=2",
        "grain>=0.2.18",
        "tensorboardX>=2.6",
        "matplotlib",
        "tqdm",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3", "scipy>=1.11", "hypothesis>=6.100"],
    },
)
