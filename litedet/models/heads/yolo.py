"""The YOLOv5 anchor head (``Detect`` in YOLOv5, Jocher et al. 2020), stopped at the raw maps.

Raw output layout (what ``forward`` returns and what every exported engine returns): a list with
one tensor per level i (strides 8/16/32 for P3/P4/P5),

    [B, na * (5 + nc), H_i, W_i]  float logits, channel a * (5 + nc) + k,

for anchor ``a`` (0..na-1, anchors[i][a] = (w, h) in input pixels) and ``k`` in
(tx, ty, tw, th, objectness, class 0..nc-1). Nothing is sigmoided here: decode (YOLOv5 v4+
``xy = (2 sigmoid - 0.5 + grid) * stride``, ``wh = (2 sigmoid)^2 * anchor``) and NMS live in
``litedet.ops`` so every backend shares them.

The ncnn builds of YOLOv5-Lite emit the same numbers as ``(na, H_i * W_i, 5 + nc)`` per level
(reshape to (na, 5 + nc, H_i * W_i), then swap the last two axes).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from litedet.config import YOLOV5_ANCHORS


def _as_anchor_list(anchors: Sequence[Sequence[Sequence[float]]]) -> list[list[list[float]]]:
    out = [[[float(v) for v in pair] for pair in level] for level in anchors]
    for index, level in enumerate(out):
        if not level or any(len(pair) != 2 or min(pair) <= 0 for pair in level):
            raise ValueError(f"anchors level {index} must be a non-empty list of positive (w, h) pairs, got {level}")
    if len({len(level) for level in out}) != 1:
        raise ValueError(f"every level needs the same number of anchors, got {[len(level) for level in out]}")
    return out


class YoloHead(nn.Module):
    """One 1x1 conv per level to ``na * (5 + num_classes)`` channels (with bias).

    Args:
        in_channels: channels of each neck output.
        strides: stride of each level (input pixels per cell).
        num_classes: classes to predict.
        anchors: per level, (w, h) anchor pairs in input pixels (YOLOv5 COCO anchors by default).
    """

    kind = "yolo"

    def __init__(
        self,
        in_channels: Sequence[int],
        strides: Sequence[int] = (8, 16, 32),
        num_classes: int = 80,
        anchors: Sequence[Sequence[Sequence[float]]] = YOLOV5_ANCHORS,
    ) -> None:
        super().__init__()
        self.anchors = _as_anchor_list(anchors)
        if not (len(in_channels) == len(strides) == len(self.anchors)):
            raise ValueError(
                f"YoloHead needs one stride and anchor set per input: {len(in_channels)} inputs, "
                f"{len(strides)} strides, {len(self.anchors)} anchor levels"
            )
        self.in_channels = list(in_channels)
        self.strides = [int(s) for s in strides]
        self.num_anchors = len(self.anchors[0])
        self.num_classes = 0
        self.convs = nn.ModuleList()
        self.reset(num_classes)

    def reset(self, num_classes: int, keep_box_obj: bool = True, keep_classes: Sequence[int] | None = None) -> bool:
        """Replace the prediction convs for ``num_classes`` classes (prior-initialised).

        ``keep_classes``: for each new class, the index of the old class whose rows it keeps (a
        fine-tune on a subset of the checkpoint's classes starts from what the model already knows
        about them); needs ``keep_box_obj``.

        ``keep_box_obj``: carry over the rows that do not depend on the classes, per anchor the box
        offsets (tx, ty, tw, th) and the objectness (channels ``a*(5+nc) + 0..4``), so fine-tuning a
        COCO detector on new classes starts from a head that already localises and scores objects
        (YOLOv5 drops the whole layer; on raccoon, 100 steps from v5lite-e: 0.555 mAP50-95 kept vs
        0.131 dropped). Returns whether rows were kept."""
        if not isinstance(num_classes, int) or num_classes <= 0:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if keep_classes is not None:
            keep_classes = [int(k) for k in keep_classes]
            if not keep_box_obj or len(keep_classes) != num_classes or not all(0 <= k < self.num_classes for k in keep_classes):
                raise ValueError(f"keep_classes must give one old class index (< {self.num_classes}) per new class "
                                 f"({num_classes}), with keep_box_obj; got {keep_classes}")
        kept = []
        if keep_box_obj and len(self.convs):
            rows = 5 + self.num_classes
            # per anchor: rows 0..4 (box, objectness), then the kept classes' rows in their new order
            index = torch.tensor([0, 1, 2, 3, 4] + [5 + k for k in keep_classes or []])
            for conv in self.convs:
                kept.append((conv.weight.detach().reshape(self.num_anchors, rows, -1)[:, index].clone(),
                             conv.bias.detach().reshape(self.num_anchors, rows)[:, index].clone()))
        self.num_classes = num_classes
        outputs = self.num_anchors * (5 + num_classes)
        device = next(iter(self.convs.parameters())).device if len(self.convs) else None
        self.convs = nn.ModuleList(nn.Conv2d(c, outputs, 1, device=device) for c in self.in_channels)
        self._init_biases()
        with torch.no_grad():
            for conv, (weight, bias) in zip(self.convs, kept):
                rows = weight.shape[1]
                conv.weight.view(self.num_anchors, 5 + num_classes, -1)[:, :rows] = weight
                conv.bias.view(self.num_anchors, 5 + num_classes)[:, :rows] = bias
        return bool(kept)

    @torch.no_grad()
    def _init_biases(self) -> None:
        # YOLOv5 prior (Focal Loss §4.1 style): ~8 objects per 640x640 image, class prob ~0.6/nc,
        # so training starts from sensible objectness/class rates instead of 0.5.
        per_row = 5 + self.num_classes
        for conv, stride in zip(self.convs, self.strides):
            bias = conv.bias.view(self.num_anchors, per_row)
            bias[:, 4] += math.log(8 / (640 / stride) ** 2)
            bias[:, 5:] += math.log(0.6 / (self.num_classes - 0.99)) if self.num_classes > 1 else 0.0

    def prediction_layers(self) -> list[nn.Module]:
        """The convs whose outputs are the raw maps' fixed layout (pruning leaves their outputs alone)."""
        return list(self.convs)

    def config_extra(self) -> dict[str, Any]:
        """What ``ModelConfig.extra`` records about this head's raw layout."""
        return {"layout": "per level [B, na*(5+nc), H, W]: channel a*(5+nc)+k, k = tx,ty,tw,th,obj,cls..."}

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(x) for conv, x in zip(self.convs, features)]
