"""litedet: lightweight object detection for edge devices.

    import litedet

    model = litedet.load("v5lite-s.onnx")      # any weights file: .safetensors .onnx .xml .param
    for result in model("images/"):            # a path, folder, glob, video, URL, array or list
        print(result.source, result.class_names, result.scores)

Top-level names (``__all__``):

- ``load(weights, ...)`` -> ``Model``: open any model file litedet runs (``litedet.api``).
- ``Model``: call it on images, folders, videos; ``stream`` for frame-by-frame results.
- ``Detections``: the result for one image or frame (``boxes``, ``scores``, ``class_ids``,
  ``names``, ``to_json()``, ``draw()``, ``save()``).
- ``create_model(name, **overrides)``, ``list_models(pattern)``: the model registry (torch).
- ``tune(...)``: the most accurate configuration that meets a latency budget, measured here.
- ``__version__``.

Importing the package imports no torch, so detection from an exported model works on a device
that has only numpy, opencv and one inference engine: every name above is loaded on first use.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and the API reference; at run time each loads on first use
    from litedet.api import Model, load
    from litedet.engine.results import Detections
    from litedet.models.registry import create_model, list_models
    from litedet.tuner import tune

__version__ = "0.1.0"

__all__ = ["Detections", "Model", "__version__", "create_model", "list_models", "load", "tune"]

# name -> module it lives in, imported on first use (lazy, PEP 562)
_LAZY = {
    "load": "litedet.api",
    "Model": "litedet.api",
    "Detections": "litedet.engine.results",
    "create_model": "litedet.models.registry",
    "list_models": "litedet.models.registry",
    "tune": "litedet.tuner",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'litedet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
