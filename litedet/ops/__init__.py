"""Numpy box ops, decode and NMS shared by every backend (no torch)."""

from litedet.ops.boxes import box_area, box_iou, clip_boxes, scale_boxes, xywh_to_xyxy, xyxy_to_xywh
from litedet.ops.decode import decode_ssdlite, decode_yolo, sigmoid
from litedet.ops.nms import batched_nms, class_offset, nms, non_max_suppression

__all__ = [
    "batched_nms",
    "box_area",
    "box_iou",
    "class_offset",
    "clip_boxes",
    "decode_ssdlite",
    "decode_yolo",
    "nms",
    "non_max_suppression",
    "scale_boxes",
    "sigmoid",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
]
