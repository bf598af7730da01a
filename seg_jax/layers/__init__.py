"""Building blocks of seg_jax: convolution arithmetic, convolutions, pooling, norms, attention."""

from seg_jax.layers.arithmetic import (
    PADDING_NAMES,
    ReceptiveField,
    conv_output_size,
    conv_transpose_output_size,
    receptive_field,
    resolve_padding,
)
from seg_jax.layers.attention import ASPP, SCSE, SqueezeExcitation
from seg_jax.layers.conv import (
    Conv,
    ConvNormAct,
    ConvTranspose,
    SeparableConv,
    SeparableConvNormAct,
    convolve,
    correlate,
)
from seg_jax.layers.norm import (
    ACTIVATIONS,
    NORMS,
    Dropout,
    Norm,
    SpatialDropout,
    activation,
)
from seg_jax.layers.pooling import (
    avg_pool,
    global_avg_pool,
    global_max_pool,
    lp_pool,
    max_pool,
    min_pool,
    resize,
)

__all__ = [
    "ACTIVATIONS", "ASPP", "Conv", "ConvNormAct", "ConvTranspose", "Dropout", "NORMS", "Norm",
    "PADDING_NAMES", "ReceptiveField", "SCSE", "SeparableConv", "SeparableConvNormAct", "SpatialDropout",
    "SqueezeExcitation", "activation", "avg_pool", "conv_output_size",
    "conv_transpose_output_size", "convolve", "correlate", "global_avg_pool", "global_max_pool",
    "lp_pool", "max_pool", "min_pool", "receptive_field", "resize", "resolve_padding",
]
