"""The YOLOv5 loss: anchor matching (ratio < anchor_t, neighbouring cells), gains, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from litedet.config import YOLOV5_ANCHORS
from litedet.engine.loss import LossConfig, YoloLoss

STRIDES = (8, 16, 32)
SIZE = 128  # grids 16, 8, 4


def raw_maps(batch: int, num_classes: int, fill: float = 0.0, requires_grad: bool = False) -> list[torch.Tensor]:
    maps = []
    for stride in STRIDES:
        cells = SIZE // stride
        maps.append(torch.full((batch, 3 * (5 + num_classes), cells, cells), fill, requires_grad=requires_grad))
    return maps


def target(image: int, cls: int, cx: float, cy: float, w: float, h: float) -> list[float]:
    """A target row from pixel values (normalised by SIZE)."""
    return [image, cls, cx / SIZE, cy / SIZE, w / SIZE, h / SIZE]


def test_neighbouring_cells_half_offset_rule():
    loss = YoloLoss(2, STRIDES, YOLOV5_ANCHORS, SIZE)
    # Level 0 (stride 8, 16x16 cells): centre at cell coords (5.3, 5.7), box 16x24 px = 2x3 cells.
    targets = torch.tensor([target(0, 1, 5.3 * 8, 5.7 * 8, 16, 24)])
    image, anchor, gy, gx, tbox, tcls, anchors = loss.match(0, torch.Size((1, 3, 16, 16, 7)), targets)
    # Anchors (10,13), (16,30), (33,23) px -> ratios all < 4 for 16x24, so every anchor matches.
    assert sorted(set(anchor.tolist())) == [0, 1, 2]
    cells = sorted(set(zip(gx.tolist(), gy.tolist())))
    # x frac .3 < .5 -> the left neighbour (4, 5); y frac .7 -> from the far side .3 < .5 -> the one below (5, 6).
    assert cells == [(4, 5), (5, 5), (5, 6)]
    assert len(image) == 9 and (tcls == 1).all()
    # Box targets are offsets from the assigned cell: in (-0.5, 1.5), the range 2*sigmoid-0.5 covers.
    assert (tbox[:, :2] > -0.5).all() and (tbox[:, :2] < 1.5).all()
    torch.testing.assert_close(tbox[:, 2:], torch.tensor([[2.0, 3.0]]).expand(9, 2))
    assert torch.equal(anchors, loss.anchors[0][anchor])


def test_no_neighbours_at_the_border():
    loss = YoloLoss(1, STRIDES, YOLOV5_ANCHORS, SIZE)
    # centre (0.3, 0.3) cells: frac < .5 but no cell to the left/top exists (centre < 1).
    targets = torch.tensor([target(0, 0, 0.3 * 8, 0.3 * 8, 12, 12)])
    _, _, gy, gx, _, _, _ = loss.match(0, torch.Size((1, 3, 16, 16, 6)), targets)
    assert set(zip(gx.tolist(), gy.tolist())) == {(0, 0)}


def test_anchor_ratio_threshold():
    loss = YoloLoss(1, STRIDES, YOLOV5_ANCHORS, SIZE)
    # A 120x120 box is > 4x every P3 anchor (<= 33 px): no positives at stride 8, some at stride 32.
    targets = torch.tensor([target(0, 0, 64, 64, 120, 120)])
    assert len(loss.match(0, torch.Size((1, 3, 16, 16, 6)), targets)[0]) == 0
    assert len(loss.match(2, torch.Size((1, 3, 4, 4, 6)), targets)[0]) > 0
    strict = YoloLoss(1, STRIDES, YOLOV5_ANCHORS, SIZE, LossConfig(anchor_t=1.05))
    # 16x30 target equals anchor 1 of P3 exactly: with a tight threshold only that anchor matches.
    exact = torch.tensor([target(0, 0, 44, 44, 16, 30)])
    assert set(strict.match(0, torch.Size((1, 3, 16, 16, 6)), exact)[1].tolist()) == {1}


def test_gains_scale_with_image_size_classes_and_levels():
    loss = YoloLoss(20, STRIDES, YOLOV5_ANCHORS, 320)
    assert loss.box_gain == pytest.approx(0.05)
    assert loss.cls_gain == pytest.approx(0.5 * 20 / 80)
    assert loss.obj_gain == pytest.approx((320 / 640) ** 2)
    assert loss.balance == (4.0, 1.0, 0.4)


def test_background_only_gives_objectness_loss():
    loss = YoloLoss(3, STRIDES, YOLOV5_ANCHORS, SIZE)
    total, items = loss(raw_maps(2, 3), torch.zeros((0, 6)))
    assert items[0] == 0 and items[2] == 0 and items[1] > 0
    # BCE(0 logit, 0 target) = log 2 per element, level-weighted, times the obj gain and batch 2.
    expected = math.log(2) * sum((4.0, 1.0, 0.4)) * (SIZE / 640) ** 2
    assert items[1].item() == pytest.approx(expected, rel=1e-5)
    assert total.item() == pytest.approx(2 * expected, rel=1e-5)


def test_single_class_has_no_class_loss():
    loss = YoloLoss(1, STRIDES, YOLOV5_ANCHORS, SIZE)
    _, items = loss(raw_maps(1, 1), torch.tensor([target(0, 0, 60, 60, 30, 20)]))
    assert items[2] == 0 and items[0] > 0


def test_gradient_descent_on_raw_maps_lowers_every_term():
    torch.manual_seed(0)
    loss = YoloLoss(3, STRIDES, YOLOV5_ANCHORS, SIZE)
    maps = [(torch.randn_like(m) * 0.1).requires_grad_() for m in raw_maps(2, 3)]
    targets = torch.tensor([target(0, 2, 40, 50, 30, 40), target(1, 0, 90, 70, 60, 50), target(1, 1, 20, 100, 12, 16)])
    optimizer = torch.optim.Adam(maps, lr=0.05)
    first = None
    for _ in range(60):
        optimizer.zero_grad()
        total, items = loss(maps, targets)
        first = items.clone() if first is None else first
        total.backward()
        optimizer.step()
    assert (items < first * 0.5).all(), (first, items)
    assert all(m.grad is not None and torch.isfinite(m.grad).all() for m in maps)


def test_bad_inputs():
    loss = YoloLoss(3, STRIDES, YOLOV5_ANCHORS, SIZE)
    with pytest.raises(ValueError, match="expected 3 output levels"):
        loss(raw_maps(1, 3)[:2], torch.zeros((0, 6)))
    with pytest.raises(ValueError, match="channels, expected 3"):
        loss(raw_maps(1, 4), torch.zeros((0, 6)))
    with pytest.raises(ValueError, match="anchors must be"):
        YoloLoss(3, STRIDES, [[[10, 13]]], SIZE)
    with pytest.raises(ValueError, match="anchor_t must be > 1"):
        LossConfig(anchor_t=1.0)
