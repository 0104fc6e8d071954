"""The export format table (ultralytics ``export_formats()`` style): one row per engine format.

Torch-free: the CLI and the runtime read this table to list formats, to validate options before
any heavy import, and to name the files an export writes.
"""

from __future__ import annotations

from dataclasses import dataclass

# Raised whenever an exporter starts writing a different graph for the same model (a fold, a
# rewrite): caches of exported files (``litedet bench``'s, ``litedet tune``'s) keyed by it are
# then rebuilt instead of timing a graph the current exporter no longer writes.
EXPORT_REVISION = 2


@dataclass(frozen=True)
class ExportFormat:
    """One export format.

    ``suffix`` is the suffix of the file the runtime opens (``litedet.runtime.SUFFIX_ENGINES``),
    ``files`` every file the export writes beside the config sidecar, as suffixes of the stem.
    ``needs`` lists the Python packages the export needs (the runtime needs only ``engine``'s).
    ``dynamic``/``half``/``nms`` say which options the format supports.
    """

    name: str
    title: str
    suffix: str
    files: tuple[str, ...]
    engine: str
    module: str
    needs: tuple[str, ...]
    dynamic: bool
    half: bool
    nms: bool


EXPORT_FORMATS: dict[str, ExportFormat] = {
    fmt.name: fmt
    for fmt in (
        #            name        title       suffix         files                             engine         exporter module               needs                              dyn   half   nms
        ExportFormat("onnx", "ONNX", ".onnx", (".onnx",), "onnxruntime", "litedet.export.onnx", ("onnx", "onnxslim", "onnxruntime"), True, False, True),
        ExportFormat("openvino", "OpenVINO IR", ".xml", (".xml", ".bin"), "openvino", "litedet.export.openvino", ("onnx", "onnxslim", "openvino"), True, True, True),
        ExportFormat("ncnn", "ncnn", ".param", (".param", ".bin"), "ncnn", "litedet.export.ncnn", ("pnnx", "ncnn"), True, True, False),
    )
}


def export_formats() -> list[ExportFormat]:
    """Every export format, in table order."""
    return list(EXPORT_FORMATS.values())


def get_format(name: str) -> ExportFormat:
    """The format called ``name`` (case-insensitive), or a ValueError listing the known ones."""
    key = str(name).lower().strip()
    if key not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {name!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    return EXPORT_FORMATS[key]


def check_options(fmt: ExportFormat, dynamic: bool = False, half: bool = False, nms: bool = False) -> None:
    """Raise a ValueError naming the option when ``fmt`` cannot do it."""
    for option, wanted, supported in (("--dynamic", dynamic, fmt.dynamic), ("--half", half, fmt.half), ("--nms", nms, fmt.nms)):
        if wanted and not supported:
            can = [f.name for f in export_formats() if getattr(f, option.strip("-"))]
            raise ValueError(f"format {fmt.name!r} does not support {option}; formats that do: {', '.join(can)}")


def default_stem(fmt: ExportFormat, dynamic: bool = False, half: bool = False, nms: bool = False,
                 uint8_input: bool = False) -> str:
    """File stem of an export, distinct per format and variant so exports into one folder never
    overwrite each other's sidecar: ``model`` (ONNX), ``model_openvino``, ``model_ncnn``, with
    ``_dynamic``, ``_fp16``, ``_nms``, ``_uint8`` appended for those variants."""
    stem = "model" if fmt.name == "onnx" else f"model_{fmt.name}"
    if dynamic:
        stem += "_dynamic"
    if half:
        stem += "_fp16"
    if nms:
        stem += "_nms"
    if uint8_input:
        stem += "_uint8"
    return stem
