"""Contracts of the numpy box ops, decode and NMS (``litedet.ops``) that users rely on.

Each test pins one property a caller depends on (degenerate boxes, dtypes that every backend
shares, validation messages, tie order, threshold edges); they were written against the mutants
that survived ``scripts/mutation.py`` on ``litedet/ops`` (docs/development.md).
"""

from __future__ import annotations

import numpy as np
import pytest

from litedet.data.transforms import letterbox
from litedet.ops import (
    batched_nms,
    box_area,
    box_iou,
    class_offset,
    clip_boxes,
    decode_yolo,
    nms,
    non_max_suppression,
    scale_boxes,
    sigmoid,
    xywh_to_xyxy,
    xyxy_to_xywh,
)
from conftest import logit


def _rows(*rows: list[float]) -> np.ndarray:
    """One image of decoded rows (cx, cy, w, h, obj, class probabilities...), float32 [1, N, 5+nc]."""
    return np.asarray([rows], dtype=np.float32)


# ----------------------------------------------------------------------------- box conversions


@pytest.mark.parametrize(
    "box, expected",
    [
        ([10, 20, 30, 60], [20, 40, 20, 40]),  # x1 != y1: centre and size use the matching corners
        ([-8, 4, 2, 5], [-3, 4.5, 10, 1]),
    ],
)
def test_xyxy_to_xywh_uses_x_with_x_and_y_with_y(box, expected):
    np.testing.assert_array_equal(xyxy_to_xywh(np.array([box], np.float64)), [expected])
    np.testing.assert_array_equal(xywh_to_xyxy(np.array([expected], np.float64)), [box])


@pytest.mark.parametrize("convert", [xywh_to_xyxy, xyxy_to_xywh])
@pytest.mark.parametrize("shape", [(4,), (3, 4), (2, 3, 4)])
def test_box_conversions_keep_any_leading_shape(convert, shape):
    """[..., 4] in, [..., 4] out: a single box, a list of boxes and a batch all convert per box."""
    rng = np.random.default_rng(1)
    boxes = rng.uniform(0, 100, shape)
    out = convert(boxes)
    assert out.shape == shape
    flat = convert(boxes.reshape(-1, 4))
    np.testing.assert_array_equal(out.reshape(-1, 4), flat)


# ----------------------------------------------------------------------------- area and IoU


@pytest.mark.parametrize(
    "box",
    [
        [3, 0, 3, 5],  # zero width
        [0, 3, 5, 3],  # zero height
        [5, 0, 0, 5],  # x2 < x1
        [0, 5, 5, 0],  # y2 < y1
        [5, 5, 0, 0],  # both inverted
    ],
)
def test_box_area_of_degenerate_boxes_is_zero(box):
    assert box_area(np.array(box, np.float64)) == 0.0
    assert box_area(np.array([box, [0, 0, 2, 3]], np.float64)).tolist() == [0.0, 6.0]


def test_box_area_of_sub_pixel_boxes_is_exact():
    # normalised or sub-pixel boxes: 0.5 x 0.25 is exactly 0.125, no pixel minimum
    boxes = np.array([[0, 0, 0.5, 0.25], [0.25, 0.5, 0.75, 0.625]], np.float64)
    assert box_area(boxes).tolist() == [0.125, 0.0625]


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([0, 0, 10, 20], [0, 0, 20, 20], 0.5),  # 200 / 400: x and y extents of each box differ
        ([0, 0, 20, 20], [0, 0, 10, 20], 0.5),
        ([0, 0, 20, 10], [5, 0, 15, 30], 100 / 400),
        ([0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5], 1.0),  # union 0.25 < 1: still a plain ratio
        ([0, 0, 0.5, 0.5], [0, 0, 0.5, 0.25], 0.5),
        ([0, 0, 1, 1], [2, 2, 3, 3], 0.0),  # disjoint on both axes
        ([0, 0, 1, 1], [2, 0, 3, 1], 0.0),  # disjoint on x only
        ([0, 0, 1, 1], [1, 0, 2, 1], 0.0),  # touching edges share no area
        ([2, 2, 2, 2], [2, 2, 2, 2], 0.0),  # two identical points: empty union gives 0
        ([0, 0, 0, 5], [0, 0, 0, 5], 0.0),  # two identical zero-width boxes
    ],
)
def test_box_iou_is_intersection_over_union(a, b, expected):
    iou = box_iou(np.array([a], np.float64), np.array([b], np.float64))
    assert iou.shape == (1, 1)
    assert iou[0, 0] == expected


def test_box_iou_matrix_is_pairwise_and_symmetric():
    boxes1 = np.array([[0, 0, 10, 20], [30, 30, 40, 35]], np.float64)
    boxes2 = np.array([[0, 0, 20, 20], [30, 30, 40, 35], [5, 10, 10, 20]], np.float64)
    expected = np.array([[0.5, 0.0, 0.25], [0.0, 1.0, 0.0]])
    np.testing.assert_array_equal(box_iou(boxes1, boxes2), expected)
    np.testing.assert_array_equal(box_iou(boxes2, boxes1), expected.T)


@pytest.mark.parametrize("which", ["boxes1", "boxes2"])
def test_box_iou_error_names_the_bad_argument(which):
    good, bad = np.zeros((2, 4)), np.zeros((2, 5))
    args = (bad, good) if which == "boxes1" else (good, bad)
    with pytest.raises(ValueError, match=rf"^{which} must have shape \[\.\.\., 4\], got \(2, 5\)$"):
        box_iou(*args)


# ----------------------------------------------------------------------------- clip and scale


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_boxes_keeps_the_float_dtype(dtype):
    boxes = np.array([[-5.5, -1, 50.25, 50], [1.5, 2.5, 3.5, 4.5]], dtype)
    out = clip_boxes(boxes, (20, 30))
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, np.array([[0, 0, 30, 20], [1.5, 2.5, 3.5, 4.5]], dtype))


def test_clip_boxes_accepts_an_image_shape_with_channels():
    image = np.zeros((20, 30, 3), np.uint8)
    out = clip_boxes(np.array([[-5, -5, 50, 50]], np.float32), image.shape)
    np.testing.assert_array_equal(out, [[0, 0, 30, 20]])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_clip_boxes_of_unsigned_boxes_clips_to_any_image_size(dtype):
    """Unsigned pixel boxes on an image wider than their dtype can hold (uint8 on 640x480):
    the limits are not squeezed into the box dtype."""
    boxes = np.array([[10, 20, 250, 255], [0, 0, 30, 40]], dtype)
    out = clip_boxes(boxes, (480, 640))
    assert out.dtype.kind == "f"
    np.testing.assert_array_equal(out, boxes.astype(np.float64))
    np.testing.assert_array_equal(clip_boxes(boxes, (30, 200)), [[10, 20, 200, 30], [0, 0, 30, 30]])


@pytest.mark.parametrize("ratio", [0.5, np.float32(0.5), (0.5, 0.5), [0.5, 0.5]])
def test_scale_boxes_maps_letterboxed_boxes_back_to_the_original_image(ratio):
    # 640x480 image letterboxed to 320: ratio 0.5, 40 px of padding on top
    letterboxed = np.array([[10, 50, 110, 150], [0, 30, 330, 300]], np.float32)
    out = scale_boxes(letterboxed, ratio, (0, 40), (480, 640))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[20, 20, 220, 220], [0, 0, 640, 480]])


def test_scale_boxes_inverts_litedet_letterbox_on_a_real_image_shape():
    _, info = letterbox(np.zeros((300, 500, 3), np.uint8), 320)
    original = np.array([[100, 50, 200, 150]], np.float32)
    forward = original * np.float32([info.ratio[0], info.ratio[1]] * 2) + np.float32([*info.pad, *info.pad])
    np.testing.assert_allclose(scale_boxes(forward, info.ratio, info.pad, info.original_shape), original, atol=1e-3)


@pytest.mark.parametrize("ratio", [0, -1.0, (0, 1), (1, 0), (0.0, 0.0), (1, -0.5), (-2, 1)])
def test_scale_boxes_rejects_a_non_positive_ratio(ratio):
    with pytest.raises(ValueError, match=r"^letterbox ratio must be > 0, got "):
        scale_boxes(np.zeros((1, 4), np.float32), ratio, (0, 0), (10, 10))


def test_scale_boxes_does_not_modify_its_input():
    boxes = np.array([[10, 50, 110, 150]], np.float32)
    before = boxes.copy()
    scale_boxes(boxes, 0.5, (3, 40), (480, 640))
    np.testing.assert_array_equal(boxes, before)


def test_scale_boxes_computes_in_float32_like_yolov5():
    """The letterbox inverse on float32 boxes is float32 arithmetic with the pad and gain in
    float32 (YOLOv5's ``scale_boxes`` on a float32 tensor): results are bit-identical to it, so
    every backend maps the same detections to the same pixels."""
    rng = np.random.default_rng(3)
    pad, gain = (100.3, 40.7), (1 / 3, 0.6)
    boxes = np.concatenate(
        [rng.uniform(100.3, 101, (256, 4)), rng.uniform(0, 640, (256, 4))]
    ).astype(np.float32)
    expected = (boxes - np.float32([pad[0], pad[1]] * 2)) / np.float32([gain[0], gain[1]] * 2)
    expected = np.minimum(np.maximum(expected, 0), np.float32([2000, 2000, 2000, 2000]))
    out = scale_boxes(boxes, gain, pad, (2000, 2000))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


# ----------------------------------------------------------------------------- sigmoid and decode


def test_sigmoid_is_float32_for_any_input_dtype():
    x = np.linspace(-30, 30, 61)
    for values in (x, x.astype(np.float32), x.astype(np.float16), [0, 1, -1]):
        assert sigmoid(values).dtype == np.float32
    assert sigmoid([0.0, -0.0]).tolist() == [0.5, 0.5]


def test_sigmoid_of_a_scalar_is_a_0d_float32_array():
    for value, expected in ((0.0, 0.5), (2.0, 1 / (1 + np.exp(-2.0))), (-3, 1 / (1 + np.exp(3.0)))):
        out = sigmoid(value)
        assert isinstance(out, np.ndarray) and out.shape == () and out.dtype == np.float32
        assert out == sigmoid([value])[0]  # the same float32 arithmetic as an array element
        assert abs(float(out) - expected) < 1e-7


def test_sigmoid_of_float64_input_equals_sigmoid_of_its_float32_cast():
    """float32 in: a float64 map (e.g. from a float64 runtime) gives bit-identical scores to the
    same map in float32, so backends agree on every threshold decision."""
    x = np.random.default_rng(5).normal(0, 4, 2000)
    np.testing.assert_array_equal(sigmoid(x), sigmoid(x.astype(np.float32)))


def _one_level(num_classes: int = 1, height: int = 2, width: int = 3, batch: int = 1, value: float = 0.0):
    anchors = [[[10, 13], [33, 23]]]
    raw = np.full((batch, 2 * (5 + num_classes), height, width), value, np.float32)
    return raw, anchors


@pytest.mark.parametrize(
    "anchors",
    [
        [[[10, 13], [33, 23]]],  # Python ints, as in a config file
        [[[10.0, 13.0], [33.0, 23.0]]],  # Python floats
        np.array([[[10, 13], [33, 23]]], np.float64),
    ],
)
def test_decode_yolo_returns_float32_for_integer_strides_and_any_anchor_type(anchors):
    raw, _ = _one_level()
    out = decode_yolo([raw], anchors, [8], num_classes=1)
    assert out.dtype == np.float32
    assert out.shape == (1, 12, 6)
    np.testing.assert_array_equal(out[0, 0], [4, 4, 10, 13, 0.5, 0.5])
    filtered = decode_yolo([raw + 1], anchors, [8], num_classes=1, min_objectness=0.5)
    assert filtered.dtype == np.float32


def test_decode_yolo_objectness_at_min_objectness_is_left_out():
    """``min_objectness`` drops rows whose objectness is *at most* it: logit 0 is sigmoid 0.5,
    exactly the bound, so that row goes; a logit just above stays."""
    raw, anchors = _one_level(height=1, width=2)
    raw[0, [4, 10]] = -5.0  # objectness of both anchors well below 0.5
    raw[0, 4, 0, 0] = 0.0  # anchor 0, cell 0: objectness exactly 0.5
    raw[0, 4, 0, 1] = 0.01  # anchor 0, cell 1: objectness just above
    out = decode_yolo([raw], anchors, [8], num_classes=1, min_objectness=0.5)
    assert out.shape == (1, 1, 6)
    assert out[0, 0, 0] == 12.0  # the cell at gx = 1: cx = (2 * 0.5 - 0.5 + 1) * 8
    assert out[0, 0, 4] > 0.5


def test_decode_yolo_min_objectness_zero_keeps_every_row():
    raw, anchors = _one_level(value=-30.0)
    full = decode_yolo([raw], anchors, [8], num_classes=1)
    np.testing.assert_array_equal(decode_yolo([raw], anchors, [8], num_classes=1, min_objectness=0.0), full)


@pytest.mark.parametrize("min_objectness", [-0.1, 1.0, 1.5])
def test_decode_yolo_rejects_min_objectness_outside_0_1(min_objectness):
    raw, anchors = _one_level()
    with pytest.raises(ValueError, match=rf"^min_objectness must be in \[0, 1\), got {min_objectness}$"):
        decode_yolo([raw], anchors, [8], num_classes=1, min_objectness=min_objectness)


def test_decode_yolo_float64_maps_decode_like_their_float32_cast():
    """A float64 map is read as float32 first: the objectness pre-filter and every value are the
    ones the float32 map gives (here a logit above the float64 bound that rounds onto it)."""
    raw, anchors = _one_level(height=1, width=2, value=-5.0)
    raw = raw.astype(np.float64)
    bound = logit(0.3)
    raw[0, 4, 0, 0] = np.nextafter(bound, np.inf)  # > bound in float64, == bound in float32
    raw[0, 4, 0, 1] = 2.0
    assert np.float32(raw[0, 4, 0, 0]) == np.float32(bound)
    out = decode_yolo([raw], anchors, [8], num_classes=1, min_objectness=0.3)
    expected = decode_yolo([raw.astype(np.float32)], anchors, [8], num_classes=1, min_objectness=0.3)
    assert out.shape == expected.shape == (1, 1, 6)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("batch", [1, 2])
def test_decode_yolo_with_nothing_above_min_objectness_is_empty(batch):
    raw, anchors = _one_level(batch=batch, value=-5.0)
    out = decode_yolo([raw, raw], [anchors[0], anchors[0]], [8, 16], num_classes=1, min_objectness=0.25)
    assert out.shape == (batch, 0, 6) and out.dtype == np.float32


def test_decode_yolo_levels_of_one_shape_keep_their_own_anchors_and_strides():
    """The per-cell tables are cached by map size, stride and anchors: two levels of the same
    size with other anchors or strides, and a later call with other anchors, decode with theirs."""
    raw, anchors = _one_level(height=1, width=1, value=0.0)  # sigmoid 0.5: w = anchor w, cx = stride / 2
    out = decode_yolo([raw, raw], [[[10, 13], [33, 23]], [[4, 5], [6, 7]]], [8, 32], num_classes=1)
    np.testing.assert_array_equal(out[0, :, 0], [4, 4, 16, 16])
    np.testing.assert_array_equal(out[0, :, 2:4], [[10, 13], [33, 23], [4, 5], [6, 7]])
    again = decode_yolo([raw], [[[1, 2], [3, 4]]], [8], num_classes=1)
    np.testing.assert_array_equal(again[0, :, 2:4], [[1, 2], [3, 4]])
    again[...] = -1  # the result is the caller's: the next call is unaffected
    np.testing.assert_array_equal(decode_yolo([raw], [[[1, 2], [3, 4]]], [8], num_classes=1)[0, :, 2:4], [[1, 2], [3, 4]])


def test_decode_yolo_needs_an_output():
    with pytest.raises(ValueError, match="^decode_yolo needs at least one output level$"):
        decode_yolo([], [], [], num_classes=1)


def test_decode_yolo_names_the_mismatched_level_counts():
    raw, anchors = _one_level()
    with pytest.raises(ValueError, match=r"^decode_yolo needs one anchor set and stride per output: got 1 outputs, "
                       r"2 anchor levels, 1 strides$"):
        decode_yolo([raw], anchors * 2, [8], num_classes=1)


def test_decode_yolo_shape_error_names_the_expected_channels():
    raw, anchors = _one_level(num_classes=1)
    with pytest.raises(ValueError, match=r"^output 0 has shape \(1, 12, 2, 3\); expected \[B, 14, H, W\] "
                       r"for 2 anchors and 2 classes$"):
        decode_yolo([raw], anchors, [8], num_classes=2)


# ----------------------------------------------------------------------------- class offset


@pytest.mark.parametrize(
    "boxes",
    [
        [[0, 0, 100, 100]],
        [[-10, -10, 9, 9]],  # symmetric about -0.5: max + min + 1 would be 0
        [[-100, -100, 50, 50], [-20, 5, 40, 60]],
        [[-300, -200, -100, -50]],  # every coordinate negative
        [[7, 7, 7, 7]],  # a span of 0
        [[0.25, 0.5, 0.75, 0.875]],  # normalised coordinates
    ],
)
def test_class_offset_is_just_above_the_coordinate_span(boxes):
    """Above the span, so classes never touch; at most one past it, so shifted coordinates stay
    as small (and as precise) as possible."""
    boxes = np.asarray(boxes, np.float64)
    span = boxes.max() - boxes.min()
    assert span < class_offset(boxes) <= span + 1


def test_class_offset_of_float32_boxes_exceeds_their_exact_span():
    # float32 coordinates -40 and 2**30: the span 2**30 + 40 is not a float32 number
    boxes = np.array([[-40, 0, 2**30, 1]], np.float32)
    span = float(2**30 + 40)
    assert span < class_offset(boxes) <= span + 1


def test_class_offset_of_no_boxes_is_a_unit_step():
    assert 0 < class_offset(np.zeros((0, 4))) <= 1


def test_boxes_of_different_classes_around_the_origin_never_suppress_each_other():
    boxes = np.array([[-10, -10, 9, 9], [-10, -10, 9, 9], [-100, -100, 50, 50], [-99, -99, 51, 51]], np.float64)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    assert batched_nms(boxes, scores, np.array([0, 1, 2, 3]), 0.0).tolist() == [0, 1, 2, 3]
    assert batched_nms(boxes, scores, np.array([0, 0, 1, 1]), 0.5).tolist() == [0, 2]


@pytest.mark.parametrize("shape", [(4,), (4, 1), (1, 4)])
def test_batched_nms_accepts_class_ids_of_any_shape_with_one_id_per_box(shape):
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 1, 10, 11], [50, 50, 60, 60]], np.float64)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    class_ids = np.array([0, 1, 0, 1]).reshape(shape)
    assert batched_nms(boxes, scores, class_ids, 0.5).tolist() == [0, 1, 3]


# ----------------------------------------------------------------------------- nms


@pytest.mark.parametrize("max_keep", [None, 0, 2])
def test_nms_of_no_boxes_or_none_kept_is_an_int64_index_array(max_keep):
    boxes = np.array([[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5]], np.float64)
    for kept in (nms(np.zeros((0, 4)), np.zeros(0), 0.5, max_keep), nms(boxes, np.ones(3), 0.5, 0)):
        assert kept.dtype == np.int64 and kept.shape == (0,)
        assert boxes[kept].shape == (0, 4)  # usable as an index


@pytest.mark.parametrize("max_keep, expected", [(0, []), (-3, []), (1, [1]), (2, [1, 2]), (10, [1, 2, 0])])
def test_nms_keeps_at_most_max_keep_best_boxes(max_keep, expected):
    boxes = np.array([[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5]], np.float64)
    assert nms(boxes, np.array([0.1, 0.9, 0.5]), 0.5, max_keep).tolist() == expected


def test_nms_iou_threshold_one_suppresses_nothing():
    boxes = np.array([[0, 0, 10, 10]] * 3, np.float64)
    assert nms(boxes, np.array([0.7, 0.9, 0.8]), 1.0).tolist() == [1, 2, 0]


@pytest.mark.parametrize("iou_threshold", [-0.01, 1.01])
def test_nms_rejects_an_iou_threshold_outside_0_1(iou_threshold):
    with pytest.raises(ValueError, match=rf"^iou_threshold must be in \[0, 1\], got {iou_threshold}$"):
        nms(np.zeros((1, 4)), np.zeros(1), iou_threshold)


def test_nms_suppresses_duplicates_in_normalised_coordinates(nms_path):
    """Boxes in 0..1 (areas far below one pixel) suppress each other like pixel boxes."""
    boxes = np.array([[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.45], [0.6, 0.6, 0.9, 0.9]], np.float64)
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.45).tolist() == [0, 2]
    assert nms(boxes * 1000, np.array([0.9, 0.8, 0.7]), 0.45).tolist() == [0, 2]


def test_nms_breaks_score_ties_by_input_order():
    """Equal scores are visited in input order (a stable sort), so the result is deterministic:
    here 60 disjoint boxes with 3 distinct scores, capped at 25."""
    rng = np.random.default_rng(2)
    scores = rng.choice(np.float32([0.5, 0.7, 0.9]), 60)
    boxes = np.array([[10 * i, 0, 10 * i + 5, 5] for i in range(60)], np.float64)
    expected = sorted(range(60), key=lambda i: (-scores[i], i))
    assert nms(boxes, scores, 0.5).tolist() == expected
    assert nms(boxes, scores, 0.5, max_keep=25).tolist() == expected[:25]


def test_nms_ranks_unsigned_integer_scores_by_value():
    """Quantized (uint8) scores rank like their values, a score of 0 last."""
    boxes = np.array([[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5], [6, 6, 7, 7]], np.float64)
    assert nms(boxes, np.array([0, 200, 100, 255], np.uint8), 0.5).tolist() == [3, 1, 2, 0]


@pytest.mark.parametrize("shape", [(3,), (3, 1), (1, 3)])
def test_nms_accepts_scores_of_any_shape_with_one_score_per_box(shape):
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float64)
    scores = np.array([0.8, 0.9, 0.7], np.float32).reshape(shape)
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]


@pytest.mark.parametrize(
    "a, b",
    [
        ([1876, 5066], [4247, 5563]),
        ([4161, 3718], [3799, 5675]),
        ([5201, 4442], [4520, 2944]),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nms_keeps_a_box_whose_iou_is_exactly_the_threshold(a, b, dtype):
    """Suppression needs IoU > threshold, decided on the exact IoU of the boxes (float64; areas of
    4K-sized boxes overflow float32's 24 bits): a box at exactly the threshold stays."""
    boxes = np.array([[0, 0, *a], [0, 0, *b]], dtype)
    inter = min(a[0], b[0]) * min(a[1], b[1])
    iou = inter / (a[0] * a[1] + b[0] * b[1] - inter)
    scores = np.array([0.9, 0.8], np.float32)
    assert nms(boxes, scores, iou).tolist() == [0, 1]
    assert nms(boxes, scores, np.nextafter(iou, 0)).tolist() == [0]


def test_nms_rejects_mismatched_boxes_and_scores():
    with pytest.raises(ValueError, match=r"^nms got 2 boxes and 3 scores$"):
        nms(np.zeros((2, 4)), np.zeros(3), 0.5)


# ----------------------------------------------------------------------------- non_max_suppression


def test_non_max_suppression_returns_float32_detections():
    pred = _rows([50, 50, 20, 20, 0.9, 0.1, 0.9], [150, 150, 20, 20, 0.8, 0.7, 0.3])
    for out in (non_max_suppression(pred)[0], non_max_suppression(pred.astype(np.float64))[0]):
        assert out.dtype == np.float32 and out.shape == (2, 6)
        np.testing.assert_array_equal(out[:, 5], [1, 0])


def test_non_max_suppression_of_float64_predictions_equals_their_float32_cast():
    """Scores and boxes are computed in float32 whatever the input dtype: a float64 prediction
    gives bit-identical detections to the same prediction in float32."""
    rng = np.random.default_rng(7)
    n = 200
    pred = np.concatenate(
        [rng.uniform(0, 640, (1, n, 2)), rng.uniform(1, 60, (1, n, 2)), rng.uniform(0, 1, (1, n, 4))], axis=-1
    )
    for multi_label in (False, True):
        out = non_max_suppression(pred, 0.2, 0.5, multi_label=multi_label)[0]
        expected = non_max_suppression(pred.astype(np.float32), 0.2, 0.5, multi_label=multi_label)[0]
        assert len(expected) > 10
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("multi_label", [False, True])
def test_non_max_suppression_scores_must_exceed_conf_threshold(multi_label):
    """A candidate whose score equals ``conf_threshold`` is dropped (YOLOv5: ``> conf_thres``)."""
    pred = _rows([50, 50, 20, 20, 1.0, 0.5, 0.25], [150, 150, 20, 20, 1.0, 0.0, 0.75])
    out = non_max_suppression(pred, conf_threshold=0.5, multi_label=multi_label)[0]
    np.testing.assert_array_equal(out, [[140, 140, 160, 160, 0.75, 1]])


def test_non_max_suppression_of_an_image_without_candidates_is_empty():
    pred = np.concatenate([_rows([50, 50, 20, 20, 0.1, 0.9, 0.1]), _rows([50, 50, 20, 20, 0.9, 0.9, 0.1])])
    for multi_label in (False, True):
        empty, one = non_max_suppression(pred, 0.25, multi_label=multi_label)
        assert empty.shape == (0, 6) and empty.dtype == np.float32
        assert one.shape == (1, 6)


@pytest.mark.parametrize("conf_threshold, expected", [(0.0, 2), (1.0, 0)])
def test_non_max_suppression_accepts_the_conf_threshold_bounds(conf_threshold, expected):
    pred = _rows([50, 50, 20, 20, 1.0, 0.9, 0.1], [150, 150, 20, 20, 0.5, 0.001, 0.0])
    assert len(non_max_suppression(pred, conf_threshold=conf_threshold)[0]) == expected


@pytest.mark.parametrize("conf_threshold", [-0.1, 1.5, 2.0])
def test_non_max_suppression_rejects_a_conf_threshold_outside_0_1(conf_threshold):
    with pytest.raises(ValueError, match=rf"^conf_threshold must be in \[0, 1\], got {conf_threshold}$"):
        non_max_suppression(_rows([50, 50, 20, 20, 1.0, 0.9]), conf_threshold=conf_threshold)


def test_non_max_suppression_max_nms_keeps_the_earliest_of_tied_candidates():
    """More candidates than ``max_nms``: the best scores enter NMS, ties taken in row order, so
    the detections do not depend on the sort algorithm."""
    rng = np.random.default_rng(11)
    n = 60
    obj = rng.choice(np.float32([0.5, 0.7, 0.9]), n)
    pred = np.zeros((1, n, 6), np.float32)
    pred[0, :, 0] = np.arange(n) * 30 + 10  # disjoint 20 px boxes
    pred[0, :, 1] = 10
    pred[0, :, 2:4] = 20
    pred[0, :, 4] = obj
    pred[0, :, 5] = 1.0
    out = non_max_suppression(pred, 0.25, 0.45, max_nms=25)[0]
    expected = sorted(range(n), key=lambda i: (-obj[i], i))[:25]
    np.testing.assert_array_equal(out[:, 0], pred[0, expected, 0] - 10)


@pytest.mark.parametrize("box_every", [0, 4])
def test_nms_never_suppresses_zero_area_boxes(box_every):
    """Zero-area boxes (points) have IoU 0 with everything, so every one of them is kept: 400
    points, alone or mixed with real 10 px boxes."""
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 100, (400, 2))
    boxes = np.concatenate([points, points], axis=1)
    is_point = np.ones(400, bool)
    if box_every:
        boxes[::box_every, 2:] += 10
        is_point[::box_every] = False
    kept = nms(boxes, rng.uniform(0, 1, 400), 0.5)
    assert is_point[kept].sum() == is_point.sum()


def test_nms_emits_no_warnings(recwarn, nms_path):
    boxes = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 50, 60]], np.float64)
    kept = nms(boxes, np.array([0.9, 0.8, 0.7, 0.6, 0.5]), 0.5)
    assert kept.tolist() == [0, 1, 2, 4]
    assert [str(w.message) for w in recwarn] == []


# ----------------------------------------------------------------------------- quantized maps


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("min_objectness", [None, 0.25, 0.6])
def test_decode_yolo_of_quantized_channels_last_maps_equals_decode_of_their_dequantized_values(batch, min_objectness):
    """An INT8 model's uint8 channels-last maps (one spare padding channel) decode to exactly the
    rows of the float maps its DequantizeLinear would have given: same rows, order and values."""
    rng = np.random.default_rng(7)
    anchors = [[[10, 13], [16, 30]], [[30, 61], [62, 45]]]
    strides, num_classes = [8, 16], 3
    channels = 2 * (5 + num_classes)
    quantized, floats, params = [], [], []
    for level, size in enumerate((4, 2)):
        q = rng.integers(0, 256, (batch, size, size + 1, channels + 1), dtype=np.uint8)
        scale, zero = float(rng.uniform(0.02, 0.2)), int(rng.integers(60, 200))
        values = (q[..., :channels].astype(np.float32) - np.float32(zero)) * np.float32(scale)
        quantized.append(q)
        floats.append(values.transpose(0, 3, 1, 2))
        params.append({"scale": scale, "zero_point": zero, "channels": channels})
    expected = decode_yolo(floats, anchors, strides, num_classes, min_objectness)
    decoded = decode_yolo(quantized, anchors, strides, num_classes, min_objectness, params)
    assert expected.shape[1] > 0
    np.testing.assert_array_equal(decoded, expected)


def test_decode_yolo_quantized_threshold_at_a_representable_objectness_leaves_it_out():
    """A row whose dequantized objectness is exactly the threshold logit is left out, as in float."""
    anchors = [[[10, 13]]]
    q = np.zeros((1, 1, 2, 6), np.uint8)
    q[0, 0, 0, 4], q[0, 0, 1, 4] = 140, 141  # (q - 128) * 0.1: 1.2 and 1.3
    params = [{"scale": 0.1, "zero_point": 128, "channels": 6}]
    threshold = float(np.float32((np.float32(140) - np.float32(128)) * np.float32(0.1)))
    probability = 1.0 / (1.0 + np.exp(-threshold))
    kept = decode_yolo([q], anchors, [8], 1, probability, params)
    assert kept.shape == (1, 1, 6)  # only the cell with q = 141


def test_decode_yolo_quantized_names_the_level_with_the_wrong_layout():
    anchors = [[[10, 13]]]
    params = [{"scale": 0.1, "zero_point": 0, "channels": 6}]
    with pytest.raises(ValueError, match=r"quantized output 0 has shape \(1, 6, 2, 2\) \(float32\)"):
        decode_yolo([np.zeros((1, 6, 2, 2), np.float32)], anchors, [8], 1, 0.25, params)
    with pytest.raises(ValueError, match="1 output quantizations for 2 outputs"):
        decode_yolo([np.zeros((1, 2, 2, 6), np.uint8)] * 2, anchors * 2, [8, 16], 1, 0.25, params)


@pytest.mark.parametrize("entries, message", [
    ([{"scale": 0.1, "zero_point": 0}] * 3, "each quantized_outputs entry must be"),
    ([{"scale": -0.1, "zero_point": 0, "channels": 255}] * 3, "scale must be a positive number"),
    ([{"scale": 0.1, "zero_point": 300, "channels": 255}] * 3, "zero_point must be in 0..255"),
    ([{"scale": 0.1, "zero_point": 0, "channels": 255}], "1 entries for 3 output levels"),
    ("q", "quantized_outputs must be a list"),
])
def test_model_config_checks_quantized_outputs(entries, message):
    from litedet.config import ModelConfig

    with pytest.raises(ValueError, match=message):
        ModelConfig(model="v5lite-s", num_classes=80, names=[str(i) for i in range(80)], input_size=(416, 416),
                    quantized_outputs=entries)


def test_model_config_writes_quantized_outputs_only_when_set(tmp_path):
    from litedet.config import ModelConfig

    names = [str(i) for i in range(80)]
    plain = ModelConfig(model="v5lite-s", num_classes=80, names=names, input_size=(416, 416))
    assert "quantized_outputs" not in plain.to_dict()
    entries = [{"scale": 0.1, "zero_point": 7, "channels": 255}] * 3
    config = ModelConfig(model="v5lite-s", num_classes=80, names=names, input_size=(416, 416), quantized_outputs=entries)
    assert ModelConfig.load(config.save(tmp_path / "m.json")).quantized_outputs == entries
