"""MobileNetV1 (Howard et al., 2017), Table 1, with the width multiplier α (§3.3); the resolution
multiplier ρ is simply the input size."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn

from litedet.layers import ConvBnAct, DepthwiseSeparableConv
from litedet.models.backbones.base import Backbone, check_width_multiplier
from litedet.models.registry import register_model


class DWConf(NamedTuple):
    """One depthwise-separable row of Table 1: output channels of the pointwise conv, stride of the dw conv."""

    out_channels: int
    stride: int


# Table 1 after the 3x3 s2 stem conv (32 channels); comments give the output resolution at 224.
MOBILENETV1_LAYERS: tuple[DWConf, ...] = (
    DWConf(64, 1),  # 112x112
    DWConf(128, 2),  # 56x56
    DWConf(128, 1),
    DWConf(256, 2),  # 28x28
    DWConf(256, 1),
    DWConf(512, 2),  # 14x14
    DWConf(512, 1),  # 5x (dw 3x3 + pw 512)
    DWConf(512, 1),
    DWConf(512, 1),
    DWConf(512, 1),
    DWConf(512, 1),
    DWConf(1024, 2),  # 7x7
    DWConf(1024, 1),
)


class MobileNetV1(Backbone):
    """MobileNetV1: stem conv3x3 s2 + 13 depthwise-separable layers (dw3x3-BN-ReLU6, pw1x1-BN-ReLU6).

    Channels are ``int(c * width)`` as in the paper (no rounding to 8). Stages end at strides
    2, 4, 8, 16, 32; ``features_only`` returns the stride 8/16/32 maps.
    """

    def __init__(
        self,
        width: float = 1.0,
        num_classes: int = 1000,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(features_only, out_indices, num_classes)
        width = check_width_multiplier(width)
        stem_channels = max(1, int(32 * width))
        stages: list[list[nn.Module]] = [[ConvBnAct(3, stem_channels, 3, 2, act="relu6")]]
        self.stage_channels, self.stage_strides = [stem_channels], [2]
        cin, stride = stem_channels, 2
        for row in MOBILENETV1_LAYERS:
            cout = max(1, int(row.out_channels * width))
            if row.stride == 2:
                stride *= 2
                stages.append([])
                self.stage_channels.append(cout)
                self.stage_strides.append(stride)
            stages[-1].append(DepthwiseSeparableConv(cin, cout, 3, row.stride, act="relu6"))
            self.stage_channels[-1] = cout
            cin = cout
        self.stages = nn.ModuleList(nn.Sequential(*blocks) for blocks in stages)
        self.head_channels = cin
        self.classifier = (
            nn.Sequential(nn.Dropout(dropout), nn.Linear(cin, num_classes)) if num_classes and not features_only else None
        )
        self._set_out_indices((2, 3, 4))


@register_model()
def mobilenetv1_x1_0(**kwargs) -> MobileNetV1:
    """MobileNetV1 1.0: 4.2M params, 569M multiply-adds at 224 (Table 6)."""
    return MobileNetV1(1.0, **kwargs)


@register_model()
def mobilenetv1_x0_75(**kwargs) -> MobileNetV1:
    """MobileNetV1 0.75: 2.6M params, 325M multiply-adds at 224 (Table 6)."""
    return MobileNetV1(0.75, **kwargs)


@register_model()
def mobilenetv1_x0_5(**kwargs) -> MobileNetV1:
    """MobileNetV1 0.5: 1.3M params, 149M multiply-adds at 224 (Table 6)."""
    return MobileNetV1(0.5, **kwargs)


@register_model()
def mobilenetv1_x0_25(**kwargs) -> MobileNetV1:
    """MobileNetV1 0.25: 0.5M params, 41M multiply-adds at 224 (Table 6)."""
    return MobileNetV1(0.25, **kwargs)
