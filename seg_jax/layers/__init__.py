"""Building blocks of seg_jax: convolution arithmetic, convolutions, pooling, norms, activations,
dropout, attention gates, ASPP and initialisers."""

from seg_jax.layers.activations import ACTIVATIONS, activation
from seg_jax.layers.arithmetic import (
    PADDING_NAMES,
    ReceptiveField,
    conv_output_size,
    conv_transpose_output_size,
    receptive_field,
    resolve_padding,
)
from seg_jax.layers.aspp import ASPP
from seg_jax.layers.attention import SCSE, SqueezeExcitation
from seg_jax.layers.conv import (
    Conv,
    ConvNormAct,
    ConvTranspose,
    LocallyConnected,
    SeparableConv,
    SeparableConvNormAct,
    convolve,
    correlate,
)
from seg_jax.layers.dropout import Dropout, SpatialDropout
from seg_jax.layers.initializers import bilinear_kernel_init
from seg_jax.layers.norm import NORMS, Norm
from seg_jax.layers.pooling import (
    adaptive_avg_pool,
    avg_pool,
    global_avg_pool,
    global_max_pool,
    lp_pool,
    max_pool,
    min_pool,
    resize,
)

__all__ = [
    "ACTIVATIONS", "ASPP", "Conv", "ConvNormAct", "ConvTranspose", "Dropout", "LocallyConnected",
    "NORMS", "Norm", "PADDING_NAMES", "ReceptiveField", "SCSE", "SeparableConv",
    "SeparableConvNormAct", "SpatialDropout", "SqueezeExcitation", "activation",
    "adaptive_avg_pool", "avg_pool", "bilinear_kernel_init", "conv_output_size",
    "conv_transpose_output_size", "convolve", "correlate", "global_avg_pool", "global_max_pool",
    "lp_pool", "max_pool", "min_pool", "receptive_field", "resize", "resolve_padding",
]
