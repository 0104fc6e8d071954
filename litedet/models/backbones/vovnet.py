"""VoVNet (Lee et al., "An Energy and GPU-Computation Efficient Backbone Network for Real-Time
Object Detection", CVPRW 2019), Table 1: stem, four stages of OSA modules."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn

from litedet.layers import ConvBnAct, OSAModule
from litedet.models.backbones.base import Backbone
from litedet.models.registry import register_model


class VoVNetConfig(NamedTuple):
    """Table 1 columns: conv channels per OSA stage, concat (output) channels, modules per stage."""

    stage_channels: tuple[int, int, int, int]
    concat_channels: tuple[int, int, int, int]
    modules_per_stage: tuple[int, int, int, int]
    layers_per_module: int = 5


VOVNET_CONFIGS: dict[str, VoVNetConfig] = {
    #                  OSA conv ch (stage2..5)   concat ch (stage2..5)     modules
    "vovnet27_slim": VoVNetConfig((64, 80, 96, 112), (128, 256, 384, 512), (1, 1, 1, 1)),
    "vovnet39": VoVNetConfig((128, 160, 192, 224), (256, 512, 768, 1024), (1, 1, 2, 2)),
    "vovnet57": VoVNetConfig((128, 160, 192, 224), (256, 512, 768, 1024), (1, 1, 4, 3)),
}


class VoVNet(Backbone):
    """Stem 3x3 convs 64 (s2) - 64 - 128 (s2), then stages 2-5 of OSA modules; a 3x3 s2 max-pool
    opens stages 3-5. Repeated modules in a stage add an identity connection.

    Feature levels: 0 = stem (stride 4), 1..4 = stage2..5 (strides 4, 8, 16, 32);
    ``features_only`` returns the stride 8/16/32 maps of stages 3-5.
    """

    def __init__(
        self,
        config: VoVNetConfig,
        num_classes: int = 1000,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
    ) -> None:
        super().__init__(features_only, out_indices, num_classes)
        stem = nn.Sequential(ConvBnAct(3, 64, 3, 2), ConvBnAct(64, 64, 3, 1), ConvBnAct(64, 128, 3, 2))
        stages: list[nn.Module] = [stem]
        self.stage_channels, self.stage_strides = [128], [4]
        cin, stride = 128, 4
        for index, (conv_ch, out_ch, modules) in enumerate(
            zip(config.stage_channels, config.concat_channels, config.modules_per_stage)
        ):
            blocks: list[nn.Module] = []
            if index > 0:
                blocks.append(nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True))
                stride *= 2
            for module_index in range(modules):
                blocks.append(
                    OSAModule(cin, conv_ch, out_ch, config.layers_per_module, identity=module_index > 0)
                )
                cin = out_ch
            stages.append(nn.Sequential(*blocks))
            self.stage_channels.append(out_ch)
            self.stage_strides.append(stride)
        self.stages = nn.ModuleList(stages)
        self.classifier = nn.Linear(cin, num_classes) if num_classes and not features_only else None
        self._set_out_indices((2, 3, 4))


@register_model()
def vovnet27_slim(**kwargs) -> VoVNet:
    """VoVNet-27-slim: 3.5M params (Table 1)."""
    return VoVNet(VOVNET_CONFIGS["vovnet27_slim"], **kwargs)


@register_model()
def vovnet39(**kwargs) -> VoVNet:
    """VoVNet-39: 22.6M params (Table 1)."""
    return VoVNet(VOVNET_CONFIGS["vovnet39"], **kwargs)


@register_model()
def vovnet57(**kwargs) -> VoVNet:
    """VoVNet-57: 36.6M params (Table 1)."""
    return VoVNet(VOVNET_CONFIGS["vovnet57"], **kwargs)
