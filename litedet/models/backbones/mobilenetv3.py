"""MobileNetV3 (Howard et al., ICCV 2019): Tables 1 (Large) and 2 (Small), h-swish (§5.2),
SE with hard-sigmoid (§5.3) and the efficient last stage (§5.3, Fig. 5).

Layout mirrors torchvision so the parameter count equals torchvision's.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn

from litedet.layers import ConvBnAct, InvertedResidual, make_divisible
from litedet.models.backbones.base import Backbone, check_width_multiplier
from litedet.models.registry import register_model


class BneckConf(NamedTuple):
    """A bneck row: input c, kernel, expansion size, output c, SE, nonlinearity (RE/HS), stride."""

    in_channels: int
    kernel: int
    expanded: int
    out_channels: int
    se: bool
    act: str
    stride: int


B = BneckConf
# Table 1, MobileNetV3-Large (after the 16-channel h-swish stem at 112x112).
LARGE: tuple[BneckConf, ...] = (
    B(16, 3, 16, 16, False, "RE", 1),  # 112x112
    B(16, 3, 64, 24, False, "RE", 2),  # 56x56
    B(24, 3, 72, 24, False, "RE", 1),
    B(24, 5, 72, 40, True, "RE", 2),  # 28x28
    B(40, 5, 120, 40, True, "RE", 1),
    B(40, 5, 120, 40, True, "RE", 1),
    B(40, 3, 240, 80, False, "HS", 2),  # 14x14
    B(80, 3, 200, 80, False, "HS", 1),
    B(80, 3, 184, 80, False, "HS", 1),
    B(80, 3, 184, 80, False, "HS", 1),
    B(80, 3, 480, 112, True, "HS", 1),
    B(112, 3, 672, 112, True, "HS", 1),
    B(112, 5, 672, 160, True, "HS", 2),  # 7x7
    B(160, 5, 960, 160, True, "HS", 1),
    B(160, 5, 960, 160, True, "HS", 1),
)
# Table 2, MobileNetV3-Small.
SMALL: tuple[BneckConf, ...] = (
    B(16, 3, 16, 16, True, "RE", 2),  # 56x56
    B(16, 3, 72, 24, False, "RE", 2),  # 28x28
    B(24, 3, 88, 24, False, "RE", 1),
    B(24, 5, 96, 40, True, "HS", 2),  # 14x14
    B(40, 5, 240, 40, True, "HS", 1),
    B(40, 5, 240, 40, True, "HS", 1),
    B(40, 5, 120, 48, True, "HS", 1),
    B(48, 5, 144, 48, True, "HS", 1),
    B(48, 5, 288, 96, True, "HS", 2),  # 7x7
    B(96, 5, 576, 96, True, "HS", 1),
    B(96, 5, 576, 96, True, "HS", 1),
)
_ACT = {"RE": "relu", "HS": "hard_swish"}


class MobileNetV3(Backbone):
    """MobileNetV3 classifier / feature extractor.

    The efficient last stage: 1x1 conv to 6x the last bneck width (960 / 576), pooling, then a
    1x1 (linear) to ``last_channels`` (1280 / 1024) with h-swish, dropout, classifier. Stages end
    at strides 2, 4, 8, 16, 32 (the stride-32 stage includes the 1x1 conv); ``features_only``
    returns the stride 8/16/32 maps.
    """

    def __init__(
        self,
        table: Sequence[BneckConf],
        last_channels: int,
        width: float = 1.0,
        num_classes: int = 1000,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
        dropout: float = 0.2,
    ) -> None:
        super().__init__(features_only, out_indices, num_classes)
        width = check_width_multiplier(width)

        def scaled(channels: int) -> int:
            return make_divisible(channels * width, 8)

        stem_channels = scaled(table[0].in_channels)
        stages: list[list[nn.Module]] = [[ConvBnAct(3, stem_channels, 3, 2, act="hard_swish")]]
        self.stage_channels, self.stage_strides = [stem_channels], [2]
        cin, stride = stem_channels, 2
        for row in table:
            cout = scaled(row.out_channels)
            if row.stride == 2:
                stride *= 2
                stages.append([])
                self.stage_strides.append(stride)
                self.stage_channels.append(cout)
            # The expansion is the row's ratio (expanded / input) of the *actual* input width, as
            # the reference implementation's ``expand_input_by_factor``: equal to the table at
            # 1.0, and what gives Tables 3/4's 0.75 counts (4.0M / 155M, 2.0M / 44M). torchvision
            # scales the expansion size itself instead (140.6M / 39.5M at 0.75).
            expanded = make_divisible(cin * row.expanded / row.in_channels, 8)
            stages[-1].append(
                InvertedResidual(cin, expanded, cout, row.kernel, row.stride, act=_ACT[row.act], se=row.se)
            )
            self.stage_channels[-1] = cout
            cin = cout
        last_conv = 6 * cin
        stages[-1].append(ConvBnAct(cin, last_conv, 1, act="hard_swish"))
        self.stage_channels[-1] = last_conv
        self.stages = nn.ModuleList(nn.Sequential(*blocks) for blocks in stages)
        # Like MobileNetV2 (§4) and the reference implementation's fine-grained classification
        # mode, the last 1x1 is not narrowed below its width-1.0 size (Table 3/4 counts for 0.75).
        head_channels = make_divisible(last_channels * max(1.0, width), 8)
        self.classifier = (
            nn.Sequential(
                nn.Linear(last_conv, head_channels),
                nn.Hardswish(),
                nn.Dropout(dropout),
                nn.Linear(head_channels, num_classes),
            )
            if num_classes and not features_only
            else None
        )
        self._set_out_indices((2, 3, 4))


@register_model()
def mobilenetv3_large_x1_0(**kwargs) -> MobileNetV3:
    """MobileNetV3-Large 1.0: 5.4M params, 219M multiply-adds at 224 (Table 3)."""
    return MobileNetV3(LARGE, 1280, 1.0, **kwargs)


@register_model()
def mobilenetv3_large_x0_75(**kwargs) -> MobileNetV3:
    """MobileNetV3-Large 0.75: 4.0M params, 155M multiply-adds at 224 (Table 3)."""
    return MobileNetV3(LARGE, 1280, 0.75, **kwargs)


@register_model()
def mobilenetv3_small_x1_0(**kwargs) -> MobileNetV3:
    """MobileNetV3-Small 1.0: 2.5M params, 56M multiply-adds at 224 (Table 4)."""
    return MobileNetV3(SMALL, 1024, 1.0, **kwargs)


@register_model()
def mobilenetv3_small_x0_75(**kwargs) -> MobileNetV3:
    """MobileNetV3-Small 0.75: 2.0M params, 44M multiply-adds at 224 (Table 4)."""
    return MobileNetV3(SMALL, 1024, 0.75, **kwargs)
