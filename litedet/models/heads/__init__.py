"""Heads: raw prediction maps only; decode and NMS live in ``litedet.ops``."""

from litedet.models.heads.ssdlite import SSDLiteHead, ssd_prior_sizes
from litedet.models.heads.yolo import YoloHead

__all__ = ["SSDLiteHead", "YoloHead", "ssd_prior_sizes"]
