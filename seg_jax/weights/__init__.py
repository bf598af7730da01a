"""Pretrained weights: import from Keras and torchvision, export to torchvision, graft into a model.

* ``from_keras(model_name, source)``: ``source`` is a ``keras.Model``, a ``.keras`` or a
  ``.weights.h5`` file of the Keras application ``model_name`` (``keras_layout.SUPPORTED``).
* ``from_torch(model_name, source)``: ``source`` is a state dict, a ``.pth``/``.pt`` or a
  ``.safetensors`` file with torchvision's names (``torch_layout.SUPPORTED``).
* ``to_torch(model_name, variables)``: torchvision's state dict of seg_jax variables.
* ``merge_variables(initial, imported, ...)``: imported variables grafted into a freshly
  initialised tree, with where each leaf came from.

Imports return ``{"params": ..., "batch_stats": ...}`` that
``seg_jax.models.create(model_name, num_classes=N).apply`` uses directly. Every array is matched
by name and shape: anything missing, unexpected or mis-shaped is a ValueError that lists it.
"""

from seg_jax.weights.keras_layout import from_keras
from seg_jax.weights.merge import merge_variables
from seg_jax.weights.torch_layout import from_torch, to_torch

__all__ = ["from_keras", "from_torch", "merge_variables", "to_torch"]
