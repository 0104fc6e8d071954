"""CSP blocks of the YOLOv5 neck: the bottleneck and C3 (a CSP bottleneck with three convs).

C3 (Wang et al., "CSPNet", CVPR Workshops 2020, §3.1, as YOLOv5 implements it): split the input
into two 1x1 projections, run ``n`` bottlenecks on one, concatenate, fuse with a third 1x1 conv.
YOLOv5-Lite keeps these in its slim PAN head, with SiLU activations and no residual in the neck.

Children are declared in execution order (``cv1``, ``m``, ``cv2``, ``cv3``) so that walking the
modules visits convs in the same order as the exported graphs (``litedet.models.ncnn_import``).
"""

from __future__ import annotations

import torch
from torch import nn

from litedet.layers.activations import ActLayer
from litedet.layers.conv import ConvBnAct


class Bottleneck(nn.Module):
    """1x1 conv -> 3x3 conv, plus the input when ``shortcut`` and the widths agree (YOLOv5)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        shortcut: bool = True,
        expansion: float = 1.0,
        act: ActLayer = "silu",
    ) -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        self.cv1 = ConvBnAct(in_channels, hidden, 1, act=act)
        self.cv2 = ConvBnAct(hidden, out_channels, 3, act=act)
        self.has_skip = shortcut and in_channels == out_channels
        self.in_channels = in_channels
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.cv2(self.cv1(x))
        return x + out if self.has_skip else out


class C3(nn.Module):
    """CSP bottleneck with three convs: ``cv3(cat(m(cv1(x)), cv2(x)))``.

    Args:
        in_channels, out_channels: block widths.
        depth: number of bottlenecks in ``m``.
        shortcut: residual inside each bottleneck (YOLOv5 uses it in the backbone, not the neck).
        expansion: hidden width = ``int(out_channels * expansion)`` (0.5 in YOLOv5).
        act: activation of every conv ("silu" in YOLOv5 v4+ and YOLOv5-Lite).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        depth: int = 1,
        shortcut: bool = True,
        expansion: float = 0.5,
        act: ActLayer = "silu",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"C3 depth must be >= 1, got {depth}")
        hidden = int(out_channels * expansion)
        if hidden < 1:
            raise ValueError(f"C3 hidden width int({out_channels} * {expansion}) must be >= 1")
        self.cv1 = ConvBnAct(in_channels, hidden, 1, act=act)
        self.m = nn.Sequential(*[Bottleneck(hidden, hidden, shortcut, 1.0, act=act) for _ in range(depth)])
        self.cv2 = ConvBnAct(in_channels, hidden, 1, act=act)
        self.cv3 = ConvBnAct(2 * hidden, out_channels, 1, act=act)
        self.in_channels = in_channels
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))


__all__ = ["Bottleneck", "C3"]
