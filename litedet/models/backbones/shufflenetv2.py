"""ShuffleNetV2 (Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture
Design", ECCV 2018), Table 5, and its SE variant (appendix).

Layout and names follow torchvision (``conv1``, ``maxpool``, ``stage2..4``, ``conv5``, ``fc``)
so parameter counts equal torchvision's and its state dicts load unchanged.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn

from litedet.layers import ConvBnAct, ShuffleV2Block
from litedet.layers.activations import ActLayer
from litedet.models.backbones.base import Backbone
from litedet.models.registry import register_model


class ShuffleNetV2Config(NamedTuple):
    """One row of Table 5: output channels of conv1, stage2, stage3, stage4, conv5."""

    stage_repeats: tuple[int, int, int]
    stage_out_channels: tuple[int, int, int, int, int]


# Table 5 (output channels per complexity level; repeats 4/8/4 for every width).
SHUFFLENETV2_CONFIGS: dict[float, ShuffleNetV2Config] = {
    0.5: ShuffleNetV2Config((4, 8, 4), (24, 48, 96, 192, 1024)),
    1.0: ShuffleNetV2Config((4, 8, 4), (24, 116, 232, 464, 1024)),
    1.5: ShuffleNetV2Config((4, 8, 4), (24, 176, 352, 704, 1024)),
    2.0: ShuffleNetV2Config((4, 8, 4), (24, 244, 488, 976, 2048)),
}


class ShuffleNetV2(Backbone):
    """ShuffleNetV2 classifier / feature extractor.

    Stages (feature levels): 0 = conv1+maxpool (stride 4), 1 = stage2 (8), 2 = stage3 (16),
    3 = stage4 (32), and 4 = conv5 (32) when ``with_conv5``. ``features_only`` defaults to the
    stride 8/16/32 maps of stage2..stage4, as detectors use them.

    Args:
        stage_repeats: units per stage 2..4 (the first of each is the stride-2 unit).
        stage_out_channels: conv1, stage2, stage3, stage4[, conv5] output channels.
        with_conv5: keep the final 1x1 conv (YOLOv5-Lite drops it, and the pooling).
        se: put SE in every unit (appendix, "SE-ShuffleNet v2").
        act: activation of every unit ("relu" in the paper).
        channel_order: "torchvision" (default, also YOLOv5-Lite's) or "megvii" routing (see
            ``ShuffleV2Block``). Megvii's ImageNet weights load onto either
            (``litedet.models.pretrained.load_megvii_shufflenetv2`` permutes them for the default).
    """

    def __init__(
        self,
        stage_repeats: Sequence[int] = (4, 8, 4),
        stage_out_channels: Sequence[int] = (24, 116, 232, 464, 1024),
        num_classes: int = 1000,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
        with_conv5: bool = True,
        se: bool = False,
        act: ActLayer = "relu",
        in_channels: int = 3,
        channel_order: str = "torchvision",
    ) -> None:
        super().__init__(features_only, out_indices, num_classes)
        if len(stage_repeats) != 3:
            raise ValueError(f"stage_repeats needs 3 entries (stage2..4), got {list(stage_repeats)}")
        if len(stage_out_channels) != (5 if with_conv5 else 4) and len(stage_out_channels) != 5:
            raise ValueError(f"stage_out_channels needs 5 entries (conv1, stage2..4, conv5), got {list(stage_out_channels)}")
        if any(c <= 0 for c in stage_out_channels) or any(r <= 0 for r in stage_repeats):
            raise ValueError(f"channels and repeats must be positive, got {list(stage_out_channels)} / {list(stage_repeats)}")
        channels = list(stage_out_channels)
        self.conv1 = ConvBnAct(in_channels, channels[0], 3, 2, act=act)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = channels[0]
        for index, (repeats, cout) in enumerate(zip(stage_repeats, channels[1:4]), start=2):
            units = [ShuffleV2Block(cin, cout, 2, act=act, se=se, channel_order=channel_order)]
            units += [
                ShuffleV2Block(cout, cout, 1, act=act, se=se, channel_order=channel_order) for _ in range(repeats - 1)
            ]
            setattr(self, f"stage{index}", nn.Sequential(*units))
            cin = cout
        self.with_conv5 = with_conv5
        self.stage_channels = channels[:4]
        self.stage_strides = [4, 8, 16, 32]
        stem = nn.Sequential(self.conv1, self.maxpool)
        stages = [stem, self.stage2, self.stage3, self.stage4]
        if with_conv5:
            self.conv5 = ConvBnAct(cin, channels[4], 1, act=act)
            stages.append(self.conv5)
            self.stage_channels.append(channels[4])
            self.stage_strides.append(32)
        # `stages` holds references only; the modules are owned by the named attributes above.
        self._stage_refs = stages
        head_channels = self.stage_channels[-1]
        self.fc = nn.Linear(head_channels, num_classes) if num_classes and not features_only else None
        self.stage_repeats = tuple(stage_repeats)
        self._set_out_indices((1, 2, 3))
        if features_only and with_conv5 and 4 not in self.out_indices:
            # A feature extractor owns only what it runs (timm's features_only does the same).
            del self.conv5
            self._stage_refs.pop()
            self.stage_channels.pop()
            self.stage_strides.pop()
            self.with_conv5 = False
        if features_only:  # likewise the stages after the deepest returned one
            deepest = max(self.out_indices)
            for level in range(deepest + 1, 4):
                delattr(self, f"stage{level + 1}")
            del self._stage_refs[deepest + 1 :]

    @property
    def stages(self) -> list[nn.Module]:  # type: ignore[override]
        return self._stage_refs

    @property
    def classifier(self) -> nn.Module | None:  # type: ignore[override]
        """torchvision names the classifier ``fc``; the base class's pooled head uses it."""
        return self.fc


def _shufflenetv2(width: float, se: bool = False, **kwargs) -> ShuffleNetV2:
    if width not in SHUFFLENETV2_CONFIGS:
        raise ValueError(f"ShuffleNetV2 width must be one of {sorted(SHUFFLENETV2_CONFIGS)}, got {width!r}")
    config = SHUFFLENETV2_CONFIGS[width]
    return ShuffleNetV2(config.stage_repeats, config.stage_out_channels, se=se, **kwargs)


@register_model()
def shufflenetv2_x0_5(**kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 0.5x: 1.37M params, 41M multiply-adds at 224 (Table 5)."""
    return _shufflenetv2(0.5, **kwargs)


@register_model()
def shufflenetv2_x1_0(**kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 1.0x: 2.28M params, 146M multiply-adds at 224 (Table 5)."""
    return _shufflenetv2(1.0, **kwargs)


@register_model()
def shufflenetv2_x1_5(**kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 1.5x: 3.50M params, 299M multiply-adds at 224 (Table 5)."""
    return _shufflenetv2(1.5, **kwargs)


@register_model()
def shufflenetv2_x2_0(**kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 2.0x: 7.39M params, 591M multiply-adds at 224 (Table 5)."""
    return _shufflenetv2(2.0, **kwargs)


@register_model()
def shufflenetv2_se_x1_0(**kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 1.0x with SE in every unit (appendix)."""
    return _shufflenetv2(1.0, se=True, **kwargs)
