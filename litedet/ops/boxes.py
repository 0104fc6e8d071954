"""Box conversions, IoU, clipping and undoing a letterbox, in numpy (no torch).

Box formats follow torchvision ``ops/boxes.py``: ``xyxy`` is (x1, y1, x2, y2) with x2 >= x1 and
y2 >= y1; ``xywh`` is (cx, cy, w, h), the centre and size. Coordinates are float pixels.
"""

from __future__ import annotations

import numpy as np


def _check_boxes(boxes: np.ndarray, name: str = "boxes") -> np.ndarray:
    boxes = np.asarray(boxes)
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"{name} must have shape [..., 4], got {boxes.shape}")
    return boxes


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """boxes [..., 4] (cx, cy, w, h) -> [..., 4] (x1, y1, x2, y2)."""
    boxes = _check_boxes(boxes)
    half = boxes[..., 2:4] / 2
    return np.concatenate([boxes[..., 0:2] - half, boxes[..., 0:2] + half], axis=-1)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """boxes [..., 4] (x1, y1, x2, y2) -> [..., 4] (cx, cy, w, h)."""
    boxes = _check_boxes(boxes)
    return np.concatenate([(boxes[..., 0:2] + boxes[..., 2:4]) / 2, boxes[..., 2:4] - boxes[..., 0:2]], axis=-1)


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Areas of boxes [..., 4] in xyxy; degenerate boxes give 0."""
    boxes = _check_boxes(boxes)
    # np.maximum(x, 0): what np.clip(x, 0, None) computes, at a quarter of its call overhead
    return np.maximum(boxes[..., 2] - boxes[..., 0], 0) * np.maximum(boxes[..., 3] - boxes[..., 1], 0)


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes1 [N, 4] and boxes2 [M, 4] (xyxy) -> [N, M].

    A pair whose union is empty (two zero-area boxes) has IoU 0.
    """
    boxes1 = _check_boxes(boxes1, "boxes1").reshape(-1, 4)
    boxes2 = _check_boxes(boxes2, "boxes2").reshape(-1, 4)
    top_left = np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def clip_boxes(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Clip xyxy boxes [..., 4] to an image of ``shape`` (height, width); returns a new array."""
    boxes = _check_boxes(boxes)
    height, width = shape[:2]
    limits = np.array([width, height, width, height], dtype=boxes.dtype if boxes.dtype.kind in "fi" else np.float64)
    return np.minimum(np.maximum(boxes, 0), limits)


def scale_boxes(
    boxes: np.ndarray,
    ratio: float | tuple[float, float],
    pad: tuple[float, float],
    original_shape: tuple[int, int],
) -> np.ndarray:
    """Map xyxy boxes from letterboxed-input pixels back to the original image and clip them.

    ``ratio`` is the resize gain (one float, or (gain_w, gain_h)); ``pad`` the (left, top) padding
    added after resizing, as returned in ``litedet.data.transforms.LetterboxInfo``;
    ``original_shape`` the (height, width) of the image before letterboxing. This is the inverse of
    the letterbox (YOLOv5 ``scale_boxes`` with ``ratio_pad`` given).
    """
    boxes = _check_boxes(boxes).astype(np.float32, copy=True)
    gain_w, gain_h = (ratio, ratio) if np.isscalar(ratio) else ratio
    if gain_w <= 0 or gain_h <= 0:
        raise ValueError(f"letterbox ratio must be > 0, got {ratio}")
    boxes -= np.array([pad[0], pad[1], pad[0], pad[1]], dtype=np.float32)
    boxes /= np.array([gain_w, gain_h, gain_w, gain_h], dtype=np.float32)
    return clip_boxes(boxes, original_shape)
