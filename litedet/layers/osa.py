"""One-Shot Aggregation module (VoVNet, Lee et al., CVPRW 2019, §3.2 and Fig. 2b)."""

from __future__ import annotations

import torch
from torch import nn

from litedet.layers.activations import ActLayer
from litedet.layers.conv import ConvBnAct


class OSAModule(nn.Module):
    """``num_layers`` 3x3 conv-BN-ReLU in a chain; the input and every layer's output are
    concatenated once at the end and reduced by a 1x1 conv to ``out_channels``.

    Aggregating once (instead of DenseNet's every layer) keeps input and output channels of each
    conv equal (ShuffleNetV2 G1) and MAC low. ``identity=True`` adds the input back (used on the
    repeated modules of a stage, where shapes match).
    """

    def __init__(
        self,
        in_channels: int,
        stage_channels: int,
        out_channels: int,
        num_layers: int = 5,
        identity: bool = False,
        act: ActLayer = "relu",
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if identity and in_channels != out_channels:
            raise ValueError(f"identity needs in_channels == out_channels, got {in_channels} -> {out_channels}")
        self.identity = identity
        self.in_channels = in_channels
        self.out_channels = out_channels
        layers = []
        channels = in_channels
        for _ in range(num_layers):
            layers.append(ConvBnAct(channels, stage_channels, 3, act=act))
            channels = stage_channels
        self.layers = nn.ModuleList(layers)
        self.concat = ConvBnAct(in_channels + num_layers * stage_channels, out_channels, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [x]
        out = x
        for layer in self.layers:
            out = layer(out)
            outputs.append(out)
        out = self.concat(torch.cat(outputs, dim=1))
        if self.identity:
            out = out + x
        return out
