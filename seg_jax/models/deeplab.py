"""DeepLabV3 (Chen et al. 2017) and DeepLabV3+ (Chen et al. 2018) as presets, and the V3+ decoder.

Both run an atrous backbone (ResNet-50/101, or DeepLab's aligned Xception-65) at output stride 8
or 16 and apply ASPP (the ``aspp`` neck: 1x1 branch, three atrous 3x3 branches, image pooling,
1x1 projection, dropout) to its deepest features. The papers' rates are (6, 12, 18) at output
stride 16 and (12, 24, 36) at 8: the rates are a neck setting, so a config that changes the
output stride sets them too, as DeepLab's own flags do.

* V3 classifies the ASPP output with a 1x1 conv and upsamples the logits bilinearly.
* V3+ adds ``DeepLabV3PlusDecoder``: the stride-4 features are projected to 48 channels (1x1
  conv-BN-ReLU), concatenated with the bilinearly upsampled ASPP output and refined by two 3x3
  conv-BN-ReLU layers of 256 channels; the head classifies at stride 4.

``deeplabv3plus_xception`` is DeepLab's reference V3+: Xception-65 (whose stride-4 tap is the
256-channel second separable unit of entry block 2), with depthwise-separable ASPP and decoder convs
(BatchNorm + ReLU after the depthwise and after the pointwise part). ``deeplabv3_resnet50`` is
torchvision's ``deeplabv3_resnet50`` without its auxiliary head (output stride 8, ASPP dropout
0.5, a 3x3 conv-BN-ReLU before the classifier), so ``seg_jax.weights.from_torch`` imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from seg_jax import layers

Dtype = Any

_ASPP = dict(features=256, rates=(6, 12, 18), dropout_rate=0.1)
_V3 = dict(backbone="resnet50", backbone_kwargs=dict(output_stride=16), neck="aspp",
           neck_kwargs=_ASPP)
_V3_PLUS_DECODER = dict(low_level_stride=4, low_level_features=48, features=256)

PRESETS: dict[str, dict[str, Any]] = {
    "deeplabv3": _V3,
    "deeplabv3plus": dict(**_V3, decoder="deeplabv3plus", decoder_kwargs=_V3_PLUS_DECODER),
    "deeplabv3plus_xception": dict(
        backbone="xception65", backbone_kwargs=dict(output_stride=16),
        neck="aspp", neck_kwargs=dict(**_ASPP, separable=True),
        decoder="deeplabv3plus", decoder_kwargs=dict(**_V3_PLUS_DECODER, separable=True)),
    "deeplabv3_resnet50": dict(
        backbone="resnet50", backbone_kwargs=dict(output_stride=8), neck="aspp",
        neck_kwargs=dict(features=256, rates=(12, 24, 36), dropout_rate=0.5),
        head_kwargs=dict(features=256)),
}
"""DeepLab presets of ``SegmentationModel``; see the module docstring."""


class DeepLabV3PlusDecoder(nn.Module):
  """Fuses the projected stride-``low_level_stride`` features with the upsampled deepest ones.

  Children: ``low_level_proj`` (1x1 conv-norm-act), ``conv0`` and ``conv1`` (3x3 conv-norm-act,
  or ``SeparableConvNormAct`` with ``separable``). Returns features at ``low_level_stride``.
  """

  low_level_stride: int = 4
  low_level_features: int = 48
  features: int = 256
  separable: bool = False
  norm: str = "batch"
  act: str = "relu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  emits_logits: ClassVar[bool] = False

  @nn.compact
  def __call__(self, pyramid: Mapping[int, jax.Array], *, train: bool) -> jax.Array:
    """Decodes ``pyramid`` (``{stride: features}``)."""
    if self.low_level_stride not in pyramid:
      raise ValueError(f"low_level_stride={self.low_level_stride} is not a backbone stride; "
                       f"the backbone has features at strides {sorted(pyramid)}")
    kw = dict(norm=self.norm, act=self.act, dtype=self.dtype, param_dtype=self.param_dtype)
    conv3x3 = layers.SeparableConvNormAct if self.separable else layers.ConvNormAct
    low = layers.ConvNormAct(self.low_level_features, (1, 1), **kw, name="low_level_proj")(
        pyramid[self.low_level_stride], train=train)
    y = layers.resize(pyramid[max(pyramid)], low.shape[1:3])
    y = jnp.concatenate([y, low.astype(y.dtype)], axis=-1)
    y = conv3x3(self.features, (3, 3), **kw, name="conv0")(y, train=train)
    return conv3x3(self.features, (3, 3), **kw, name="conv1")(y, train=train)
