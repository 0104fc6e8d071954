"""MobileNetV2 (Sandler et al., CVPR 2018), Table 2: inverted residuals, linear bottlenecks.

Layout mirrors torchvision (stem conv, 17 bottlenecks, last 1x1 conv to 1280, dropout + linear),
so the parameter count equals torchvision's for every width.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn

from litedet.layers import ConvBnAct, InvertedResidual, make_divisible
from litedet.models.backbones.base import Backbone, check_width_multiplier
from litedet.models.registry import register_model


class BottleneckConf(NamedTuple):
    """A row of Table 2: expansion t, output channels c, repeats n, first stride s."""

    expansion: int
    out_channels: int
    repeats: int
    stride: int


MOBILENETV2_TABLE: tuple[BottleneckConf, ...] = (
    BottleneckConf(1, 16, 1, 1),  # 112x112
    BottleneckConf(6, 24, 2, 2),  # 56x56
    BottleneckConf(6, 32, 3, 2),  # 28x28
    BottleneckConf(6, 64, 4, 2),  # 14x14
    BottleneckConf(6, 96, 3, 1),  # 14x14
    BottleneckConf(6, 160, 3, 2),  # 7x7
    BottleneckConf(6, 320, 1, 1),  # 7x7
)


class MobileNetV2(Backbone):
    """MobileNetV2 classifier / feature extractor.

    Stages end at strides 2, 4, 8, 16, 32 (the last one includes the 1x1 conv to 1280);
    ``features_only`` returns the stride 8/16/32 maps. The last conv keeps 1280 channels for
    widths below 1 (§4, "we apply the width multiplier to all layers except the very last").
    """

    def __init__(
        self,
        width: float = 1.0,
        num_classes: int = 1000,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
        dropout: float = 0.2,
        round_nearest: int = 8,
    ) -> None:
        super().__init__(features_only, out_indices, num_classes)
        width = check_width_multiplier(width)
        stem_channels = make_divisible(32 * width, round_nearest)
        last_channels = make_divisible(1280 * max(1.0, width), round_nearest)
        stages: list[list[nn.Module]] = [[ConvBnAct(3, stem_channels, 3, 2, act="relu6")]]
        self.stage_channels, self.stage_strides = [stem_channels], [2]
        cin, stride = stem_channels, 2
        for row in MOBILENETV2_TABLE:
            cout = make_divisible(row.out_channels * width, round_nearest)
            for index in range(row.repeats):
                block_stride = row.stride if index == 0 else 1
                if block_stride == 2:
                    stride *= 2
                    stages.append([])
                    self.stage_strides.append(stride)
                    self.stage_channels.append(cout)
                stages[-1].append(InvertedResidual(cin, cin * row.expansion, cout, 3, block_stride, act="relu6"))
                self.stage_channels[-1] = cout
                cin = cout
        stages[-1].append(ConvBnAct(cin, last_channels, 1, act="relu6"))
        self.stage_channels[-1] = last_channels
        self.stages = nn.ModuleList(nn.Sequential(*blocks) for blocks in stages)
        self.classifier = (
            nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channels, num_classes))
            if num_classes and not features_only
            else None
        )
        self._set_out_indices((2, 3, 4))


@register_model()
def mobilenetv2_x1_0(**kwargs) -> MobileNetV2:
    """MobileNetV2 1.0: 3.4M params, 300M multiply-adds at 224 (Table 3)."""
    return MobileNetV2(1.0, **kwargs)


@register_model()
def mobilenetv2_x0_75(**kwargs) -> MobileNetV2:
    """MobileNetV2 0.75."""
    return MobileNetV2(0.75, **kwargs)


@register_model()
def mobilenetv2_x1_4(**kwargs) -> MobileNetV2:
    """MobileNetV2 1.4: 6.9M params, 585M multiply-adds at 224 (Table 3)."""
    return MobileNetV2(1.4, **kwargs)
