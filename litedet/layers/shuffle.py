"""ShuffleNetV2 units (Ma et al., ECCV 2018, Fig. 3c/3d) and channel shuffle."""

from __future__ import annotations

import torch
from torch import nn

from litedet.layers.activations import ActLayer, create_act
from litedet.layers.attention import SqueezeExcite


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` channel groups: [B, g*c, H, W] -> [B, c*g, H, W] (ShuffleNet §3.1)."""
    batch, channels, height, width = x.shape
    if channels % groups:
        raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
    x = x.view(batch, groups, channels // groups, height, width).transpose(1, 2)
    return x.reshape(batch, channels, height, width)


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class ShuffleV2Block(nn.Module):
    """The ShuffleNetV2 unit.

    stride 1 (Fig. 3c): channel split, identity on one half, 1x1-dw3x3-1x1 on the other, concat,
    shuffle. stride 2 (Fig. 3d): no split; both branches see the whole input and downsample.
    Children follow torchvision's layout (``branch1``, ``branch2`` as Sequentials) so weights map
    one to one. ``se=True`` adds SE after the last 1x1 of ``branch2`` (paper appendix, Table 8).

    ``channel_order`` picks between the two published routings, which have the same weights but
    send different channels down each path: ``"torchvision"`` (split in halves, shuffle at the
    output; also YOLOv5-Lite's) and ``"megvii"`` (the paper authors' reference code: a stride-1
    unit takes the even channels as identity and the odd ones into the branch, and no unit
    shuffles its output). The same weights compute different functions under the two routings,
    but the routings are equivalent up to a permutation of channels: every channel has the same
    fate (born in unit u, consumed by unit v) in both, so ``litedet.models.pretrained`` loads
    Megvii weights onto the torchvision routing by permuting conv rows/columns, exactly.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        act: ActLayer = "relu",
        se: bool = False,
        channel_order: str = "torchvision",
    ) -> None:
        super().__init__()
        if channel_order not in ("torchvision", "megvii"):
            raise ValueError(f"channel_order must be 'torchvision' or 'megvii', got {channel_order!r}")
        self.channel_order = channel_order
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if out_channels % 2:
            raise ValueError(f"out_channels must be even, got {out_channels}")
        branch_features = out_channels // 2
        if stride == 1 and in_channels != out_channels:
            raise ValueError(f"a stride-1 unit needs in_channels == out_channels, got {in_channels} -> {out_channels}")
        self.stride = stride
        self.in_channels = in_channels
        self.out_channels = out_channels
        if stride == 2:
            self.branch1 = nn.Sequential(
                *_conv_bn(in_channels, in_channels, 3, stride, groups=in_channels),
                *_conv_bn(in_channels, branch_features, 1),
                create_act(act),
            )
        else:
            self.branch1 = nn.Sequential()
        branch2_in = in_channels if stride == 2 else branch_features
        layers = [
            *_conv_bn(branch2_in, branch_features, 1),
            create_act(act),
            *_conv_bn(branch_features, branch_features, 3, stride, groups=branch_features),
            *_conv_bn(branch_features, branch_features, 1),
            create_act(act),
        ]
        if se:
            layers.append(SqueezeExcite(branch_features))
        self.branch2 = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_order == "megvii":
            if self.stride == 1:
                return torch.cat((x[:, 0::2], self.branch2(x[:, 1::2])), dim=1)
            return torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)
