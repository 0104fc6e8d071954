"""Squeeze-and-Excitation: the one SE block every network here shares."""

from __future__ import annotations

import torch
from torch import nn

from litedet.layers.activations import ActLayer, create_act
from litedet.layers.conv import make_divisible


class SqueezeExcite(nn.Module):
    """SE (Hu et al.): global pool -> 1x1 reduce -> act -> 1x1 expand -> gate -> scale.

    ``rd_ratio`` is the squeeze ratio (1/4 in MobileNetV3 and the ShuffleNetV2 appendix);
    ``gate`` is sigmoid for SENet and hard-sigmoid in MobileNetV3 (§5.3).
    """

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 0.25,
        rd_divisor: int = 8,
        act: ActLayer = "relu",
        gate: ActLayer = "sigmoid",
        rd_channels: int | None = None,
    ) -> None:
        super().__init__()
        if rd_channels is None:
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor)
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=True)
        self.act = create_act(act)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=True)
        self.gate = create_act(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = self.gate(self.fc2(self.act(self.fc1(scale))))
        return x * scale
