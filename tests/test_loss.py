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


# ------------------------------------------------------------------------------ SSD MultiBox


def test_ssd_loss_is_zero_at_the_encoding_that_decode_inverts():
    """Maps that hold, at every prior, the encoded offsets of one box and a confident logit for its
    class give no localisation or class loss, and ``decode_ssdlite`` turns them back into the box."""
    import numpy as np

    from litedet.engine.loss import SSDLoss
    from litedet.ops.decode import decode_ssdlite

    anchors = [[[24.0, 24.0], [40.0, 20.0]]]
    loss = SSDLoss(2, anchors, (64, 64))
    box = torch.tensor([0.40, 0.55, 0.45, 0.30])  # cx, cy, w, h relative to the input
    priors = loss.priors([(4, 4)], torch.device("cpu"))  # [2 * 16, 4]
    encoded = torch.cat([(box[:2] - priors[:, :2]) / (0.1 * priors[:, 2:]), torch.log(box[2:] / priors[:, 2:]) / 0.2], 1)
    rows = torch.zeros(len(priors), 7)
    rows[:, :4] = encoded
    rows[:, 4:] = torch.tensor([-20.0, -20.0, 20.0])  # background, class 0, class 1
    maps = rows.view(2, 16, 7).permute(0, 2, 1).reshape(1, 14, 4, 4)  # prior-major, channel a*7+k
    total, items = loss([maps], torch.tensor([[0, 1, *box.tolist()]]))
    assert items[0] == pytest.approx(0.0, abs=1e-5) and items[2] == pytest.approx(0.0, abs=1e-5)
    assert total == pytest.approx(float(items.sum()))  # batch of one
    decoded = decode_ssdlite([maps.numpy()], anchors, 2, (64, 64))[0]
    np.testing.assert_allclose(decoded[:, :4], np.tile((box * 64).numpy(), (32, 1)), atol=1e-3)
    assert (decoded[:, 6] > 0.99).all()


def test_ssd_loss_matching_mines_negatives_and_trains_a_detector():
    from litedet.engine.loss import SSDLoss, detection_loss
    from litedet.models import create_model
    from litedet.ops.decode import decode_ssdlite
    from litedet.ops.nms import non_max_suppression

    torch.manual_seed(0)
    model = create_model("ssdlite-mobilenetv3_small", num_classes=2)
    criterion = detection_loss(model, 128)
    assert isinstance(criterion, SSDLoss)
    images = torch.zeros(2, 3, 128, 128)
    images[0, :, 20:60, 30:90] = 1.0  # a bright box, class 0
    images[1, :, 70:120, 10:50] = 0.5  # a grey box, class 1
    targets = torch.tensor([[0, 0, 60 / 128, 40 / 128, 60 / 128, 40 / 128],
                            [1, 1, 30 / 128, 95 / 128, 40 / 128, 50 / 128]])
    _, first = criterion(model(images), targets)
    assert first[1] > 0  # mined negatives count from the start
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(80):
        optimizer.zero_grad()
        total, items = criterion(model(images), targets)
        total.backward()
        optimizer.step()
    assert items.sum() < 0.3 * first.sum()
    model.eval()
    with torch.no_grad():
        maps = [m.numpy() for m in model(images)]
    found = non_max_suppression(decode_ssdlite(maps, model.anchors, 2, model.config.input_size, (128, 128)), 0.3, 0.5)
    for image, (cx, cy, w, h) in enumerate([(60, 40, 60, 40), (30, 95, 40, 50)]):
        best = found[image][0]  # highest score first
        assert int(best[5]) == image  # the class of that image's box
        x1, y1, x2, y2 = best[:4]
        inter = max(0, min(x2, cx + w / 2) - max(x1, cx - w / 2)) * max(0, min(y2, cy + h / 2) - max(y1, cy - h / 2))
        assert inter / ((x2 - x1) * (y2 - y1) + w * h - inter) > 0.5
