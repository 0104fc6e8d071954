"""OpenVINO IR export: the ONNX export (``litedet.export.onnx``) converted with ``ov.convert_model``.

fp32 keeps fp32 weights; ``half`` stores them as fp16 (``compress_to_fp16``). Inference
precision (fp32, bf16 on AMX CPUs, fp16) is chosen at run time by the backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from litedet.config import Preprocess

from litedet.export.onnx import INPUT_NAME, InGraphNMS, export_onnx


def export_openvino(
    model: nn.Module,
    path: str | Path,
    imgsz: tuple[int, int],
    workdir: str | Path,
    dynamic: bool = False,
    half: bool = False,
    nms: InGraphNMS | None = None,
    uint8_input: "Preprocess | None" = None,
) -> list[str]:
    """Write ``path`` (``.xml``) and its ``.bin``; returns the output names.

    The intermediate ONNX file goes to ``workdir``. A node OpenVINO cannot convert raises a
    ValueError carrying OpenVINO's message, which names the node and its op type.
    """
    import openvino as ov

    onnx_path = Path(workdir) / "openvino_source.onnx"
    output_names = export_onnx(model, onnx_path, imgsz, dynamic=dynamic, nms=nms, uint8_input=uint8_input)
    try:
        converted = ov.convert_model(str(onnx_path))
    except Exception as err:  # noqa: BLE001 - OpenVINO raises several frontend error types
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = " | ".join(lines[:6]) if lines else type(err).__name__
        raise ValueError(f"OpenVINO cannot convert the model: {detail}") from err
    ov.save_model(converted, str(path), compress_to_fp16=half)
    return output_names


def export(
    model: nn.Module,
    path: str | Path,
    imgsz: tuple[int, int],
    workdir: str | Path,
    dynamic: bool = False,
    half: bool = False,
    nms: InGraphNMS | None = None,
    stride: int = 32,
    uint8_input: "Preprocess | None" = None,
) -> tuple[list[str], list[str]]:
    """The format-table entry point (``litedet.export.formats``): (input names, output names)."""
    return [INPUT_NAME], export_openvino(model, path, imgsz, workdir, dynamic=dynamic, half=half, nms=nms,
                                         uint8_input=uint8_input)
