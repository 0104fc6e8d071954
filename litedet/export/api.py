"""``export_model``: one call from a detector (or its weights) to an engine's files + the sidecar.

Every export writes, beside the engine's files, the same ``litedet.config.ModelConfig`` sidecar
the importer writes (input size, class names, anchors, strides, preprocessing) plus what the
export decided (output names, dynamic shapes, precision, NMS in the graph), so a device
pre-processes exactly as training did. Files are built in a temporary folder inside the output
folder and moved into place only when the export succeeded, so a failed export leaves no
half-written model behind.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import importlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from litedet.config import ModelConfig, sidecar_path
from litedet.errors import UserError
from litedet.export.fold import fold_channel_shuffles
from litedet.export.formats import ExportFormat, check_options, default_stem, get_format
from litedet.export.onnx import OPSET
from litedet.runtime import size_error

LOGGER = logging.getLogger(__name__)

# Python package -> the pip extra that installs it, for error messages.
PACKAGE_EXTRAS = {"onnx": "export", "onnxslim": "export", "pnnx": "export", "onnxruntime": "runtime", "openvino": "openvino", "ncnn": "ncnn"}


@dataclass
class ExportResult:
    """What an export wrote: ``path`` is the file to open (``litedet detect --weights PATH``),
    ``files`` every file written (engine files and the ``config`` sidecar)."""

    format: str
    path: Path
    files: list[Path]
    config: ModelConfig
    seconds: float
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        size = sum(p.stat().st_size for p in self.files if p.is_file()) / 1e6
        height, width = self.config.input_size
        return (
            f"{self.format}: {self.path} ({size:.2f} MB, input {height}x{width}"
            f"{', dynamic' if self.config.dynamic else ''}, {self.config.precision}"
            f"{', NMS in graph' if self.config.nms_in_graph else ''}) in {self.seconds:.1f} s"
        )


def parse_imgsz(imgsz: int | str | Sequence[int] | None, default: Sequence[int]) -> tuple[int, int]:
    """``416``, ``"416"``, ``"384,640"`` or ``(384, 640)`` -> (height, width); None -> ``default``."""
    if imgsz is None:
        values = list(default)
    elif isinstance(imgsz, str):
        try:
            values = [int(v) for v in imgsz.replace("x", ",").split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--imgsz {imgsz!r}: give N or H,W (e.g. 416 or 384,640)") from None
    elif isinstance(imgsz, int):
        values = [imgsz]
    else:
        values = [int(v) for v in imgsz]
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) <= 0:
        raise ValueError(f"--imgsz {imgsz!r}: give N or H,W with positive values (e.g. 416 or 384,640)")
    return values[0], values[1]


def fuse_for_export(model: nn.Module) -> nn.Module:
    """Fold every conv-following BatchNorm before export (``litedet.layers.fuse_model``)."""
    from litedet.layers import fuse_model

    return fuse_model(model)


def _check_packages(fmt: ExportFormat) -> None:
    missing = [name for name in fmt.needs if importlib.util.find_spec(name) is None]
    if missing:
        extras = sorted({PACKAGE_EXTRAS.get(name, "export") for name in missing})
        raise ValueError(
            f"exporting to {fmt.name} needs {', '.join(missing)}: pip install 'litedet[{','.join(extras)}]'"
        )


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output folder {out_dir} exists and is not a folder; pass -o with a folder path")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create the output folder {out_dir}: {err.strerror or err}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write to the output folder {out_dir} (permission denied); pass another -o")


def _load(model_or_weights: nn.Module | str | os.PathLike, model_name: str | None) -> nn.Module:
    if isinstance(model_or_weights, nn.Module):
        if model_name and getattr(model_or_weights, "model_name", model_name) != model_name:
            raise ValueError(f"--model {model_name!r} does not match the given model {model_or_weights.model_name!r}")
        return model_or_weights
    from litedet.models.checkpoint import load_detector

    model, _ = load_detector(Path(model_or_weights), model_name=model_name)
    return model


def export_model(
    model_or_weights: nn.Module | str | os.PathLike,
    fmt: str,
    out_dir: str | os.PathLike,
    imgsz: int | str | Sequence[int] | None = None,
    dynamic: bool = False,
    half: bool = False,
    nms: bool = False,
    model_name: str | None = None,
    stem: str | None = None,
    conf: float = 0.25,
    iou: float = 0.45,
    max_det: int = 300,
    uint8_input: bool = False,
) -> ExportResult:
    """Export a detector to ``fmt`` ("onnx", "openvino", "ncnn"; ``litedet.export.formats``).

    Args:
        model_or_weights: a ``litedet.models.detector.Detector`` or a weights file
            (``.safetensors`` with its sidecar, or an ncnn ``.param`` to import).
        fmt: the format name.
        out_dir: folder for the files (created); existing files of the same name are replaced.
        imgsz: input size, N or (height, width) or "H,W"; default the model's. A multiple of the
            largest stride. For ``dynamic`` it is the example size; any stride multiple runs.
        dynamic: symbolic batch, height and width.
        half: fp16 weights (OpenVINO ``compress_to_fp16``, ncnn fp16 storage).
        nms: decode + NMS inside the graph (ONNX, OpenVINO); ``conf``, ``iou``, ``max_det`` are baked in.
        model_name: the registry name the weights must belong to (checked).
        stem: file name stem (default ``litedet.export.formats.default_stem``).
        uint8_input: the engine takes the letterboxed image itself, uint8 [B, H, W, 3] BGR, and
            normalises in its graph (ONNX, OpenVINO) or in ncnn's own pixel conversion; saves
            the host's float conversion per frame. The sidecar says so, and litedet's runtime
            (detect, val, bench) feeds it uint8; the default takes float32 [B, 3, H, W].

    Returns an ``ExportResult``. Raises ValueError for an unknown format or option, weights that
    do not fit ``model_name``, an op the engine cannot take (naming the layer) or an output
    folder that cannot be written; FileNotFoundError for missing weights.
    """
    start = time.perf_counter()
    export_format = get_format(fmt)
    check_options(export_format, dynamic=dynamic, half=half, nms=nms)
    uint8_input = bool(uint8_input)
    out_dir = Path(out_dir).expanduser()
    if not isinstance(model_or_weights, nn.Module) and not Path(model_or_weights).is_file():
        raise FileNotFoundError(f"weights file not found: {model_or_weights}")
    created = not out_dir.exists()
    _check_out_dir(out_dir)
    try:
        return _export(export_format, model_or_weights, out_dir, imgsz, dynamic, half, nms, model_name, stem, conf, iou, max_det,
                       start, uint8_input)
    except BaseException as err:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # leave no trace of a failed export
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            # The staging folder is gone and nothing was moved into out_dir: earlier exports stay intact.
            raise UserError(f"{out_dir}: no space left on the device while writing the {export_format.name} export "
                            f"({err.filename or 'engine files'}); nothing was written") from None
        raise


def _export(
    export_format: ExportFormat,
    model_or_weights: nn.Module | str | os.PathLike,
    out_dir: Path,
    imgsz: int | str | Sequence[int] | None,
    dynamic: bool,
    half: bool,
    nms: bool,
    model_name: str | None,
    stem: str | None,
    conf: float,
    iou: float,
    max_det: int,
    start: float,
    uint8_input: bool,
) -> ExportResult:
    """``export_model`` once the output folder exists: load, fuse, export into a staging folder,
    write the sidecar, move the files into ``out_dir``."""
    _check_packages(export_format)

    model = _load(model_or_weights, model_name)
    base_config: ModelConfig = model.config
    if base_config.head != "yolo" and nms:
        raise ValueError(f"--nms decodes YOLO heads only; {base_config.model} has a {base_config.head!r} head")
    size = parse_imgsz(imgsz, base_config.input_size)
    stride = base_config.size_multiple
    if size[0] % stride or size[1] % stride:
        raise ValueError(size_error(size, stride))

    network = fuse_for_export(copy.deepcopy(model).float().eval())
    shuffles_folded = fold_channel_shuffles(network)  # no Reshape-Transpose-Reshape in any engine
    stem = stem or default_stem(export_format, dynamic=dynamic, half=half, nms=nms, uint8_input=uint8_input)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{stem}.export-"))
    try:
        workdir = staging / "work"
        workdir.mkdir()
        engine_path = staging / f"{stem}{export_format.suffix}"
        extra: dict[str, Any] = dict(base_config.extra)
        extra["export"] = {"format": export_format.name, "torch": torch.__version__}
        if shuffles_folded:
            extra["export"]["channel_shuffles_folded"] = shuffles_folded
        wrapper = None
        if nms:
            from litedet.export.onnx import InGraphNMS

            wrapper = InGraphNMS(network, base_config.anchors, base_config.strides, base_config.num_classes, conf, iou, max_det)
            extra["export"]["nms"] = {"conf": conf, "iou": iou, "max_det": max_det, "outputs": "detections [B, max_det, 6] (x1, y1, x2, y2, score, class_id) in input pixels, num_detections [B]"}
        exporter = importlib.import_module(export_format.module)
        input_names, output_names = exporter.export(
            network, engine_path, size, workdir, dynamic=dynamic, half=half, nms=wrapper, stride=stride,
            uint8_input=base_config.preprocess if uint8_input else None,
        )
        extra["input_names"] = input_names
        if export_format.name in ("onnx", "openvino"):
            extra["export"]["opset"] = OPSET
        config = dataclasses.replace(
            base_config,
            input_size=size,
            output_names=output_names,
            dynamic=dynamic,
            precision="fp16" if half else "fp32",
            nms_in_graph=nms,
            uint8_input=uint8_input,
            extra=extra,
        )
        config.save(sidecar_path(engine_path))
        written = []
        # Engine files first, the sidecar last: a model is only usable once its sidecar is there.
        for suffix in (*export_format.files, ".json"):
            source = staging / f"{stem}{suffix}"
            if not source.is_file():
                raise ValueError(f"{export_format.name} export wrote no {source.name}")
        for suffix in (*export_format.files, ".json"):
            target = out_dir / f"{stem}{suffix}"
            os.replace(staging / f"{stem}{suffix}", target)
            written.append(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result = ExportResult(export_format.name, out_dir / f"{stem}{export_format.suffix}", written, config, time.perf_counter() - start)
    LOGGER.info("exported %s", result.summary())
    return result
