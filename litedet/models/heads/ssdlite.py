"""The SSDLite head (Sandler et al., "MobileNetV2", CVPR 2018, §6.2): SSD (Liu et al., ECCV 2016)
with every prediction conv replaced by a depthwise-separable one (3x3 depthwise + BN + ReLU6, then
a 1x1 conv with bias).

Raw output layout, one tensor per level i (6 levels; 20, 10, 5, 3, 2, 1 cells at 320)::

    [B, A * (5 + nc), H_i, W_i]   channel a * (5 + nc) + k

for prior ``a`` (0..A-1) and ``k`` in (dx, dy, dw, dh, background logit, class 0..nc-1 logits):
the same channel grouping as the YOLO head, different meaning. Decoding (SSD §2.1, box coder
variances 0.1/0.2 as in the SSD reference and torchvision)::

    prior centre pcx = (j + 0.5) / W_i * input_w,  pcy = (i + 0.5) / H_i * input_h
    prior size  (pw, ph) = anchors[i][a]  (input pixels at ``input_size``; scale with the input)
    cx = pcx + dx * 0.1 * pw     w = pw * exp(dw * 0.2)
    cy = pcy + dy * 0.1 * ph     h = ph * exp(dh * 0.2)
    scores = softmax over the 1 + nc logits, index 0 = background (dropped)

Prior sizes follow SSD §2.2 as torchvision's ``DefaultBoxGenerator([[2, 3]] * 6, 0.2, 0.95)``:
scales s_k evenly from 0.2 to 0.95, per location the boxes s_k x s_k, sqrt(s_k s_{k+1}) squared,
and s_k * (sqrt(r), 1/sqrt(r)) both ways for r = 2, 3: six priors.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from litedet.layers.conv import ConvBnAct

SSD_VARIANCES = (0.1, 0.2)


def ssd_prior_sizes(
    num_levels: int,
    input_size: tuple[int, int],
    min_scale: float = 0.2,
    max_scale: float = 0.95,
    aspect_ratios: Sequence[float] = (2.0, 3.0),
) -> list[list[list[float]]]:
    """Per level, the (w, h) of each prior in input pixels (SSD §2.2, "Choosing scales and aspect
    ratios for default boxes")."""
    if num_levels < 1:
        raise ValueError(f"num_levels must be >= 1, got {num_levels}")
    height, width = input_size
    steps = max(num_levels - 1, 1)
    scales = [min_scale + (max_scale - min_scale) * k / steps for k in range(num_levels)] + [1.0]
    levels = []
    for k in range(num_levels):
        s, s_next = scales[k], scales[k + 1]
        boxes = [(s, s), (math.sqrt(s * s_next),) * 2]
        for ratio in aspect_ratios:
            root = math.sqrt(ratio)
            boxes += [(s * root, s / root), (s / root, s * root)]
        levels.append([[round(w * width, 4), round(h * height, 4)] for w, h in boxes])
    return levels


class SSDLiteHead(nn.Module):
    """Depthwise-separable box and class predictors per level; see the module docstring."""

    kind = "ssdlite"

    def __init__(
        self,
        in_channels: Sequence[int],
        strides: Sequence[int],
        num_classes: int = 80,
        input_size: tuple[int, int] = (320, 320),
        anchors: Sequence[Sequence[Sequence[float]]] | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        self.strides = [int(s) for s in strides]
        if len(self.strides) != len(self.in_channels):
            raise ValueError(f"{len(self.in_channels)} inputs but {len(self.strides)} strides")
        self.anchors = (
            [[list(map(float, pair)) for pair in level] for level in anchors]
            if anchors is not None
            else ssd_prior_sizes(len(self.in_channels), input_size)
        )
        if len(self.anchors) != len(self.in_channels) or len({len(level) for level in self.anchors}) != 1:
            raise ValueError(f"need one equal-sized prior set per level, got {[len(level) for level in self.anchors]}")
        self.num_anchors = len(self.anchors[0])
        self.box_convs = nn.ModuleList(self._predictor(c, self.num_anchors * 4) for c in self.in_channels)
        self.num_classes = 0
        self.cls_convs = nn.ModuleList()
        self.reset(num_classes, keep_box_obj=False)

    @staticmethod
    def _predictor(channels: int, outputs: int) -> nn.Sequential:
        # MobileNetV2 §6.2: the SSD prediction conv as depthwise 3x3 (BN, ReLU6) + 1x1.
        return nn.Sequential(
            ConvBnAct(channels, channels, 3, groups=channels, act="relu6"),
            nn.Conv2d(channels, outputs, 1),
        )

    def reset(self, num_classes: int, keep_box_obj: bool = True, keep_classes: Sequence[int] | None = None) -> bool:
        """Fresh class predictors for ``num_classes`` classes (+ background); the class-agnostic
        box predictors are kept (``keep_box_obj``) or re-initialised too. ``keep_classes``: for each
        new class, the old class whose rows it keeps (a fine-tune on a subset of the checkpoint's
        classes), with the background rows and the depthwise convs; needs ``keep_box_obj``.
        Returns whether rows were kept."""
        if not isinstance(num_classes, int) or num_classes <= 0:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if keep_classes is not None:
            keep_classes = [int(k) for k in keep_classes]
            if not keep_box_obj or len(keep_classes) != num_classes or not all(0 <= k < self.num_classes for k in keep_classes):
                raise ValueError(f"keep_classes must give one old class index (< {self.num_classes}) per new class "
                                 f"({num_classes}), with keep_box_obj; got {keep_classes}")
        old = list(self.cls_convs) if keep_classes is not None else []
        old_rows = self.num_classes + 1
        self.num_classes = num_classes
        device = self.box_convs[0][1].weight.device
        self.cls_convs = nn.ModuleList(
            self._predictor(c, self.num_anchors * (num_classes + 1)).to(device) for c in self.in_channels
        )
        for conv in [*([] if keep_box_obj else self.box_convs), *self.cls_convs]:
            nn.init.normal_(conv[1].weight, std=0.03)
            nn.init.zeros_(conv[1].bias)
        if old:
            index = torch.tensor([0] + [1 + k for k in keep_classes])  # per prior: background, then the kept classes
            with torch.no_grad():
                for new_predictor, old_predictor in zip(self.cls_convs, old):
                    new_predictor[0].load_state_dict(old_predictor[0].state_dict())
                    weight = old_predictor[1].weight.reshape(self.num_anchors, old_rows, -1)[:, index]
                    new_predictor[1].weight.copy_(weight.reshape(new_predictor[1].weight.shape))
                    new_predictor[1].bias.copy_(old_predictor[1].bias.reshape(self.num_anchors, old_rows)[:, index].flatten())
        return keep_box_obj

    def prediction_layers(self) -> list[nn.Module]:
        """The convs whose outputs are the raw maps' fixed layout: each predictor's last 1x1 (pruning
        leaves their outputs alone; the depthwise 3x3 before it follows the map it reads)."""
        return [predictor[-1] for predictor in (*self.box_convs, *self.cls_convs)]

    def config_extra(self) -> dict[str, Any]:
        """What ``ModelConfig.extra`` records for decoding (see the module docstring)."""
        return {
            "layout": "per level [B, A*(5+nc), H, W]: channel a*(5+nc)+k, k = dx,dy,dw,dh,background,cls...",
            "variances": list(SSD_VARIANCES),
            "prior_centers": "((j + 0.5) / W_i * input_w, (i + 0.5) / H_i * input_h)",
            "prior_sizes": "anchors[i][a] in pixels at input_size",
            "scores": "softmax over 1 + nc logits; index 0 is background",
        }

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        outputs = []
        for x, box_conv, cls_conv in zip(features, self.box_convs, self.cls_convs):
            batch, _, height, width = x.shape
            boxes = box_conv(x).reshape(batch, self.num_anchors, 4, height, width)
            scores = cls_conv(x).reshape(batch, self.num_anchors, self.num_classes + 1, height, width)
            outputs.append(torch.cat((boxes, scores), dim=2).reshape(batch, -1, height, width))
        return outputs
