"""Export-time graph rewrites on the torch model: fold ShuffleNetV2 channel shuffles into weights.

``fold_channel_shuffles`` replaces the ShuffleNetV2 units of each stage of a detector's (or
classifier's) backbone with one ``litedet.layers.shuffle.FoldedShuffleStage``
(``fold_shuffle_stage`` explains how), so the exported ONNX / OpenVINO / ncnn graphs carry no Reshape-Transpose-Reshape shuffle.
The channel order a stage ends in is absorbed by whatever reads the map: the next stage, conv5,
or the YOLO PAN's 1x1 convs. Only weights are reordered, so the outputs equal the model's.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from litedet.layers.attention import SqueezeExcite
from litedet.layers.shuffle import FoldedShuffleStage, ShuffleV2Block, fold_shuffle_stage, permute_input_channels


class RestoreChannelOrder(nn.Module):
    """``x[:, order]``: the fallback when no known consumer can absorb a permuted map (a Gather)."""

    def __init__(self, order: Sequence[int]) -> None:
        super().__init__()
        inverse = [0] * len(order)
        for position, channel in enumerate(order):
            inverse[channel] = position
        self.register_buffer("index", torch.as_tensor(inverse, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.index)


def _is_identity(order: Sequence[int]) -> bool:
    return all(p == c for p, c in enumerate(order))


def _neck_consumers(neck: nn.Module, level: int) -> list[tuple[nn.Module, int]] | None:
    """(module, channel offset) pairs of a YOLO PAN that read backbone map ``level`` (0 = C3)."""
    from litedet.models.necks.pan import YoloPAN

    if not isinstance(neck, YoloPAN):
        return None
    config = neck.config
    # forward: lateral5(c5); td4(cat(up(h5), c4)); td3(cat(up(h4), c3))
    return {
        0: [(neck.td3.cv1, config.lateral4), (neck.td3.cv2, config.lateral4)],
        1: [(neck.td4.cv1, config.lateral5), (neck.td4.cv2, config.lateral5)],
        2: [(neck.lateral5, 0)],
    }[level]


def _plain_units(backbone: nn.Module) -> bool:
    """True when every ShuffleNetV2 unit holds only layers the fold knows how to permute."""
    known = (nn.Conv2d, nn.BatchNorm2d, nn.Identity, nn.Sequential, SqueezeExcite, ShuffleV2Block)
    for unit in backbone.modules():
        if isinstance(unit, ShuffleV2Block):
            for layer in unit.modules():
                if not isinstance(layer, known) and any(True for _ in layer.parameters(recurse=False)):
                    return False
                if not isinstance(layer, known) and any(True for _ in layer.children()):
                    return False
    return True


def _dense_convs(branch: nn.Module) -> list[nn.Conv2d]:
    """The dense convs of a branch in order, leaving out a squeeze-excite's own 1x1 convs."""
    found: list[nn.Conv2d] = []
    for child in branch.children():
        if isinstance(child, SqueezeExcite):
            continue
        if isinstance(child, nn.Conv2d):
            if child.groups == 1:
                found.append(child)
        else:
            found.extend(_dense_convs(child))
    return found


def _standard_widths(backbone: nn.Module) -> bool:
    """True when every ShuffleNetV2 unit has the widths its routing assumes (branches of half the
    unit's output each, a stride-1 unit reading the other half). Channel-pruned units break this:
    their shuffle is not a fixed half/half interleave any more, so they are exported unfolded."""
    for unit in backbone.modules():
        if not isinstance(unit, ShuffleV2Block):
            continue
        half = unit.out_channels // 2
        convs2 = _dense_convs(unit.branch2)
        # the output permutation goes into the branch's last conv: it must be a direct layer of
        # the branch (a low-rank factorised conv nests it one level deeper)
        if not convs2 or convs2[-1].out_channels != half or convs2[-1] not in list(unit.branch2):
            return False
        if unit.stride == 1:
            if unit.in_channels != unit.out_channels or convs2[0].in_channels != unit.in_channels - half:
                return False
        else:
            convs1 = _dense_convs(unit.branch1) if unit.branch1 is not None else []
            if (not convs1 or convs1[-1].out_channels != half or convs1[-1] not in list(unit.branch1)
                    or convs2[0].in_channels != unit.in_channels):
                return False
    return True


@torch.no_grad()
def fold_channel_shuffles(model: nn.Module) -> int:
    """Fold the channel shuffles of a ShuffleNetV2 backbone into weights, in place.

    ``model`` is a ``Detector`` (backbone + neck + head) or a backbone. Call it on an eval-mode
    copy just before export (``litedet.export.api`` does). Returns the number of shuffles removed
    (0 for models without ShuffleNetV2 units, which are left untouched).
    """
    from litedet.models.backbones.shufflenetv2 import ShuffleNetV2

    backbone = getattr(model, "backbone", model)
    neck = getattr(model, "neck", None)
    if not isinstance(backbone, ShuffleNetV2) or not _plain_units(backbone):
        return 0  # e.g. QAT's fake-quantized convs: their per-channel quantizers would need permuting too
    if not _standard_widths(backbone):
        return 0  # channel-pruned units: exported with their shuffles
    removed = 0
    feature_stages = list(backbone.out_indices) if backbone.features_only else []
    pan_reads = neck is not None and len(feature_stages) == 3 and _neck_consumers(neck, 0) is not None
    order: list[int] | None = None  # storage order of the map entering the next stage
    for stage_index, stage in enumerate(backbone.stages):
        units = list(stage) if isinstance(stage, nn.Sequential) else []
        if any(isinstance(u, FoldedShuffleStage) for u in units):
            raise ValueError("the model's channel shuffles are already folded")
        if units and all(isinstance(u, ShuffleV2Block) for u in units):
            removed += sum(u.channel_order == "torchvision" for u in units)
            folded, order = fold_shuffle_stage(units, order)
            del stage[1:]
            stage[0] = folded
        elif order is not None:
            permute_input_channels(stage, order)  # conv5 (a ConvBnAct) reads the stage4 map
            order = None
        if order is None or _is_identity(order):
            order = None
            continue
        if stage_index in feature_stages:
            if pan_reads:
                for module, _ in _neck_consumers(neck, feature_stages.index(stage_index)):
                    # the backbone map is the last input of the PAN's concat; read the offset off
                    # the conv itself (a channel-pruned neck is narrower than its config says)
                    reader = _dense_convs(module)[0]
                    permute_input_channels(module, order, reader.in_channels - len(order))
            else:  # a reader we do not know: put the channels back in true order (one Gather)
                stage.append(RestoreChannelOrder(order))
                order = None
    if order is not None:  # the classifier: global pool, then fc reads the channels
        classifier = backbone.classifier
        if isinstance(classifier, nn.Linear):
            classifier.weight.data = classifier.weight.data[:, torch.as_tensor(order)]
        elif classifier is not None or not backbone.features_only:
            backbone.stages[-1].append(RestoreChannelOrder(order))
    return removed


__all__ = ["RestoreChannelOrder", "fold_channel_shuffles"]
