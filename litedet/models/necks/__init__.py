"""Necks: fuse backbone maps into the maps a head predicts from."""

from litedet.models.necks.pan import PAN_CONFIGS, PANConfig, YoloPAN
from litedet.models.necks.ssd import SSDLiteExtras

__all__ = ["PAN_CONFIGS", "PANConfig", "SSDLiteExtras", "YoloPAN"]
