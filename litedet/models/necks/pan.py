"""The YOLOv5 PAN neck (Liu et al., "Path Aggregation Network", CVPR 2018, §3.1, as YOLOv5 builds
it with C3 blocks), in the slim widths of YOLOv5-Lite.

Top-down: a 1x1 lateral conv on C5, upsample x2, concat with C4, C3; another lateral 1x1, upsample,
concat with C3, C3 -> P3. Bottom-up: downsample P3, fuse with the C4 lateral, C3 -> P4; downsample
P4, fuse with the C5 lateral, C3 -> P5.

Two fusions exist in the published YOLOv5-Lite graphs:
- ``"concat"`` (v5lite-s, YOLOv5): a 3x3 stride-2 conv, concatenated with the lateral map.
- ``"add"`` (v5lite-e): a depthwise-separable stride-2 conv (ReLU) added to the lateral map, so
  every width in the neck can stay equal (ShuffleNetV2 guideline G1: equal widths minimise memory
  access cost) and no concat is needed (G4: fewer element-wise ops and copies).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn

from litedet.layers.activations import ActLayer
from litedet.layers.conv import ConvBnAct, DepthwiseSeparableConv
from litedet.layers.csp import C3


class PANConfig(NamedTuple):
    """Widths of one PAN, in the order the layers run."""

    lateral5: int  # 1x1 conv on C5 (kept for the bottom-up fusion)
    mid4: int  # C3 after the first upsample + concat with C4
    lateral4: int  # 1x1 conv on that (kept for the bottom-up fusion)
    out3: int  # C3 -> P3 output
    out4: int  # C3 -> P4 output
    out5: int  # C3 -> P5 output
    depth: int = 1  # bottlenecks per C3
    fuse: str = "concat"  # "concat" (YOLOv5) or "add" (YOLOv5-Lite e)


# Read from the published ncnn graphs (../shared/weights/yolov5-lite/*.param).
PAN_CONFIGS: dict[str, PANConfig] = {
    #                        lat5 mid4 lat4 out3 out4 out5 depth fuse
    "v5lite-e": PANConfig(96, 96, 96, 96, 96, 96, 1, "add"),
    "v5lite-s": PANConfig(128, 128, 64, 64, 128, 256, 1, "concat"),  # YOLOv5s head at width 0.25
}


class YoloPAN(nn.Module):
    """PAN over three backbone maps (strides s, 2s, 4s) -> three maps at the same strides.

    Args:
        in_channels: channels of C3, C4, C5 (a backbone's ``out_channels``).
        strides: their strides (a backbone's ``strides``); must double from level to level.
        config: widths (``PAN_CONFIGS``).
        act: activation of the 1x1/3x3 convs and C3 blocks ("silu" as in YOLOv5).
        down_act: activation of the depthwise-separable downsampling of the ``"add"`` fusion.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        strides: Sequence[int] = (8, 16, 32),
        config: PANConfig = PAN_CONFIGS["v5lite-s"],
        act: ActLayer = "silu",
        down_act: ActLayer = "relu",
    ) -> None:
        super().__init__()
        if len(in_channels) != 3 or len(strides) != 3:
            raise ValueError(f"YoloPAN needs three input levels, got channels {list(in_channels)} strides {list(strides)}")
        if strides[1] != 2 * strides[0] or strides[2] != 2 * strides[1]:
            raise ValueError(f"YoloPAN needs strides doubling per level (e.g. 8/16/32), got {list(strides)}")
        if config.fuse not in ("concat", "add"):
            raise ValueError(f"PAN fuse must be 'concat' or 'add', got {config.fuse!r}")
        c3, c4, c5 = in_channels
        cfg = config
        self.config = cfg
        self.in_channels = list(in_channels)
        self._strides = list(strides)
        # Declared in execution order: weight importers walk the convs in this order.
        self.lateral5 = ConvBnAct(c5, cfg.lateral5, 1, act=act)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.td4 = C3(cfg.lateral5 + c4, cfg.mid4, cfg.depth, shortcut=False, act=act)
        self.lateral4 = ConvBnAct(cfg.mid4, cfg.lateral4, 1, act=act)
        self.td3 = C3(cfg.lateral4 + c3, cfg.out3, cfg.depth, shortcut=False, act=act)
        if cfg.fuse == "concat":
            self.down3 = ConvBnAct(cfg.out3, cfg.out3, 3, 2, act=act)
            self.bu4 = C3(cfg.out3 + cfg.lateral4, cfg.out4, cfg.depth, shortcut=False, act=act)
            self.down4 = ConvBnAct(cfg.out4, cfg.out4, 3, 2, act=act)
            self.bu5 = C3(cfg.out4 + cfg.lateral5, cfg.out5, cfg.depth, shortcut=False, act=act)
        else:
            self.down3 = DepthwiseSeparableConv(cfg.out3, cfg.lateral4, 3, 2, act=down_act)
            self.bu4 = C3(cfg.lateral4, cfg.out4, cfg.depth, shortcut=False, act=act)
            self.down4 = DepthwiseSeparableConv(cfg.out4, cfg.lateral5, 3, 2, act=down_act)
            self.bu5 = C3(cfg.lateral5, cfg.out5, cfg.depth, shortcut=False, act=act)
        self.fuse_add = cfg.fuse == "add"

    @property
    def out_channels(self) -> list[int]:
        """Channels of P3, P4, P5."""
        return [self.config.out3, self.config.out4, self.config.out5]

    @property
    def strides(self) -> list[int]:
        """Strides of P3, P4, P5 (those of the inputs)."""
        return list(self._strides)

    def _fuse(self, down: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
        return down + lateral if self.fuse_add else torch.cat((down, lateral), dim=1)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        c3, c4, c5 = features
        h5 = self.lateral5(c5)
        h4 = self.lateral4(self.td4(torch.cat((self.up(h5), c4), dim=1)))
        p3 = self.td3(torch.cat((self.up(h4), c3), dim=1))
        p4 = self.bu4(self._fuse(self.down3(p3), h4))
        p5 = self.bu5(self._fuse(self.down4(p4), h5))
        return [p3, p4, p5]
