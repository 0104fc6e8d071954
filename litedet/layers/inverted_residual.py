"""Inverted residual with linear bottleneck (MobileNetV2 §3.3, Fig. 3b) and its MobileNetV3 form
(h-swish and SE, §5)."""

from __future__ import annotations

import torch
from torch import nn

from litedet.layers.activations import ActLayer
from litedet.layers.attention import SqueezeExcite
from litedet.layers.conv import ConvBnAct, make_divisible


class InvertedResidual(nn.Module):
    """1x1 expand -> kxk depthwise -> [SE] -> 1x1 linear projection, with a skip when shapes match.

    ``expanded_channels == in_channels`` skips the expansion conv (MobileNetV2's first block,
    MobileNetV3's first bneck row). The projection has no activation: the "linear bottleneck"
    (MobileNetV2 §3.2). Children are named as torchvision's ``block`` so counts and weights match.
    """

    def __init__(
        self,
        in_channels: int,
        expanded_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        act: ActLayer = "relu6",
        se: bool = False,
        se_gate: ActLayer = "hard_sigmoid",
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.has_skip = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expanded_channels != in_channels:
            layers.append(ConvBnAct(in_channels, expanded_channels, 1, act=act))
        layers.append(ConvBnAct(expanded_channels, expanded_channels, kernel_size, stride, groups=expanded_channels, act=act))
        if se:
            # MobileNetV3 §5.3: squeeze to 1/4 of the expansion, hard-sigmoid gate.
            layers.append(SqueezeExcite(expanded_channels, rd_channels=make_divisible(expanded_channels // 4, 8), gate=se_gate))
        layers.append(ConvBnAct(expanded_channels, out_channels, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.has_skip:
            out = out + x
        return out
