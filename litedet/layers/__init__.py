"""Building blocks shared by every network in litedet."""

from litedet.layers.activations import create_act, get_act_layer
from litedet.layers.attention import SqueezeExcite
from litedet.layers.conv import (
    ConvBnAct,
    DepthwiseSeparableConv,
    fuse_conv_bn,
    fuse_model,
    is_identity_batchnorm,
    make_divisible,
    restore_folded_batchnorm,
)
from litedet.layers.csp import C3, Bottleneck
from litedet.layers.inverted_residual import InvertedResidual
from litedet.layers.osa import OSAModule
from litedet.layers.shuffle import ShuffleV2Block, channel_shuffle

__all__ = [
    "Bottleneck",
    "C3",
    "ConvBnAct",
    "DepthwiseSeparableConv",
    "InvertedResidual",
    "OSAModule",
    "ShuffleV2Block",
    "SqueezeExcite",
    "channel_shuffle",
    "create_act",
    "fuse_conv_bn",
    "fuse_model",
    "get_act_layer",
    "is_identity_batchnorm",
    "make_divisible",
    "restore_folded_batchnorm",
]
