"""Detection losses: ``YoloLoss`` for YOLO heads and ``SSDLoss`` (SSD MultiBox) for SSDLite heads;
``detection_loss(model, imgsz)`` picks the one of a model's head.

The YOLOv5 detection loss (Jocher et al., ultralytics/yolov5 v6+ ``utils/loss.py``, described
here from its documented behaviour):

- targets are matched to anchors whose width/height ratio to the box is below ``anchor_t`` (4)
  on both sides, on every level; each match is also given to the two neighbouring cells whose
  centre is within half a cell of the box centre (the "0.5 offset rule"), so a box has up to 3
  positive cells per matching anchor;
- box loss: 1 - CIoU between the decoded prediction (xy = 2*sigmoid - 0.5 in cell units,
  wh = (2*sigmoid)^2 * anchor) and the target, mean over positives;
- objectness: BCE against the detached, clamped CIoU at the positives and 0 elsewhere, with level
  weights [4.0, 1.0, 0.4] for strides 8/16/32;
- class: BCE against one-hot targets at the positives (skipped for a single class);
- gains box 0.05 * 3/nl, obj 1.0 * (imgsz/640)^2 * 3/nl, cls 0.5 * nc/80 * 3/nl (YOLOv5
  ``train.py`` scales them so one setting works for any image size and class count); the total
  is multiplied by the batch size.

Raw maps are our head's layout: one [B, na*(5+nc), H, W] logit tensor per level, channel
``anchor*(5+nc) + k`` with k = 0..3 box, 4 objectness, 5.. classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torchvision.ops import complete_box_iou_loss

# Level weights for objectness (P3, P4, P5); YOLOv5 uses [4.0, 1.0, 0.25, 0.06, 0.02] for 5 levels.
LEVEL_BALANCE = {3: (4.0, 1.0, 0.4), 4: (4.0, 1.0, 0.25, 0.06), 5: (4.0, 1.0, 0.25, 0.06, 0.02)}

# The neighbouring-cell offsets: self, left, up, right, down (in cells, times 0.5).
_NEIGHBOURS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32)


@dataclass
class LossConfig:
    """Loss hyper-parameters before the image-size / class-count scaling (YOLOv5 hyp.scratch-low)."""

    box: float = 0.05
    obj: float = 1.0
    cls: float = 0.5
    anchor_t: float = 4.0
    label_smoothing: float = 0.0
    cls_pw: float = 1.0  # positive weight of the class BCE
    obj_pw: float = 1.0  # positive weight of the objectness BCE

    def __post_init__(self) -> None:
        for name in ("box", "obj", "cls", "cls_pw", "obj_pw"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        if self.anchor_t <= 1:
            raise ValueError(f"loss.anchor_t must be > 1, got {self.anchor_t}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"loss.label_smoothing must be in [0, 1), got {self.label_smoothing}")


def _xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    xy, wh = boxes[:, :2], boxes[:, 2:4] / 2
    return torch.cat([xy - wh, xy + wh], dim=1)


class YoloLoss(nn.Module):
    """YOLOv5 loss over raw maps.

    Args:
        num_classes: classes of the head.
        strides: stride of each level (8, 16, 32).
        anchors: anchor (w, h) in input pixels per level, [nl][na][2].
        imgsz: training image size (scales the objectness gain).
        config: gains and thresholds before scaling.
    """

    def __init__(self, num_classes: int, strides: Sequence[int], anchors: Sequence[Sequence[Sequence[float]]] | torch.Tensor,
                 imgsz: int = 640, config: LossConfig | None = None) -> None:
        super().__init__()
        config = config or LossConfig()
        anchors_t = torch.as_tensor(anchors, dtype=torch.float32)
        if anchors_t.ndim != 3 or anchors_t.shape[0] != len(strides) or anchors_t.shape[2] != 2:
            raise ValueError(f"anchors must be [levels={len(strides)}][anchors][2], got shape {tuple(anchors_t.shape)}")
        self.num_classes = int(num_classes)
        self.num_levels = len(strides)
        self.num_anchors = anchors_t.shape[1]
        strides_t = torch.as_tensor(strides, dtype=torch.float32)
        # Anchors in grid units of their level.
        self.register_buffer("anchors", anchors_t / strides_t.view(-1, 1, 1), persistent=False)
        self.balance = LEVEL_BALANCE.get(self.num_levels, tuple([4.0, 1.0] + [0.4] * (self.num_levels - 2)))
        scale = 3 / self.num_levels
        self.box_gain = config.box * scale
        self.cls_gain = config.cls * self.num_classes / 80 * scale
        self.obj_gain = config.obj * (imgsz / 640) ** 2 * scale
        self.anchor_t = config.anchor_t
        # Label smoothing (Szegedy et al. 2016) as in YOLOv5: targets 1 - eps/2 and eps/2.
        self.positive_target = 1.0 - 0.5 * config.label_smoothing
        self.negative_target = 0.5 * config.label_smoothing
        self.register_buffer("cls_pw", torch.tensor([config.cls_pw]), persistent=False)
        self.register_buffer("obj_pw", torch.tensor([config.obj_pw]), persistent=False)

    def forward(self, outputs: Sequence[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``outputs``: raw maps per level; ``targets``: [M, 6] (image index, class, cx, cy, w, h)
        normalised to the input. Returns (total loss times batch size, detached [box, obj, cls])."""
        if len(outputs) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} output levels, got {len(outputs)}")
        device = outputs[0].device
        no = 5 + self.num_classes
        maps = []
        for level, out in enumerate(outputs):
            batch, channels, height, width = out.shape
            if channels != self.num_anchors * no:
                raise ValueError(f"level {level}: {channels} channels, expected {self.num_anchors}*(5+{self.num_classes})")
            # [B, na*no, H, W] -> [B, na, H, W, no]
            maps.append(out.view(batch, self.num_anchors, no, height, width).permute(0, 1, 3, 4, 2).float())
        targets = targets.to(device).float()
        cls_bce = nn.BCEWithLogitsLoss(pos_weight=self.cls_pw.to(device))
        obj_bce = nn.BCEWithLogitsLoss(pos_weight=self.obj_pw.to(device))
        loss_box = torch.zeros((), device=device)
        loss_obj = torch.zeros((), device=device)
        loss_cls = torch.zeros((), device=device)
        for level, pred in enumerate(maps):
            image_index, anchor_index, gy, gx, target_box, target_cls, anchors = self.match(level, pred.shape, targets)
            target_obj = torch.zeros(pred.shape[:4], dtype=pred.dtype, device=device)
            if len(image_index):
                picked = pred[image_index, anchor_index, gy, gx]
                pxy = picked[:, :2].sigmoid() * 2 - 0.5
                pwh = (picked[:, 2:4].sigmoid() * 2) ** 2 * anchors
                box_loss = complete_box_iou_loss(_xywh_to_xyxy(torch.cat([pxy, pwh], 1)), _xywh_to_xyxy(target_box),
                                                 reduction="none")
                loss_box = loss_box + box_loss.mean()
                # Objectness target: how good the box is (CIoU), not just "an object is here".
                target_obj[image_index, anchor_index, gy, gx] = (1.0 - box_loss).detach().clamp(0).to(pred.dtype)
                if self.num_classes > 1:
                    cls_target = torch.full_like(picked[:, 5:], self.negative_target)
                    cls_target[torch.arange(len(target_cls), device=device), target_cls] = self.positive_target
                    loss_cls = loss_cls + cls_bce(picked[:, 5:], cls_target)
            loss_obj = loss_obj + obj_bce(pred[..., 4], target_obj) * self.balance[level]
        loss_box = loss_box * self.box_gain
        loss_obj = loss_obj * self.obj_gain
        loss_cls = loss_cls * self.cls_gain
        batch_size = outputs[0].shape[0]
        return (loss_box + loss_obj + loss_cls) * batch_size, torch.stack([loss_box, loss_obj, loss_cls]).detach()

    @torch.no_grad()
    def match(self, level: int, shape: torch.Size, targets: torch.Tensor):
        """Positives of one level: (image index, anchor index, cell y, cell x, target box
        (x, y offset in the cell, w, h in cells), class, anchor wh in cells)."""
        device = targets.device
        _, num_anchors, height, width, _ = shape
        anchors = self.anchors[level].to(device)
        empty = torch.zeros(0, dtype=torch.long, device=device)
        if not len(targets):
            return empty, empty, empty, empty, torch.zeros((0, 4), device=device), empty, torch.zeros((0, 2), device=device)
        grid_gain = torch.tensor([width, height, width, height], dtype=torch.float32, device=device)
        boxes = targets[:, 2:6] * grid_gain  # cx, cy, w, h in cells
        # Width/height ratio test against every anchor: max(r, 1/r) < anchor_t on both sides.
        ratio = boxes[None, :, 2:4] / anchors[:, None]  # [na, nt, 2]
        fits = torch.max(ratio, 1 / ratio).max(dim=2).values < self.anchor_t  # [na, nt]
        anchor_index, target_index = fits.nonzero(as_tuple=True)
        boxes = boxes[target_index]
        centre = boxes[:, :2]
        inverse = grid_gain[:2] - centre
        # A neighbour is used when the centre is within 0.5 of that side of its cell (and the
        # neighbour exists, i.e. the centre is more than one cell from the border).
        left, up = ((centre % 1 < 0.5) & (centre > 1)).T
        right, down = ((inverse % 1 < 0.5) & (inverse > 1)).T
        use = torch.stack([torch.ones_like(left), left, up, right, down])  # [5, n]
        offsets = (_NEIGHBOURS.to(device) * 0.5)[:, None].expand(5, len(boxes), 2)[use]
        repeat = use.nonzero(as_tuple=True)[1]  # which match each kept (neighbour) entry belongs to
        boxes, anchor_index, target_index = boxes[repeat], anchor_index[repeat], target_index[repeat]
        cell = (boxes[:, :2] - offsets).long()
        gx = cell[:, 0].clamp(0, width - 1)
        gy = cell[:, 1].clamp(0, height - 1)
        target_box = torch.cat([boxes[:, :2] - cell, boxes[:, 2:4]], dim=1)
        image_index = targets[target_index, 0].long()
        target_cls = targets[target_index, 1].long()
        return image_index, anchor_index, gy, gx, target_box, target_cls, anchors[anchor_index]


class SSDLoss(nn.Module):
    """The SSD MultiBox loss (Liu et al., ECCV 2016, §2.2) for ``litedet.models.heads.ssdlite``
    maps, in the parametrisation ``litedet.ops.decode.decode_ssdlite`` inverts.

    - Priors: per level and cell, centre ((j + 0.5) / W, (i + 0.5) / H) and the level's sizes
      (``anchors`` in pixels at ``anchor_input_size``), all relative to the input, in the head's
      row order (level, prior, row, column).
    - Matching: a prior is positive for the box it overlaps most when that IoU is at least
      ``iou_threshold`` (0.5); each box also claims the prior it overlaps most, whatever the IoU,
      so no box goes unmatched.
    - Localisation: smooth L1 on the positives' encoded offsets (dx = (gx - px) / (v0 * pw),
      dw = log(gw / pw) / v1, the same for y and h; variances (0.1, 0.2)).
    - Confidence: cross entropy over background + classes; every positive, and the
      ``neg_pos_ratio`` (3) times as many negatives with the highest loss (hard negative mining).
    - Both sums are divided by the number of positives in the batch, and the total is multiplied
      by the batch size as ``YoloLoss`` does, so the trainer's learning rates apply.

    Returns (total, detached [localisation, background, class]): the confidence loss split into
    its negatives (background) and positives (class) parts, the trainer's box / obj / cls columns.
    """

    def __init__(self, num_classes: int, anchors: Sequence[Sequence[Sequence[float]]], anchor_input_size: Sequence[int],
                 variances: Sequence[float] = (0.1, 0.2), iou_threshold: float = 0.5, neg_pos_ratio: float = 3.0) -> None:
        super().__init__()
        if not 0 < iou_threshold <= 1:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if neg_pos_ratio < 0:
            raise ValueError(f"neg_pos_ratio must be >= 0, got {neg_pos_ratio}")
        self.num_classes = int(num_classes)
        height, width = (float(v) for v in anchor_input_size)
        self.sizes = [torch.as_tensor(level, dtype=torch.float32).reshape(-1, 2) / torch.tensor([width, height])
                      for level in anchors]
        self.variances = (float(variances[0]), float(variances[1]))
        self.iou_threshold = float(iou_threshold)
        self.neg_pos_ratio = float(neg_pos_ratio)

    def priors(self, shapes: Sequence[tuple[int, int]], device: torch.device) -> torch.Tensor:
        """[P, 4] (cx, cy, w, h) relative to the input for maps of ``shapes`` (H, W) per level."""
        rows = []
        for (height, width), sizes in zip(shapes, self.sizes):
            gy, gx = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                                    indexing="ij")
            centres = torch.stack([(gx.flatten() + 0.5) / width, (gy.flatten() + 0.5) / height], 1)  # [HW, 2]
            level = torch.cat([centres.expand(len(sizes), -1, -1), sizes[:, None, :].expand(-1, height * width, -1)], 2)
            rows.append(level.reshape(-1, 4))
        return torch.cat(rows).to(device)

    def forward(self, outputs: Sequence[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``outputs``: raw maps per level; ``targets``: [M, 6] (image index, class, cx, cy, w, h)
        normalised to the input. Returns (total loss times batch size, detached [loc, bg, cls])."""
        from torchvision.ops import box_iou

        if len(outputs) != len(self.sizes):
            raise ValueError(f"expected {len(self.sizes)} output levels, got {len(outputs)}")
        device = outputs[0].device
        per_row = 5 + self.num_classes
        rows = []
        for level, (out, sizes) in enumerate(zip(outputs, self.sizes)):
            batch, channels, height, width = out.shape
            if channels != len(sizes) * per_row:
                raise ValueError(f"level {level}: {channels} channels, expected {len(sizes)}*(5+{self.num_classes})")
            rows.append(out.view(batch, len(sizes), per_row, height * width).permute(0, 1, 3, 2).reshape(batch, -1, per_row))
        pred = torch.cat(rows, 1).float()  # [B, P, 5+nc]
        batch = pred.shape[0]
        priors = self.priors([tuple(o.shape[2:]) for o in outputs], device)
        prior_boxes = _xywh_to_xyxy(priors)
        targets = targets.to(device).float()
        labels = torch.zeros(pred.shape[:2], dtype=torch.long, device=device)  # 0: background
        encoded = torch.zeros(batch, len(priors), 4, device=device)
        for image in range(batch):
            mine = targets[targets[:, 0] == image]
            if not len(mine):
                continue
            iou = box_iou(_xywh_to_xyxy(mine[:, 2:6]), prior_boxes)  # [G, P]
            best_iou, best_box = iou.max(0)
            claimed = iou.argmax(1)  # each box's own best prior, kept whatever its IoU
            best_box[claimed] = torch.arange(len(mine), device=device)
            best_iou[claimed] = 1.0
            positive = best_iou >= self.iou_threshold
            boxes = mine[best_box, 2:6]
            labels[image, positive] = mine[best_box[positive], 1].long() + 1
            v0, v1 = self.variances
            encoded[image] = torch.cat([(boxes[:, :2] - priors[:, :2]) / (v0 * priors[:, 2:]),
                                        torch.log(boxes[:, 2:].clamp(min=1e-6) / priors[:, 2:]) / v1], 1)
        positive = labels > 0
        num_positive = int(positive.sum())
        normaliser = max(num_positive, 1)
        loss_loc = nn.functional.smooth_l1_loss(pred[..., :4][positive], encoded[positive], beta=1.0,
                                                reduction="sum") / normaliser
        confidence = nn.functional.cross_entropy(pred[..., 4:].reshape(-1, 1 + self.num_classes), labels.reshape(-1),
                                                 reduction="none").view(batch, -1)
        # hard negative mining: per image, the negatives with the highest loss, neg_pos_ratio per positive
        negative_loss = confidence.detach().masked_fill(positive, -1.0)
        rank = negative_loss.argsort(1, descending=True).argsort(1)
        wanted = (positive.sum(1, keepdim=True) * self.neg_pos_ratio).long()
        negative = (rank < wanted) & ~positive
        loss_bg = confidence[negative].sum() / normaliser
        loss_cls = confidence[positive].sum() / normaliser
        return (loss_loc + loss_bg + loss_cls) * batch, torch.stack([loss_loc, loss_bg, loss_cls]).detach()


def detection_loss(model: nn.Module, imgsz: int, config: LossConfig | None = None) -> nn.Module:
    """The training loss of ``model``'s head: ``YoloLoss`` for YOLO heads, ``SSDLoss`` for SSDLite
    (``config`` holds YOLO gains and is not used there)."""
    model_config = getattr(model, "config", None)
    if model_config is not None and model_config.head == "ssdlite":
        from litedet.ops.decode import SSD_VARIANCES

        variances = model_config.extra.get("variances", SSD_VARIANCES)
        return SSDLoss(model.num_classes, model.anchors, model_config.input_size, variances)
    return YoloLoss(model.num_classes, model.strides, model.anchors, imgsz, config)
