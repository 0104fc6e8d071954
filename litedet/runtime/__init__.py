"""Inference engines behind one ``Backend`` interface; ``open_backend`` picks one for a file.

Imports no torch: only the engine a file needs is imported, when it is opened, so a device with
numpy + opencv + one engine can run detection.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
from collections.abc import Sequence
from pathlib import Path

from litedet.config import ModelConfig, find_config, sidecar_path
from litedet.extras import MissingExtraError, missing_extra_error
from litedet.runtime.base import Backend
from litedet.runtime.shapes import check_input_size

# engine name -> (module, class); each class is built as Cls(weights: Path, config, threads=,
# precision=[, device=])
ENGINES: dict[str, tuple[str, str]] = {
    "torch": ("litedet.runtime.torch_backend", "TorchBackend"),
    "onnxruntime": ("litedet.runtime.onnxruntime_backend", "OnnxRuntimeBackend"),
    "openvino": ("litedet.runtime.openvino_backend", "OpenVINOBackend"),
    "ncnn": ("litedet.runtime.ncnn_backend", "NcnnBackend"),
}

# file suffix -> engine that runs it
SUFFIX_ENGINES: dict[str, str] = {
    ".safetensors": "torch",
    ".onnx": "onnxruntime",
    ".xml": "openvino",
    ".param": "ncnn",
}

# engine -> the files it opens (OpenVINO also reads ONNX directly)
ENGINE_SUFFIXES: dict[str, tuple[str, ...]] = {
    "torch": (".safetensors",),
    "onnxruntime": (".onnx",),
    "openvino": (".xml", ".onnx"),
    "ncnn": (".param",),
}
EXPORT_FORMATS = {"onnxruntime": "onnx", "openvino": "openvino", "ncnn": "ncnn"}

__all__ = ["ENGINES", "SUFFIX_ENGINES", "Backend", "MissingExtraError", "engine_for", "open_backend"]


def engine_for(weights: str | os.PathLike) -> str:
    """The engine that runs ``weights``, from its suffix."""
    suffix = Path(weights).suffix.lower()
    if suffix not in SUFFIX_ENGINES:
        known = ", ".join(f"{s} ({e})" for s, e in SUFFIX_ENGINES.items())
        raise ValueError(f"{weights}: cannot tell the engine from suffix {suffix!r}; known: {known} (or name the engine: --engine, or engine= in Python)")
    return SUFFIX_ENGINES[suffix]


def open_backend(
    weights: str | os.PathLike,
    engine: str | None = None,
    threads: int | None = None,
    precision: str = "fp32",
    model: str | None = None,
    imgsz: int | tuple[int, int] | None = None,
    device: str | None = None,
) -> Backend:
    """Open ``weights`` with ``engine`` (default: from the suffix).

    The config sidecar beside the file (``litedet.config.sidecar_path``) supplies the model
    name, input size, classes and preprocessing. ``model``, when given, must agree with it; for a
    torch checkpoint without a sidecar it names the architecture. ``imgsz`` overrides the input size
    (an int for a square, or (height, width)). ``device``: where the engine runs (torch ``cpu``,
    ``cuda``, ``cuda:1``; onnxruntime ``cpu`` or ``cuda[:N]``; OpenVINO ``CPU``, ``GPU``, ``NPU``,
    ``AUTO``; ncnn ``cpu``); default: the engine's own choice (CUDA when torch or onnxruntime see
    one, else the CPU).

    Raises ``MissingExtraError`` (an ImportError) naming the pip extra when the engine's package
    is not installed.
    """
    path = Path(weights).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"weights not found: {path}")
    engine = engine or engine_for(path)
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if path.suffix.lower() not in ENGINE_SUFFIXES[engine]:
        made = (f"; `litedet export --format {EXPORT_FORMATS[engine]}` makes one" if engine in EXPORT_FORMATS
                else "")
        raise ValueError(f"{path}: the {engine} engine opens {' or '.join(ENGINE_SUFFIXES[engine])} files, "
                         f"not {path.suffix or 'a file without suffix'}{made}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    config = find_config(path)
    if config is None and engine != "torch":
        raise FileNotFoundError(
            f"{path}: no model config beside it (expected {sidecar_path(path)}); import published weights "
            f"with `litedet import`, export with `litedet export`, or for a .safetensors pass --model"
        )
    if config is not None and engine == "torch" and (config.nms_in_graph or config.uint8_input):
        what = "nms_in_graph" if config.nms_in_graph else "uint8_input"
        raise ValueError(f"{sidecar_path(path)}: {what} is set, which only an exported graph has; this sidecar "
                         f"belongs to an export, not to the checkpoint {path.name}")
    if config is not None and model and model != config.model:
        raise ValueError(f"--model {model!r} does not match {sidecar_path(path)}, which says {config.model!r}")
    if config is not None and imgsz is not None:
        config = with_input_size(config, imgsz)
    module_name, class_name = ENGINES[engine]
    options = {} if device is None else {"device": device}
    try:
        module = importlib.import_module(module_name)
        backend_cls = getattr(module, class_name)
        if config is None:  # torch weights without sidecar: the backend builds the config (from `model`)
            backend = backend_cls(path, None, threads=threads, precision=precision, model=model, **options)
            if imgsz is not None:
                backend.config = with_input_size(backend.config, imgsz)
        else:
            backend = backend_cls(path, config, threads=threads, precision=precision, **options)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            raise ValueError(f"engine {engine!r} is not available in this version of litedet") from None
        missing = missing_extra_error(err, f"the {engine} engine ({path.name})")
        if missing is None:
            raise
        raise missing from None
    try:
        check_input_size(path, getattr(backend, "input_shape", []), backend.config.input_size,
                         backend.config.uint8_input, asked=imgsz is not None)
    except ValueError:
        backend.close()
        raise
    backend.reopen = functools.partial(
        open_backend, path, engine=engine, precision=precision, model=model, imgsz=imgsz, device=device,
    )
    return backend


def size_error(size: Sequence[int], stride: int) -> str:
    """What is wrong with an input size that is not a positive multiple of ``stride``, with the
    nearest one that is."""
    shown = str(size[0]) if len(size) == 2 and size[0] == size[1] else ",".join(str(v) for v in size)
    nearest = [max(stride, round(v / stride) * stride) for v in size]
    hint = str(nearest[0]) if len(nearest) == 2 and nearest[0] == nearest[1] else ",".join(map(str, nearest))
    return f"imgsz {shown} must be a positive multiple of the model's largest stride {stride} (e.g. {hint})"


def with_input_size(config: ModelConfig, imgsz: int | tuple[int, int]) -> ModelConfig:
    """A copy of ``config`` with another input size, checked against ``config.size_multiple``."""
    size = (int(imgsz), int(imgsz)) if isinstance(imgsz, int) else tuple(int(v) for v in imgsz)
    stride = config.size_multiple
    if len(size) != 2 or min(size) <= 0 or any(v % stride for v in size):
        raise ValueError(size_error(size, stride))
    return dataclasses.replace(config, input_size=size)
