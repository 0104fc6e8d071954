"""Export to the engines edge devices run (ONNX, OpenVINO IR, ncnn) and import published weights.

``export_model`` (``litedet.export.api``) imports torch, so it is loaded on first use; the format
table (``litedet.export.formats``) is torch-free.
"""

from __future__ import annotations

from typing import Any

from litedet.export.formats import EXPORT_FORMATS, ExportFormat, export_formats, get_format

__all__ = ["EXPORT_FORMATS", "ExportFormat", "ExportResult", "export_formats", "export_model", "get_format"]


def __getattr__(name: str) -> Any:
    if name in ("export_model", "ExportResult"):
        from litedet.export import api

        return getattr(api, name)
    raise AttributeError(f"module 'litedet.export' has no attribute {name!r}")
