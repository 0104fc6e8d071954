"""The compiled YOLO post-processing (``litedet.ops.native``) against the numpy path it replaces:
``non_max_suppression(decode_yolo(...))`` and ``scale_boxes``. Its only arithmetic difference is
the C library's exp against numpy's, so counts and classes must be equal and boxes and scores
within a few float32 ulps; every case where the compiled path does not apply must hand back to
numpy (None), and the Predictor must give the same detections either way."""

from __future__ import annotations

import numpy as np
import pytest

from litedet.config import ModelConfig
from litedet.data.transforms import LetterboxInfo
from litedet.engine.predictor import Predictor
from litedet.ops import native
from litedet.ops.boxes import scale_boxes
from litedet.ops.decode import decode_yolo
from litedet.ops.nms import non_max_suppression
from litedet.runtime.base import Backend

pytestmark = pytest.mark.skipif(
    not native.available(),
    reason="litedet's C extension is not built here (no C compiler at install time, or LITEDET_NATIVE=0)",
)

ANCHORS = [[[10, 13], [16, 30], [33, 23]], [[30, 61], [62, 45], [59, 119]], [[116, 90], [156, 198], [373, 326]]]
STRIDES = [8, 16, 32]


def _maps(rng, size=128, batch=1, nc=80, spread=3.0, shift=-2.0, strides=STRIDES):
    return [(rng.standard_normal((batch, 3 * (5 + nc), size // s, size // s)) * spread + shift).astype(np.float32)
            for s in strides]


def _numpy(outputs, nc, conf=0.25, iou=0.45, classes=None, agnostic=False, max_det=300, multi_label=False):
    return non_max_suppression(decode_yolo(outputs, ANCHORS, STRIDES, nc, min_objectness=conf), conf, iou,
                               classes=classes, agnostic=agnostic, max_det=max_det, multi_label=multi_label)


def _canonical(rows):
    """Rows by class, then box: two scores a few ulps apart may come out in either order."""
    return rows[np.lexsort((rows[:, 1].round(2), rows[:, 0].round(2), rows[:, 5]))]


def _assert_same(got, expected, box_tol=1e-3):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.dtype == np.float32 and a.shape == b.shape
        assert (np.diff(a[:, 4]) <= 0).all()  # by descending score
        if not np.isnan(b).any():
            a, b = _canonical(a), _canonical(b)
        np.testing.assert_array_equal(a[:, 5], b[:, 5])  # classes
        np.testing.assert_allclose(a[:, :4], b[:, :4], rtol=0, atol=box_tol, equal_nan=True)
        np.testing.assert_allclose(a[:, 4], b[:, 4], rtol=1e-6, atol=0)


@pytest.mark.parametrize("seed", range(6))
def test_native_gives_the_numpy_detections(seed):
    rng = np.random.default_rng(seed)
    nc = int(rng.integers(1, 90))
    outputs = _maps(rng, size=int(rng.choice([64, 128, 320])), batch=int(rng.integers(1, 3)), nc=nc)
    conf, iou = float(rng.choice([0.05, 0.25, 0.5])), float(rng.choice([0.3, 0.45, 0.7]))
    post = native.YoloPostprocess(ANCHORS, STRIDES, nc)
    got = post(outputs, conf, iou)
    expected = _numpy(outputs, nc, conf, iou)
    assert sum(len(e) for e in expected) > 0
    _assert_same(got, expected)


@pytest.mark.parametrize("options", [
    {"agnostic": True}, {"classes": [0, 2, 7]}, {"classes": [3, 500]}, {"max_det": 1}, {"max_det": 7},
    {"multi_label": True}, {"multi_label": True, "classes": [1, 4]}, {"multi_label": True, "agnostic": True},
])
def test_native_follows_the_nms_options(options):
    rng = np.random.default_rng(11)
    outputs = _maps(rng, size=256, nc=8)
    got = native.YoloPostprocess(ANCHORS, STRIDES, 8)(outputs, 0.3, 0.5, **options)
    _assert_same(got, _numpy(outputs, 8, 0.3, 0.5, **options))


def test_native_more_candidates_than_the_pairwise_nms_takes():
    # over PAIRWISE_LIMIT candidates the numpy nms loops box by box: the same boxes must come out
    rng = np.random.default_rng(3)
    outputs = _maps(rng, size=640, nc=2, spread=1.0, shift=1.0)
    got = native.YoloPostprocess(ANCHORS, STRIDES, 2)(outputs, 0.25, 0.45, max_det=3000)
    expected = _numpy(outputs, 2, 0.25, 0.45, max_det=3000)
    assert len(decode_yolo(outputs, ANCHORS, STRIDES, 2, min_objectness=0.25)[0]) > 600
    _assert_same(got, expected)


def test_native_nan_logits_behave_as_in_numpy():
    rng = np.random.default_rng(5)
    outputs = _maps(rng, size=64, nc=3, spread=1.0, shift=2.0)
    level = outputs[0][0].reshape(3, 8, 8, 8)
    level[0, 4, 0, :4] = np.nan  # objectness: the rows are dropped
    level[1, 6, 1, :4] = np.nan  # a class: its rows are dropped (the max is NaN)
    post = native.YoloPostprocess(ANCHORS, STRIDES, 3)
    _assert_same(post(outputs, 0.25, 0.45), _numpy(outputs, 3))
    before = len(_numpy(outputs, 3)[0])
    level[2, 0, 2, 3], level[2, 4, 2, 3], level[2, 5, 2, 3] = np.nan, 10.0, 10.0  # a candidate's x
    got, expected = post(outputs, 0.25, 0.45), _numpy(outputs, 3)
    # NaN class offsets: nothing is suppressed any more, the NaN box is kept, as numpy does
    assert np.isnan(expected[0][:, 0]).sum() == 1 and len(expected[0]) > before + 1
    _assert_same(got, expected)


def test_native_maps_boxes_back_like_scale_boxes():
    rng = np.random.default_rng(8)
    outputs = _maps(rng, size=320, batch=2, nc=4)
    infos = [LetterboxInfo((480, 640), (320, 320), (0.5, 0.5), (0, 40)),
             LetterboxInfo((640, 427), (320, 320), (0.5, 0.5), (53, 0))]
    post = native.YoloPostprocess(ANCHORS, STRIDES, 4)
    plain, scaled = post(outputs, 0.3, 0.45), post(outputs, 0.3, 0.45, letterboxes=infos)
    for rows, mapped, info in zip(plain, scaled, infos):
        assert len(rows) > 0
        # the same float32 steps as scale_boxes: equal, bit for bit
        np.testing.assert_array_equal(mapped[:, :4], scale_boxes(rows[:, :4], info.ratio, info.pad, info.original_shape))
        np.testing.assert_array_equal(mapped[:, 4:], rows[:, 4:])
    with pytest.raises(ValueError, match="2 letterboxes for a batch of 1"):
        post([o[:1] for o in outputs], 0.3, 0.45, letterboxes=infos)


def test_native_keeps_up_with_new_map_shapes():
    # same number of cells, other height and width: the cell tables of the last call must not be reused
    rng = np.random.default_rng(4)
    post = native.YoloPostprocess(ANCHORS, STRIDES, 2)
    for size in ((64, 128), (128, 64), (64, 128), (96, 96)):
        outputs = [(rng.standard_normal((1, 21, size[0] // s, size[1] // s)) * 3).astype(np.float32) for s in STRIDES]
        _assert_same(post(outputs, 0.2, 0.45), _numpy(outputs, 2, 0.2))


@pytest.mark.parametrize("case", ["float16", "channels", "levels", "strided", "conf0", "conf1", "ndim"])
def test_native_hands_back_to_numpy_where_it_does_not_apply(case):
    rng = np.random.default_rng(0)
    outputs, conf = _maps(rng, size=64, nc=2), 0.25
    if case == "float16":
        outputs = [o.astype(np.float16) for o in outputs]
    elif case == "channels":
        outputs[1] = outputs[1][:, :20]
    elif case == "levels":
        outputs = outputs[:2]
    elif case == "strided":
        outputs[0] = outputs[0][..., ::2]
    elif case == "ndim":
        outputs[2] = outputs[2][0]
    else:
        conf = 0.0 if case == "conf0" else 1.0
    assert native.YoloPostprocess(ANCHORS, STRIDES, 2)(outputs, conf, 0.45) is None


class _MapsBackend(Backend):
    """Random head maps for any input (seeded per call), so two Predictors see the same maps."""

    name = "maps"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.calls = 0

    def run(self, batch):
        self.calls += 1
        rng = np.random.default_rng(self.calls % 7)
        height, width = batch.shape[2], batch.shape[3]
        nc = self.config.num_classes
        return [(rng.standard_normal((batch.shape[0], 3 * (5 + nc), height // s, width // s)) * 3 - 1).astype(np.float32)
                for s in self.config.strides]


def test_predictor_takes_the_native_path_with_the_numpy_results(monkeypatch):
    config = ModelConfig("tiny", 3, ["a", "b", "c"], (320, 320))
    fast, slow = Predictor(_MapsBackend(config), conf=0.3), Predictor(_MapsBackend(config), conf=0.3)
    assert fast._native is not None
    slow._native = None
    calls = []
    original = fast._native.__call__
    monkeypatch.setattr(native.YoloPostprocess, "__call__", lambda self, *a, **k: calls.append(1) or original(*a, **k))
    image = np.zeros((427, 640, 3), np.uint8)
    for _ in range(5):
        (a,), (b,) = fast.predict(image), slow.predict(image)
        assert len(a) > 0 and a.class_ids.tolist() == b.class_ids.tolist()
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3, rtol=0)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, atol=0)
    assert len(calls) == 5
    # COCO evaluation's settings take it too
    fast = Predictor(_MapsBackend(config), conf=0.001, iou=0.6, multi_label=True)
    slow = Predictor(_MapsBackend(config), conf=0.001, iou=0.6, multi_label=True)
    slow._native = None
    (a,), (b,) = fast.predict(image), slow.predict(image)
    assert len(calls) == 6 and len(a) == len(b) == 300
    rows = [np.column_stack([d.boxes, d.scores, d.class_ids]).astype(np.float32) for d in (a, b)]
    _assert_same(rows[:1], rows[1:])


def test_native_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("LITEDET_NATIVE", "0")
    assert not native.available()
    config = ModelConfig("tiny", 3, ["a", "b", "c"], (320, 320))
    assert Predictor(_MapsBackend(config))._native is None


@pytest.mark.parametrize("seed", range(3))
def test_native_reads_an_int8_models_uint8_maps_like_decode_yolo(seed):
    # channels-last uint8 maps with padded channels, as ModelConfig.quantized_outputs describes them
    rng = np.random.default_rng(seed)
    nc, size = 5, 128
    needed = 3 * (5 + nc)
    quantized = [{"scale": float(rng.uniform(0.02, 0.2)), "zero_point": int(rng.integers(100, 200)), "channels": needed}
                 for _ in STRIDES]
    outputs = [rng.integers(0, 256, (2, size // s, size // s, needed + 4), dtype=np.uint8) for s in STRIDES]
    post = native.YoloPostprocess(ANCHORS, STRIDES, nc, quantized)
    for conf in (0.25, 0.6):
        candidates = decode_yolo(outputs, ANCHORS, STRIDES, nc, min_objectness=conf, quantized=quantized)
        expected = non_max_suppression(candidates, conf, 0.45)
        assert sum(len(e) for e in expected) > 0
        _assert_same(post(outputs, conf, 0.45), expected)
    # a float map, or a uint8 map of other channels, is not this model's: numpy decides
    assert post([o.astype(np.float32) for o in outputs], 0.25, 0.45) is None
    assert post([o[..., :needed - 1] for o in outputs], 0.25, 0.45) is None


def test_native_multi_label_at_evaluation_thresholds():
    # COCO evaluation: conf 0.001, thousands of (box, class) candidates, a NaN class score skipped
    rng = np.random.default_rng(21)
    outputs = _maps(rng, size=320, nc=20, spread=2.0, shift=-3.0)
    outputs[0][0, 5, 0, :8] = np.nan
    outputs[0][0, 4, 0, :8] = 5.0
    got = native.YoloPostprocess(ANCHORS, STRIDES, 20)(outputs, 0.001, 0.6, multi_label=True)
    expected = _numpy(outputs, 20, 0.001, 0.6, multi_label=True)
    assert len(expected[0]) == 300  # max_det reached
    _assert_same(got, expected)
