"""Backbones. Importing this package registers every backbone with the model registry."""

import importlib

from litedet.models.backbones.base import Backbone
from litedet.models.backbones.shufflenetv2 import ShuffleNetV2

__all__ = ["Backbone", "ShuffleNetV2"]

# Other backbone modules register themselves on import; a missing one must not break the rest.
for _module in ("mobilenetv1", "mobilenetv2", "mobilenetv3", "vovnet"):
    try:
        importlib.import_module(f"litedet.models.backbones.{_module}")
    except ModuleNotFoundError as _err:
        if _err.name != f"litedet.models.backbones.{_module}":
            raise
