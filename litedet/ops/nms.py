"""Non-maximum suppression in numpy, shared by every backend.

``non_max_suppression`` follows YOLOv5's ``utils/general.py`` step for step so that scores and
kept boxes match it: objectness pre-filter, score = objectness x class probability, best class
(or every class above the threshold with ``multi_label``), class filter, at most ``max_nms``
candidates by score, then greedy per-class NMS via the class-offset trick, keeping ``max_det``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from litedet.ops.boxes import box_area, xywh_to_xyxy


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: int | None = None) -> np.ndarray:
    """Greedy NMS over boxes [N, 4] (xyxy) with scores [N].

    Visits boxes by descending score and drops every later box whose IoU with a kept box is
    greater than ``iou_threshold`` (torchvision ``ops.nms`` semantics). Stops after ``max_keep``
    boxes are kept, which gives the same result as truncating the full answer, since boxes are
    kept in score order. Returns the kept indices (int64), highest score first.
    """
    # float64: class offsets (batched_nms) put coordinates near 1e6, where float32 loses pixels.
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"nms got {len(boxes)} boxes and {len(scores)} scores")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    limit = len(boxes) if max_keep is None else max(0, int(max_keep))
    order = np.argsort(-scores, kind="stable")
    if len(order) <= PAIRWISE_LIMIT:
        return _nms_pairwise(boxes[order], iou_threshold, limit, order)
    areas = box_area(boxes)
    keep: list[int] = []
    while order.size and len(keep) < limit:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        # np.maximum(x, 0) and w * h: what np.clip and np.prod compute, without their wrappers
        size = np.maximum(np.minimum(boxes[best, 2:], boxes[rest, 2:]) - np.maximum(boxes[best, :2], boxes[rest, :2]), 0.0)
        inter = size[:, 0] * size[:, 1]
        union = areas[best] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


# Up to this many candidates, ``nms`` computes every pairwise IoU at once: about 25 numpy calls
# in all (at most 2 MiB per temporary) instead of about 15 per kept box. Numpy calls, not data,
# set the time of post-processing; beyond ~700 candidates the N^2 work costs more than the loop.
PAIRWISE_LIMIT = 512


def _nms_pairwise(boxes: np.ndarray, iou_threshold: float, limit: int, order: np.ndarray) -> np.ndarray:
    """Greedy NMS of ``boxes`` [N, 4] (float64, already by descending score) from their IoU
    matrix; the same IoU arithmetic as the loop in ``nms``, so the same boxes are kept. Returns
    ``order`` at the kept positions."""
    # one [N, N] array per step (a broadcast over the last axis of [N, 1, 2] runs 2-element loops)
    x1, y1, x2, y2 = boxes.T.copy()
    width = np.maximum(np.minimum(x2[:, None], x2) - np.maximum(x1[:, None], x1), 0.0)
    height = np.maximum(np.minimum(y2[:, None], y2) - np.maximum(y1[:, None], y1), 0.0)
    inter = width * height
    areas = np.maximum(x2 - x1, 0.0) * np.maximum(y2 - y1, 0.0)  # box_area's arithmetic
    union = areas[:, None] + areas - inter
    # union >= 0 (inter <= either area, rounding included); where it is 0, inter is 0 too and
    # 0 / 0 = NaN is not > iou_threshold: the loop's "IoU 0 where union is 0", without the masked
    # divide, which costs twice a plain one
    with np.errstate(invalid="ignore"):  # 0 / 0 only: a zero union has a zero intersection
        suppresses = inter / union > iou_threshold
    removed = np.zeros(len(boxes), dtype=bool)
    keep: list[int] = []
    for index in range(len(boxes) if limit else 0):
        if not removed[index]:
            keep.append(index)
            if len(keep) == limit:
                break
            removed |= suppresses[index]
    return order[np.asarray(keep, dtype=np.int64)]


def class_offset(boxes: np.ndarray) -> float:
    """The shift between classes that keeps every pair of boxes of different classes apart.

    Boxes of class k are moved by ``k * offset`` on both axes. With every coordinate in
    ``[lo, hi]``, an offset above ``hi - lo`` puts class k + 1 wholly beyond class k, at any image
    size (a fixed offset such as YOLOv5's ``max_wh = 7680`` lets large boxes or large images of
    different classes suppress each other).
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        return 1.0
    return float(boxes.max() - boxes.min()) + 1.0


def batched_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    iou_threshold: float,
    max_keep: int | None = None,
) -> np.ndarray:
    """NMS done independently per class (torchvision ``batched_nms``): boxes [N, 4] (xyxy),
    scores [N], class_ids [N]; each class's boxes are offset by ``class_id * class_offset(boxes)``
    so boxes of different classes never overlap. Returns kept indices, highest score first."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    class_ids = np.asarray(class_ids).reshape(-1)
    if len(class_ids) != len(boxes):
        raise ValueError(f"batched_nms got {len(boxes)} boxes and {len(class_ids)} class ids")
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = class_ids.astype(np.float64).reshape(-1, 1) * class_offset(boxes)
    return nms(boxes + offsets, scores, iou_threshold, max_keep)


def non_max_suppression(
    prediction: np.ndarray,
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    classes: Sequence[int] | None = None,
    agnostic: bool = False,
    multi_label: bool = False,
    max_det: int = 300,
    max_nms: int = 30000,
) -> list[np.ndarray]:
    """YOLOv5 NMS on decoded predictions.

    Args:
        prediction: [B, N, 5 + nc] rows of (cx, cy, w, h, objectness, class probabilities...),
            as returned by ``litedet.ops.decode.decode_yolo``.
        conf_threshold: keep candidates whose objectness and final score exceed this.
        iou_threshold: IoU above which a lower-scored box of the same class is suppressed.
        classes: keep only these class ids (None: all).
        agnostic: one NMS over all classes instead of one per class.
        multi_label: a box may give one candidate per class above the threshold (YOLOv5 val);
            otherwise only its best class.
        max_det: most detections kept per image.
        max_nms: most candidates (by score) that enter NMS.

    Returns:
        One float32 array [n, 6] per image: (x1, y1, x2, y2, score, class_id), by descending score.
    """
    prediction = np.asarray(prediction, dtype=np.float32)
    if prediction.ndim != 3 or prediction.shape[-1] < 6:
        raise ValueError(f"prediction must be [B, N, 5 + nc] with nc >= 1, got {prediction.shape}")
    if not 0.0 <= conf_threshold <= 1.0:
        raise ValueError(f"conf_threshold must be in [0, 1], got {conf_threshold}")
    if max_det < 1:
        raise ValueError(f"max_det must be >= 1, got {max_det}")
    wanted = None if classes is None else np.asarray(list(classes), dtype=np.int64)
    results = []
    for rows in prediction:
        rows = rows[rows[:, 4] > conf_threshold]
        class_scores = rows[:, 5:] * rows[:, 4:5]
        if multi_label:
            box_index, class_id = np.nonzero(class_scores > conf_threshold)
            scores = class_scores[box_index, class_id]
        else:
            # each row's best class; its max is the score at the argmax (a NaN row gives NaN)
            class_id, scores = class_scores.argmax(axis=1), class_scores.max(axis=1)
            box_index = np.flatnonzero(scores > conf_threshold)
            scores, class_id = scores[box_index], class_id[box_index]
        boxes = xywh_to_xyxy(rows[box_index, :4])  # only the candidates' boxes
        if wanted is not None:
            keep = np.isin(class_id, wanted)
            boxes, scores, class_id = boxes[keep], scores[keep], class_id[keep]
        if len(scores) > max_nms:
            top = np.argsort(-scores, kind="stable")[:max_nms]
            boxes, scores, class_id = boxes[top], scores[top], class_id[top]
        offsets = np.zeros_like(scores) if agnostic else class_id.astype(np.float32)
        keep = batched_nms(boxes, scores, offsets, iou_threshold, max_det)
        results.append(
            np.concatenate(
                [boxes[keep], scores[keep, None], class_id[keep, None].astype(np.float32)], axis=1
            ).astype(np.float32)
        )
    return results
