"""Letterbox, decode, NMS and box back-mapping (numpy, no torch)."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest

from litedet.config import COCO_NAMES, ModelConfig
from litedet.data.transforms import letterbox, preprocess
from litedet.engine.predictor import Predictor
from litedet.ops import (
    batched_nms,
    box_iou,
    clip_boxes,
    decode_ssdlite,
    decode_yolo,
    nms,
    non_max_suppression,
    scale_boxes,
    xywh_to_xyxy,
    xyxy_to_xywh,
)
from litedet.runtime.base import Backend
from conftest import logit


# ---------------------------------------------------------------- letterbox


@pytest.mark.parametrize(
    "shape, expected_resized, expected_pad",
    [
        ((480, 270), (320, 180), (70, 0)),  # portrait: width padded, 140 split 70/70
        ((270, 480), (180, 320), (0, 70)),  # landscape: height padded
        ((300, 301), (319, 320), (0, 0)),  # odd padding: 1 px, goes to the bottom
    ],
)
def test_letterbox_keeps_ratio_and_pads_114(shape, expected_resized, expected_pad):
    image = np.full((*shape, 3), 7, np.uint8)
    out, info = letterbox(image, 320)
    assert out.shape == (320, 320, 3)
    assert info.original_shape == shape
    resized_h, resized_w = expected_resized
    assert info.pad == expected_pad
    left, top = info.pad
    # the image area keeps its pixels, everything else is the pad value
    assert (out[top : top + resized_h, left : left + resized_w] == 7).all()
    mask = np.ones(out.shape[:2], bool)
    mask[top : top + resized_h, left : left + resized_w] = False
    assert (out[mask] == 114).all()
    assert info.ratio == pytest.approx((resized_w / shape[1], resized_h / shape[0]))


def test_letterbox_odd_padding_splits_like_yolov5():
    # 21 px of vertical padding: YOLOv5 puts round(10.5 - 0.1) = 10 on top, 11 below
    image = np.zeros((299, 320, 3), np.uint8)
    out, info = letterbox(image, 320)
    assert info.pad == (0, 10)
    assert (out[:10] == 114).all() and (out[10:309] == 0).all() and (out[309:] == 114).all()


@pytest.mark.parametrize("shape", [(480, 270, 3), (270, 480, 3), (100, 37, 3)])
def test_letterbox_auto_pads_only_to_stride(shape):
    out, info = letterbox(np.zeros(shape, np.uint8), 416, stride=32, auto=True)
    assert out.shape[0] % 32 == 0 and out.shape[1] % 32 == 0
    assert max(out.shape[:2]) == 416
    assert min(out.shape[:2]) < 416  # the short side is not padded to the square
    # padding is less than one stride on each axis
    assert out.shape[0] - round(shape[0] * info.ratio[1]) < 32 and out.shape[1] - round(shape[1] * info.ratio[0]) < 32


def test_letterbox_no_scaleup_and_corner_padding():
    image = np.full((100, 50, 3), 9, np.uint8)
    out, info = letterbox(image, 320, scaleup=False, center=False, pad_value=0)
    assert info.ratio == (1.0, 1.0) and info.pad == (0, 0)
    assert (out[:100, :50] == 9).all() and (out[100:] == 0).all() and (out[:, 50:] == 0).all()


def test_preprocess_rgb_and_normalisation():
    config = ModelConfig("tiny", 1, ["thing"], (64, 64))
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 0] = 255  # blue in BGR
    batch, infos = preprocess([image], config)
    assert batch.shape == (1, 3, 64, 64) and batch.dtype == np.float32
    assert batch[0, 2].min() == pytest.approx(1.0)  # RGB order: blue is the last channel
    assert batch[0, 0].max() == 0.0
    assert infos[0].pad == (0, 0)


# ---------------------------------------------------------------- boxes


def test_box_conversions_and_iou():
    xyxy = np.array([[0, 0, 10, 10], [5, 5, 15, 25]], np.float32)
    np.testing.assert_allclose(xywh_to_xyxy(xyxy_to_xywh(xyxy)), xyxy)
    iou = box_iou(xyxy, xyxy)
    np.testing.assert_allclose(np.diag(iou), 1.0)
    # overlap 5x5 = 25, union 100 + 200 - 25
    assert iou[0, 1] == pytest.approx(25 / 275)
    np.testing.assert_allclose(clip_boxes(np.array([[-5, -5, 50, 50]], np.float32), (20, 30)), [[0, 0, 30, 20]])
    with pytest.raises(ValueError, match="shape"):
        box_iou(np.zeros((3, 5)), xyxy)


@pytest.mark.parametrize("shape", [(480, 270), (270, 480), (333, 517)])
def test_boxes_round_trip_through_letterbox(shape):
    rng = np.random.default_rng(0)
    _, info = letterbox(np.zeros((*shape, 3), np.uint8), 320)
    x1 = rng.uniform(0, shape[1] - 20, 50)
    y1 = rng.uniform(0, shape[0] - 20, 50)
    boxes = np.stack([x1, y1, x1 + rng.uniform(1, 20, 50), y1 + rng.uniform(1, 20, 50)], 1).astype(np.float32)
    # forward: original -> letterboxed pixels
    forward = boxes.copy()
    forward[:, [0, 2]] = forward[:, [0, 2]] * info.ratio[0] + info.pad[0]
    forward[:, [1, 3]] = forward[:, [1, 3]] * info.ratio[1] + info.pad[1]
    back = scale_boxes(forward, info.ratio, info.pad, info.original_shape)
    np.testing.assert_allclose(back, boxes, atol=1e-3)


# ---------------------------------------------------------------- decode


def test_decode_yolo_hand_example():
    # one level, stride 8, 2 anchors, 1 class, a 2x3 (H x W) grid
    anchors = [[[10, 13], [33, 23]]]
    raw = np.zeros((1, 2 * 6, 2, 3), np.float32)
    # anchor 1, cell (gy=1, gx=2): sigmoid(tx)=0.75, sigmoid(ty)=0.25, sigmoid(tw)=0.5, sigmoid(th)=0.75
    a = 1 * 6
    raw[0, a + 0, 1, 2] = logit(0.75)
    raw[0, a + 1, 1, 2] = logit(0.25)
    raw[0, a + 2, 1, 2] = logit(0.5)
    raw[0, a + 3, 1, 2] = logit(0.75)
    raw[0, a + 4, 1, 2] = logit(0.9)
    raw[0, a + 5, 1, 2] = logit(0.8)
    out = decode_yolo([raw], anchors, [8], num_classes=1)
    assert out.shape == (1, 2 * 2 * 3, 6)
    row = out[0, 1 * 6 + 1 * 3 + 2]  # anchor-major, then rows, then columns
    # cx = (2*0.75 - 0.5 + 2) * 8 = 24; cy = (2*0.25 - 0.5 + 1) * 8 = 8
    # w = (2*0.5)^2 * 33 = 33; h = (2*0.75)^2 * 23 = 51.75
    np.testing.assert_allclose(row, [24, 8, 33, 51.75, 0.9, 0.8], rtol=1e-5)
    # an all-zero cell: sigmoid 0.5 -> centre of cell (gx + 0.5) * s, wh = anchor
    np.testing.assert_allclose(out[0, 0], [4, 4, 10, 13, 0.5, 0.5], rtol=1e-6)
    with pytest.raises(ValueError, match="expected"):
        decode_yolo([raw], anchors, [8], num_classes=2)
    # filtering on objectness keeps exactly the rows above it, in the same order
    only = decode_yolo([raw], anchors, [8], num_classes=1, min_objectness=0.6)
    np.testing.assert_array_equal(only, out[:, out[0, :, 4] > 0.6])


def test_decode_yolo_filtered_matches_full_decode_on_random_maps():
    rng = np.random.default_rng(0)
    anchors = [[[10, 13], [16, 30], [33, 23]], [[30, 61], [62, 45], [59, 119]]]
    outputs = [rng.normal(-3, 2, (2, 3 * 7, 6, 5)).astype(np.float32), rng.normal(-3, 2, (2, 21, 3, 3)).astype(np.float32)]
    full = decode_yolo(outputs, anchors, [8, 16], num_classes=2)
    part = decode_yolo(outputs, anchors, [8, 16], num_classes=2, min_objectness=0.3)
    for image in range(2):
        np.testing.assert_allclose(part[image][part[image, :, 4] > 0.3], full[image][full[image, :, 4] > 0.3])


def test_decode_ssdlite_hand_example():
    # one level, 2x2 cells, 1 prior of 20x10 px at a 64x64 input, 2 classes
    raw = np.zeros((1, 7, 2, 2), np.float32)
    # cell row 1, column 0: dx=1, dy=-1, dw=ln(2)/0.2, dh=0; logits (bg 0, c0 0, c1 ln 2)
    raw[0, 0, 1, 0], raw[0, 1, 1, 0], raw[0, 2, 1, 0] = 1.0, -1.0, np.log(2) / 0.2
    raw[0, 6, 1, 0] = np.log(2)
    out = decode_ssdlite([raw], [[[20, 10]]], num_classes=2, anchor_input_size=(64, 64))
    assert out.shape == (1, 4, 7)
    # prior centre (16, 48); cx = 16 + 1 * 0.1 * 20 = 18, cy = 48 - 0.1 * 10 = 47, w = 40, h = 10
    # softmax(0, 0, ln 2) = (1/4, 1/4, 1/2); background dropped, objectness column 1
    np.testing.assert_allclose(out[0, 2], [18, 47, 40, 10, 1, 0.25, 0.5], rtol=1e-5)
    # at a 128x128 input the priors and centres scale by 2
    doubled = decode_ssdlite([raw], [[[20, 10]]], 2, (64, 64), input_size=(128, 128))
    np.testing.assert_allclose(doubled[0, 2, :4], [36, 94, 80, 20], rtol=1e-5)


def _ssd_reference(outputs, anchors, num_classes, size, variances=(0.1, 0.2)):
    """SSDLite decode in float64, prior by prior, from the formula in ``decode_ssdlite``."""
    rows = []
    per_row = 5 + num_classes
    for raw, priors in zip(outputs, anchors):
        _, _, height, width = raw.shape
        for a, (pw, ph) in enumerate(priors):
            for i in range(height):
                for j in range(width):
                    v = raw[0, a * per_row:(a + 1) * per_row, i, j].astype(np.float64)
                    e = np.exp(v[4:] - v[4:].max())
                    rows.append([(j + 0.5) / width * size + v[0] * variances[0] * pw,
                                 (i + 0.5) / height * size + v[1] * variances[0] * ph,
                                 pw * np.exp(v[2] * variances[1]), ph * np.exp(v[3] * variances[1]), 1.0,
                                 *(e[1:] / e.sum())])
    return np.asarray(rows)


def test_decode_ssdlite_matches_the_formula_and_min_score_keeps_every_detection():
    from litedet.ops.nms import non_max_suppression

    rng = np.random.default_rng(3)
    num_classes, anchors = 6, [[[40, 40], [60, 30]], [[90, 90], [120, 60]], [[200, 200], [250, 150]]]
    outputs = []
    for size in (8, 4, 2):
        raw = rng.normal(0, 1, (1, 2 * 11, size, size)).astype(np.float32)
        raw[:, 4::11] += 4.0  # background wins in most cells, as in a trained model ...
        hot = rng.random(raw[:, 5::11].shape) < 0.1
        raw[:, 5::11] += np.where(hot, 6.0, 0.0).astype(np.float32)  # ... but not in all
        outputs.append(raw)
    full = decode_ssdlite(outputs, anchors, num_classes, (128, 128))
    np.testing.assert_allclose(full[0], _ssd_reference(outputs, anchors, num_classes, 128), rtol=1e-5, atol=1e-5)
    for conf in (0.001, 0.05, 0.25, 0.6):
        part = decode_ssdlite(outputs, anchors, num_classes, (128, 128), min_score=conf)
        assert part.shape[1] < full.shape[1] or conf == 0.001
        # only rows NMS would drop are left out; the rest come through in order, unchanged
        position = {tuple(row[:4]): i for i, row in enumerate(full[0])}
        kept = [position[tuple(row[:4])] for row in part[0]]
        assert kept == sorted(kept)
        np.testing.assert_allclose(part[0], full[0][kept], rtol=1e-6, atol=0)
        passing = np.flatnonzero(full[0, :, 5:].max(axis=1) > conf)
        assert set(passing) <= set(kept)
        for multi_label in (False, True):
            want = non_max_suppression(full, conf, 0.5, multi_label=multi_label)[0]
            got = non_max_suppression(part, conf, 0.5, multi_label=multi_label)[0]
            np.testing.assert_array_equal(got, want)
    # a batch keeps a row if any image needs it
    pair = [np.concatenate([o, o[:, :, ::-1, ::-1]]) for o in outputs]
    both = decode_ssdlite(pair, anchors, num_classes, (128, 128), min_score=0.25)
    assert both.shape[0] == 2 and both.shape[1] >= part.shape[1]
    with pytest.raises(ValueError, match="min_score"):
        decode_ssdlite(outputs, anchors, num_classes, (128, 128), min_score=1.0)


# ---------------------------------------------------------------- NMS


def _brute_force_nms(boxes, scores, classes, iou_threshold):
    """Textbook per-class greedy NMS, one pair at a time."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kept = []
    for i in order:
        ok = True
        for j in kept:
            if classes[i] != classes[j]:
                continue
            x1, y1 = max(boxes[i][0], boxes[j][0]), max(boxes[i][1], boxes[j][1])
            x2, y2 = min(boxes[i][2], boxes[j][2]), min(boxes[i][3], boxes[j][3])
            inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
            area_i = (boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1])
            area_j = (boxes[j][2] - boxes[j][0]) * (boxes[j][3] - boxes[j][1])
            if inter / (area_i + area_j - inter) > iou_threshold:
                ok = False
                break
        if ok:
            kept.append(i)
    return kept


@pytest.mark.parametrize("seed, iou_threshold", list(itertools.product(range(4), (0.3, 0.45, 0.7))))
def test_batched_nms_matches_brute_force(seed, iou_threshold, nms_path):
    rng = np.random.default_rng(seed)
    n = 150
    xy = rng.uniform(0, 150, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (n, 2))], 1)
    scores = rng.permutation(n).astype(np.float64) / n  # distinct scores: a unique answer
    classes = rng.integers(0, 3, n)
    keep = batched_nms(boxes, scores, classes, iou_threshold)
    assert keep.tolist() == _brute_force_nms(boxes.tolist(), scores.tolist(), classes.tolist(), iou_threshold)
    # single-class nms is the same with all classes equal; max_keep truncates the same order
    agnostic = _brute_force_nms(boxes.tolist(), scores.tolist(), [0] * n, iou_threshold)
    assert nms(boxes, scores, iou_threshold).tolist() == agnostic
    assert nms(boxes, scores, iou_threshold, max_keep=5).tolist() == agnostic[:5]


@pytest.mark.parametrize("seed", range(6))
def test_nms_matrix_and_loop_keep_the_same_boxes(seed, monkeypatch):
    """The IoU-matrix NMS and the box-by-box loop give the same indices for crowded boxes with
    tied scores, zero-area boxes, NaN boxes and every max_keep."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 120))
    xy = rng.uniform(0, 80, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0, 40, (n, 2))], 1)
    points = rng.random(n) < 0.1
    boxes[points, 2:] = boxes[points, :2]  # zero area
    boxes[rng.random(n) < 0.05] = np.nan
    scores = rng.choice(np.float32([0.3, 0.5, 0.5, 0.9]), n)  # many ties: input order decides
    module = sys.modules["litedet.ops.nms"]
    for iou_threshold in (0.0, 0.3, 0.5, 1.0):
        for max_keep in (None, 0, 1, 5):
            matrix = nms(boxes, scores, iou_threshold, max_keep)
            monkeypatch.setattr(module, "PAIRWISE_LIMIT", 0)
            loop = nms(boxes, scores, iou_threshold, max_keep)
            monkeypatch.undo()
            assert matrix.dtype == loop.dtype == np.int64
            assert matrix.tolist() == loop.tolist(), (iou_threshold, max_keep)


def _prediction(rows):
    """[1, N, 5 + 3] from (cx, cy, w, h, obj, p0, p1, p2) rows."""
    return np.array([rows], np.float32)


def test_non_max_suppression_filters():
    pred = _prediction(
        [
            [50, 50, 20, 20, 0.9, 0.9, 0.1, 0.0],  # class 0, score .81
            [52, 50, 20, 20, 0.8, 0.1, 0.9, 0.0],  # class 1 on top of it, score .72
            [51, 50, 20, 20, 0.8, 0.8, 0.0, 0.0],  # class 0 duplicate, suppressed
            [150, 150, 10, 10, 0.2, 0.0, 0.0, 1.0],  # obj below conf .25
        ]
    )
    out = non_max_suppression(pred, 0.25, 0.45)[0]
    assert out[:, 5].tolist() == [0, 1]
    np.testing.assert_allclose(out[0], [40, 40, 60, 60, 0.81, 0], rtol=1e-5)
    assert non_max_suppression(pred, 0.25, 0.45, classes=[1])[0][:, 5].tolist() == [1]
    assert len(non_max_suppression(pred, 0.25, 0.45, agnostic=True)[0]) == 1
    assert len(non_max_suppression(pred, 0.25, 0.45, max_det=1)[0]) == 1
    assert len(non_max_suppression(pred, 0.95, 0.45)[0]) == 0
    # multi_label: a box scoring .45 for class 0 and .36 for class 1 gives two candidates
    two = _prediction([[50, 50, 20, 20, 0.9, 0.5, 0.4, 0.0]])
    assert non_max_suppression(two, 0.25, 0.45, multi_label=True)[0][:, 5].tolist() == [0, 1]
    assert non_max_suppression(two, 0.25, 0.45)[0][:, 5].tolist() == [0]


# ---------------------------------------------------------------- predictor end to end


class OneBoxBackend(Backend):
    """Emits YOLO maps with a single confident box at a given input-pixel centre and size."""

    name = "one-box"

    def __init__(self, config, centre, size, class_id, dynamic=False):
        super().__init__(config)
        self.centre, self.size, self.class_id, self._dynamic = centre, size, class_id, dynamic
        self.inputs: list[tuple[int, ...]] = []

    @property
    def dynamic(self) -> bool:
        return self._dynamic

    def run(self, batch):
        self.inputs.append(batch.shape)
        nc = self.config.num_classes
        outs = []
        for level, stride in enumerate(self.config.strides):
            h, w = batch.shape[2] // stride, batch.shape[3] // stride
            raw = np.full((batch.shape[0], 3 * (5 + nc), h, w), -20.0, np.float32)
            if level == 0:
                gx, gy = int(self.centre[0] // stride), int(self.centre[1] // stride)
                # invert the decode: sigmoid(t) = (c / s - g + 0.5) / 2, sigmoid(tw) = sqrt(w / a) / 2
                anchor = self.config.anchors[0][0]
                raw[:, 0, gy, gx] = logit((self.centre[0] / stride - gx + 0.5) / 2)
                raw[:, 1, gy, gx] = logit((self.centre[1] / stride - gy + 0.5) / 2)
                raw[:, 2, gy, gx] = logit(np.sqrt(self.size[0] / anchor[0]) / 2)
                raw[:, 3, gy, gx] = logit(np.sqrt(self.size[1] / anchor[1]) / 2)
                raw[:, 4, gy, gx] = 10.0
                raw[:, 5 + self.class_id, gy, gx] = 10.0
            outs.append(raw)
        return outs


@pytest.mark.parametrize("shape", [(480, 270), (270, 480)])
def test_predictor_maps_boxes_to_original_pixels(shape):
    config = ModelConfig("tiny", 80, list(COCO_NAMES), (320, 320))
    # a box centred at (160, 100) of size 16x20 input pixels
    backend = OneBoxBackend(config, centre=(160.0, 100.0), size=(16.0, 20.0), class_id=16)
    image = np.zeros((*shape, 3), np.uint8)
    _, info = letterbox(image, 320)
    (det,) = Predictor(backend).predict([image], ["img.jpg"])
    expected = np.array([[152, 90, 168, 110]], np.float32)
    expected[:, [0, 2]] = (expected[:, [0, 2]] - info.pad[0]) / info.ratio[0]
    expected[:, [1, 3]] = (expected[:, [1, 3]] - info.pad[1]) / info.ratio[1]
    np.testing.assert_allclose(det.boxes, clip_boxes(expected, shape), atol=1e-2)
    assert det.class_names == ["dog"] and det.scores[0] > 0.99
    assert backend.inputs == [(1, 3, 320, 320)]
    as_json = det.to_json()
    assert as_json["source"] == "img.jpg" and as_json["detections"][0]["class_name"] == "dog"
    drawn = det.draw(image)
    assert drawn.shape == image.shape and drawn.any() and not image.any()


def test_predictor_dynamic_backend_pads_to_stride_only():
    config = ModelConfig("tiny", 80, list(COCO_NAMES), (320, 320))
    backend = OneBoxBackend(config, centre=(40.0, 40.0), size=(16.0, 16.0), class_id=0, dynamic=True)
    Predictor(backend).predict(np.zeros((480, 270, 3), np.uint8))
    assert backend.inputs == [(1, 3, 320, 192)]


def test_batched_nms_keeps_classes_apart_at_any_coordinate():
    # With a fixed class offset (YOLOv5's 7680) this class-1 box lands exactly on the class-0 box
    # and suppresses it; the offset must grow with the coordinates.
    boxes = np.array([[10000, 0, 10100, 100], [2320, 0, 2420, 100], [10010, 0, 10100, 100]], np.float64)
    scores = np.array([0.8, 0.9, 0.7])
    assert sorted(batched_nms(boxes, scores, np.array([0, 1, 0]), 0.5).tolist()) == [0, 1]
    assert sorted(batched_nms(boxes * 100, scores, np.array([0, 1, 0]), 0.5).tolist()) == [0, 1]
    assert batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0.5).tolist() == []
