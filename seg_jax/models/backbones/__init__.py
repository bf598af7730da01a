"""Classification networks that double as feature backbones returning ``{stage: features}``.

Each backbone takes ``num_classes``: an int gives a classifier with float32 logits, ``None`` the
per-stage feature dict documented in its module. The class attribute ``min_input_size`` is the
smallest height and width accepted (smaller inputs raise ValueError); those usable as the
backbone of a segmentation model also have a ``stride`` property, the stride of their deepest
features.
"""

from seg_jax.models.backbones.googlenet import GoogLeNet, Inception, InceptionAux
from seg_jax.models.backbones.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    ResNet18,
    ResNet34,
    ResNet50,
    ResNet101,
    ResNetStage,
)
from seg_jax.models.backbones.vgg import VGG, VGG16
from seg_jax.models.backbones.xception import (
    AlignedXception,
    AlignedXceptionBlock,
    Xception,
    XceptionBlock,
)

__all__ = [
    "AlignedXception", "AlignedXceptionBlock", "BasicBlock", "Bottleneck", "GoogLeNet",
    "Inception", "InceptionAux", "ResNet", "ResNet101", "ResNet18", "ResNet34", "ResNet50",
    "ResNetStage", "VGG", "VGG16", "Xception", "XceptionBlock",
]
