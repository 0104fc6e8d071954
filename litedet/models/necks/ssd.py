"""SSDLite extra layers (Sandler et al., "MobileNetV2", CVPR 2018, §6.2): the stride-16 and
stride-32 backbone maps, then four blocks that halve the resolution, each a 1x1 conv to half width,
a depthwise 3x3 stride-2 conv and a 1x1 conv (all BN + ReLU6), so no regular 3x3 conv remains.

Widths 512/256/256/128 are those of SSDLite-MobileNetV2 (TF Object Detection API
``ssdlite_mobilenet_v2``: ``layer_depth [-1, -1, 512, 256, 256, 128]``). The paper attaches the
first map to the expansion of layer 15; here it is the stride-16 stage output the backbone
declares, so any zoo backbone works.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from litedet.layers.activations import ActLayer
from litedet.layers.conv import ConvBnAct

SSDLITE_EXTRA_CHANNELS: tuple[int, ...] = (512, 256, 256, 128)


class SSDLiteExtras(nn.Module):
    """Backbone maps (strides s, 2s) -> those two plus ``len(extra_channels)`` coarser maps."""

    def __init__(
        self,
        in_channels: Sequence[int],
        strides: Sequence[int] = (16, 32),
        extra_channels: Sequence[int] = SSDLITE_EXTRA_CHANNELS,
        act: ActLayer = "relu6",
    ) -> None:
        super().__init__()
        if len(in_channels) != 2 or len(strides) != 2:
            raise ValueError(f"SSDLiteExtras takes two backbone maps, got channels {list(in_channels)} strides {list(strides)}")
        blocks = []
        cin = in_channels[-1]
        for cout in extra_channels:
            mid = cout // 2
            blocks.append(
                nn.Sequential(
                    ConvBnAct(cin, mid, 1, act=act),
                    ConvBnAct(mid, mid, 3, 2, groups=mid, act=act),
                    ConvBnAct(mid, cout, 1, act=act),
                )
            )
            cin = cout
        self.extras = nn.ModuleList(blocks)
        self._out_channels = [*in_channels, *extra_channels]
        self._strides = [*strides] + [strides[-1] * 2 ** (i + 1) for i in range(len(extra_channels))]

    @property
    def out_channels(self) -> list[int]:
        return list(self._out_channels)

    @property
    def strides(self) -> list[int]:
        """Nominal strides; small maps round up (a 320 input gives 20, 10, 5, 3, 2, 1 cells)."""
        return list(self._strides)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        outputs = list(features)
        x = outputs[-1]
        for block in self.extras:
            x = block(x)
            outputs.append(x)
        return outputs
