"""DeepLabV3 (Chen et al. 2017) and DeepLabV3+ (Chen et al. 2018).

Both run an atrous backbone (``resnet50``, ``resnet101`` or the aligned ``xception`` of the V3+
paper) at ``output_stride`` 8 or 16 and apply ASPP (1x1 branch, three atrous 3x3 branches, image
pooling, 1x1 projection) to its last stage. ASPP rates default to the papers' (6, 12, 18) at
stride 16, doubled at stride 8.

* V3 classifies the ASPP output with a 1x1 conv and upsamples the logits bilinearly.
* V3+ adds the decoder: the stride-4 low-level features are projected to 48 channels (1x1
  conv-BN-ReLU), concatenated with the bilinearly upsampled ASPP output, refined by two 3x3
  conv-BN-ReLU layers of 256 channels, classified and upsampled x4.

``separable`` (default: on for ``xception`` only, as in the V3+ paper) makes the ASPP and decoder
3x3 convs depthwise-separable with BatchNorm+ReLU after the depthwise part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import FrozenDict

from seg_jax import layers
from seg_jax.models import common
from seg_jax.models.backbones import resnet, xception

Dtype = Any


_DILATION = {8: (False, True, True), 16: (False, False, True)}
_RESNETS = {"resnet50": resnet.ResNet50, "resnet101": resnet.ResNet101}
DILATED_BACKBONES = (*_RESNETS, "xception")


def check_output_stride(output_stride: int) -> None:
  """Raises ValueError unless ``output_stride`` is 8 or 16."""
  if output_stride not in _DILATION:
    raise ValueError(f"output_stride must be one of {tuple(_DILATION)}, got {output_stride!r}")


def dilated_backbone(name: str, output_stride: int, *, dtype: Any, param_dtype: Any,
                     **kwargs: Any) -> tuple[nn.Module, str, str]:
  """Builds feature backbone ``name`` at ``output_stride``, as a child named ``backbone``.

  Call it from a compact method (that module owns the child). Returns the module and the keys
  of its high-level (stride ``output_stride``) and low-level (stride 4) features; ``kwargs``
  go to the backbone constructor (e.g. a small ``width`` for tests).
  """
  check_output_stride(output_stride)
  if name in _RESNETS:
    module = _RESNETS[name](
        num_classes=None, replace_stride_with_dilation=_DILATION[output_stride], dtype=dtype,
        param_dtype=param_dtype, **kwargs, name="backbone")
    return module, "layer4", "layer1"
  if name == "xception":
    module = xception.AlignedXception(
        num_classes=None, output_stride=output_stride, dtype=dtype, param_dtype=param_dtype,
        **kwargs, name="backbone")
    return module, "exit", "low_level"
  raise ValueError(f"backbone must be one of {DILATED_BACKBONES}, got {name!r}")


def default_aspp_rates(output_stride: int) -> tuple[int, ...]:
  """The papers' ASPP rates: (6, 12, 18) at output stride 16, doubled at 8."""
  check_output_stride(output_stride)
  return tuple(r * 16 // output_stride for r in (6, 12, 18))


class DeepLabV3(nn.Module):
  """DeepLabV3, or DeepLabV3+ with ``decoder=True``; see the module docstring.

  Attributes:
    backbone: one of ``DILATED_BACKBONES``; the child is named ``backbone``; ``norm`` applies to
      it too.
    output_stride: 8 or 16, the stride of the backbone's last stage.
    aspp_rates: atrous rates; ``None`` uses ``default_aspp_rates(output_stride)``.
    separable: separable 3x3 convs in ASPP and decoder; ``None`` means "iff xception".
    head_conv: a 3x3 conv-norm-act of ``aspp_features`` before the classifier (torchvision's
      ``DeepLabHead``; not in the paper).
    backbone_kwargs: extra constructor arguments of the backbone (e.g. ``{"width": 8}``).
  """

  num_classes: int
  backbone: str = "resnet50"
  output_stride: int = 16
  aspp_rates: Sequence[int] | None = None
  aspp_features: int = 256
  aspp_dropout_rate: float = 0.1
  decoder: bool = False
  low_level_features: int = 48
  decoder_features: int = 256
  separable: bool | None = None
  head_conv: bool = False
  norm: str = "batch"
  act: str = "relu"
  backbone_kwargs: Mapping[str, Any] = FrozenDict()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Returns float32 logits ``(N, H, W, num_classes)`` for NHWC ``x``."""
    rates = (default_aspp_rates(self.output_stride) if self.aspp_rates is None
             else tuple(self.aspp_rates))
    separable = self.backbone == "xception" if self.separable is None else self.separable
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm_act = dict(norm=self.norm, act=self.act)

    def conv3x3(features, name):
      if separable:
        return layers.SeparableConvNormAct(features, **norm_act, **kw, name=name)
      return layers.ConvNormAct(features, (3, 3), **norm_act, **kw, name=name)

    def body(x):
      backbone, high_key, low_key = dilated_backbone(
          self.backbone, self.output_stride, norm=self.norm, **kw, **dict(self.backbone_kwargs))
      features = backbone(x, train=train)
      y = layers.ASPP(self.aspp_features, rates=rates, separable=separable,
                      dropout_rate=self.aspp_dropout_rate, **norm_act, **kw,
                      name="aspp")(features[high_key], train=train)
      if self.decoder:
        low = layers.ConvNormAct(self.low_level_features, (1, 1), **norm_act, **kw,
                                 name="low_level_proj")(features[low_key], train=train)
        y = layers.resize(y, low.shape[1:3])
        y = jnp.concatenate([y, low.astype(y.dtype)], axis=-1)
        y = conv3x3(self.decoder_features, "decoder_conv0")(y, train=train)
        y = conv3x3(self.decoder_features, "decoder_conv1")(y, train=train)
      if self.head_conv:
        y = conv3x3(self.aspp_features, "head_conv")(y, train=train)
      y = layers.Conv(self.num_classes, (1, 1), **kw, name="classifier")(y)
      return layers.resize(y.astype(jnp.float32), x.shape[1:3])

    return common.segment_padded(x, self.output_stride, body)


class DeepLabV3Plus(DeepLabV3):
  """DeepLabV3+: ``DeepLabV3`` with the low-level-feature decoder on."""

  decoder: bool = True
