"""UNet++ (Zhou et al. 2018): nested, densely connected skip pathways, as SMP builds it.

``UNetPlusPlusDecoder`` (decoder ``unetpp``) is ``UnetPlusPlusDecoder`` of
segmentation_models_pytorch (SMP) 0.6 without its options (no attention, nearest upsampling,
BatchNorm). Every node is SMP's ``DecoderBlock``: nearest-neighbour x2 upsampling of the coarser
node, concatenation of the skips, two 3x3 conv-BN-ReLU layers (``unet.ConvStack``). With the
backbone's features deepest first, ``f[0]`` the deepest and ``f[j + 1]`` the skip of column
``j``, node ``x_{d}_{j}`` (SMP's names) works at the size of ``f[j + 1]``:

* its input is ``f[j]`` when ``d == j`` (the first node of row ``d``), else ``x_{d}_{j-1}``;
* its skips are ``x_{d+1}_{j}``, ..., ``x_{j}_{j}`` and then ``f[j + 1]`` (the dense pathway);
* it has ``widths[j]`` channels in row 0, the decoder's output path, and as many as its skip
  ``f[j + 1]`` in the nested rows.

Below the shallowest skip, plain blocks (upsampling and two convs, no skip) named ``x_0_{j}``
continue row 0 to stride 1: one for a ResNet, whose shallowest stage (``stem``) is at stride 2;
none for the ``unet_encoder``, which has a stride-1 stage. So ``widths`` has one entry per
doubling from the deepest stride to 1. Any backbone whose strides double from stage to stage
feeds it.

``unetpp_resnet34`` is ``smp.UnetPlusPlus(encoder_name="resnet34", encoder_weights=None,
in_channels=C, classes=N)``: SMP's ResNet-34 encoder is torchvision's without ``avgpool`` and
``fc``, its ``conv1`` taking C bands; decoder widths (256, 128, 64, 32, 16); SMP's
``SegmentationHead``, a 3x3 conv with a bias and no activation. Same parameter count as SMP's
model (tested); the per-layer shapes and the logits with SMP's weights were compared outside
the suite (seg_jax/models/README.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from seg_jax import layers
from seg_jax.models import unet

Dtype = Any

PRESETS: dict[str, dict[str, Any]] = {
    "unetpp_resnet34": dict(backbone="resnet34", decoder="unetpp",
                            head_kwargs=dict(kernel_size=3)),
}
"""UNet++ on ResNet-34 as segmentation_models_pytorch builds it; see the module docstring."""


class UNetPlusPlusDecoder(nn.Module):
  """Nested dense skip pathways; returns row 0's last node at stride 1 (module docstring).

  Attributes:
    widths: channels of row 0's nodes, deepest first: one per doubling from the deepest stride
      to 1 (SMP's ``decoder_channels``).
  """

  widths: Sequence[int] = (256, 128, 64, 32, 16)
  norm: str = "batch"
  act: str = "relu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  emits_logits: ClassVar[bool] = False

  def _node(self, name: str, width: int, below: jax.Array, skips: Sequence[jax.Array],
            train: bool) -> jax.Array:
    """SMP's ``DecoderBlock``: ``below`` upsampled x2 (nearest), ``skips`` concatenated, two
    3x3 conv-norm-act layers of ``width`` channels, named ``name``."""
    x = layers.resize(below, (2 * below.shape[1], 2 * below.shape[2]), method="nearest")
    x = jnp.concatenate([x, *(skip.astype(x.dtype) for skip in skips)], axis=-1)
    return unet.ConvStack(width, 2, norm=self.norm, act=self.act, dtype=self.dtype,
                          param_dtype=self.param_dtype, name=name)(x, train=train)

  @nn.compact
  def __call__(self, pyramid: Mapping[int, jax.Array], *, train: bool) -> jax.Array:
    """Decodes ``pyramid`` (``{stride: features}``) to stride 1 with ``widths[-1]`` channels."""
    features = unet.doubling_levels(pyramid, "unetpp")
    num_skips = len(features) - 1
    shallowest = min(pyramid)
    num_plain = shallowest.bit_length() - 1
    if 2**num_plain != shallowest or len(self.widths) != num_skips + num_plain:
      raise ValueError(
          f"the unetpp decoder needs one width per doubling from the deepest stride to 1 "
          f"({sorted(pyramid)}, the backbone's strides), got widths {tuple(self.widths)}")
    nodes = {}
    for j in range(num_skips):
      skip = features[j + 1]
      for d in range(j, -1, -1):  # x_{d}_{j} reads the nodes of rows d + 1 .. j of column j
        below = features[j] if d == j else nodes[d, j - 1]
        skips = [nodes[k, j] for k in range(d + 1, j + 1)] + [skip]
        width = self.widths[j] if d == 0 else skip.shape[-1]
        nodes[d, j] = self._node(f"x_{d}_{j}", width, below, skips, train)
    x = nodes[0, num_skips - 1] if num_skips else features[0]
    for j in range(num_skips, len(self.widths)):
      x = self._node(f"x_0_{j}", self.widths[j], x, [], train)
    return x
