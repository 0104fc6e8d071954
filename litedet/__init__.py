"""litedet: lightweight object detection for edge devices.

Importing the package imports no torch, so the runtime (``litedet.runtime``) works on a
device that has only numpy, opencv and one inference engine. Model-building entry points
are loaded on first use.
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_models", "tune"]


def __getattr__(name: str) -> Any:
    if name in ("create_model", "list_models"):
        from litedet.models import registry

        return getattr(registry, name)
    if name == "tune":  # litedet.tune(...): the search behind `litedet tune` (litedet.tuner)
        from litedet.tuner import tune

        return tune
    raise AttributeError(f"module 'litedet' has no attribute {name!r}")
