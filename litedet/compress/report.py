"""Before/after report of compressed models: params, file size, mAP and latency, measured in one run.

Every model in a report is an engine file (ONNX, OpenVINO IR, ncnn) or a litedet checkpoint that
``litedet.runtime.open_backend`` opens. mAP comes from ``litedet.engine.evaluator.evaluate_coco``
on the same images for all; latency from ``litedet.bench.harness.measure_interleaved`` with every
model timed side by side (A, B, A, B ... in chunks) on the named engine and thread count, on the
same real, pre-processed image, so the ratios hold even when the machine drifts (BENCHMARKS.md
"Noise"). The background load of other processes is recorded with each figure.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from litedet.config import find_config, write_text_atomic

LOGGER = logging.getLogger(__name__)


@dataclass
class ReportEntry:
    """One model to compare: a display name, its file, and how to run it."""

    name: str
    path: Path
    engine: str | None = None  # default: from the suffix
    precision: str = "fp32"
    params: int | None = None  # known from the torch model; else counted from the file
    notes: str = ""


@dataclass
class ReportRow:
    """What was measured for one entry."""

    name: str
    path: str
    engine: str
    precision: str
    threads: int
    params: int | None
    file_bytes: int
    map50_95: float | None = None
    map50: float | None = None
    median_ms: float | None = None
    p90_ms: float | None = None
    runs: int = 0
    other_load: float | None = None
    notes: str = ""


@dataclass
class CompressionReport:
    """Rows measured together, and how."""

    rows: list[ReportRow]
    input_size: tuple[int, int]
    threads: int
    val_images: str | None
    machine: str = field(default_factory=lambda: f"{platform.machine()} {os.cpu_count()} cores, {platform.processor() or platform.system()}")
    commands: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [dict(vars(r)) for r in self.rows], "input_size": list(self.input_size), "threads": self.threads,
                "val_images": self.val_images, "machine": self.machine, "commands": self.commands}

    def to_markdown(self) -> str:
        base = self.rows[0] if self.rows else None
        lines = [
            f"Input {self.input_size[0]}x{self.input_size[1]}, batch 1, {self.threads} thread(s); latency is the median "
            f"(p90) over the runs shown, all models timed interleaved in one run; "
            + (f"mAP on {self.val_images}." if self.val_images else
               "mAP not measured (give --val-images and --val-annotations to measure it)."),
            "",
            "| model | engine | precision | params | file MB | mAP50-95 | mAP50 | median ms | p90 ms | speed-up | other load % |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            speedup = (f"{base.median_ms / row.median_ms:.2f}x" if base and base.median_ms and row.median_ms else "-")
            lines.append(
                f"| {row.name} | {row.engine} | {row.precision} | {_fmt_params(row.params)} | {row.file_bytes / 1e6:.2f} | "
                f"{_fmt(row.map50_95, 4)} | {_fmt(row.map50, 4)} | {_fmt(row.median_ms, 2)} | {_fmt(row.p90_ms, 2)} | "
                f"{speedup} | {_fmt(row.other_load, 0)} |"
            )
        notes = [f"- {row.name}: {row.notes}" for row in self.rows if row.notes]
        if notes:
            lines += ["", *notes]
        if self.commands:
            lines += ["", "Commands:", "", *[f"    {c}" for c in self.commands]]
        lines += ["", f"Machine: {self.machine}."]
        return "\n".join(lines) + "\n"

    def save(self, out_dir: str | os.PathLike, stem: str = "report") -> tuple[Path, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        md, js = out / f"{stem}.md", out / f"{stem}.json"
        write_text_atomic(md, self.to_markdown())
        write_text_atomic(js, json.dumps(self.to_dict(), indent=2) + "\n")
        return md, js


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _fmt_params(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:.3f}M"


def file_bytes(path: str | os.PathLike) -> int:
    """Bytes of a model and its companion files (.bin of OpenVINO/ncnn, ONNX external data)."""
    from litedet.compress.quantize import model_files_size

    return model_files_size(path)


def count_file_params(path: str | os.PathLike) -> int | None:
    """Weights stored in an ONNX file (initializer elements except quantization scales and zero
    points); None for other formats."""
    path = Path(path)
    if path.suffix != ".onnx":
        return None
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    total = 0
    for init in graph.initializer:
        if init.name.endswith(("_scale", "_zero_point")) or len(init.dims) == 0:
            continue
        total += int(np.prod(init.dims))
    return total


def count_file_gflops(path: str | os.PathLike) -> float | None:
    """GFLOPs per image of an ONNX file (2 x the multiply-adds of its Conv, ConvTranspose, Gemm and
    MatMul nodes, as ``litedet.bench.profile`` counts a torch model), from ONNX shape inference;
    None for other formats or when a shape it needs is not fixed."""
    path = Path(path)
    if path.suffix != ".onnx":
        return None
    import onnx

    try:
        model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    except Exception:  # noqa: BLE001 - a graph shape inference cannot follow: no count
        return None
    graph = model.graph

    def dims(name: str) -> list[int] | None:
        for info in (*graph.value_info, *graph.output, *graph.input):
            if info.name == name:
                shape = [d.dim_value if d.HasField("dim_value") else 0 for d in info.type.tensor_type.shape.dim]
                return shape if shape and all(shape) else None
        for init in graph.initializer:
            if init.name == name:
                return list(init.dims)
        return None

    macs = 0
    for node in graph.node:
        if node.op_type in ("Conv", "ConvTranspose"):
            weight, out = dims(node.input[1]), dims(node.output[0])
            source = out if node.op_type == "Conv" else dims(node.input[0])
            if weight is None or source is None:
                return None
            macs += int(np.prod(weight)) * int(np.prod(source[2:]))  # per image: Cout x Cin/g x k x k x H x W
        elif node.op_type in ("Gemm", "MatMul"):
            a, out = dims(node.input[0]), dims(node.output[0])
            if a is None or out is None:
                return None
            macs += int(np.prod(out[1:] if len(out) > 2 else out)) * a[-1]
    return 2.0 * macs / 1e9


def _sample_batch(path: Path, images: str | os.PathLike | None, imgsz: tuple[int, int] | None) -> np.ndarray:
    """One real image pre-processed for the model at ``path`` (or a fixed grey image)."""
    import cv2

    from litedet.data.transforms import preprocess

    config = find_config(path)
    if config is None:
        raise FileNotFoundError(f"{path}: no config sidecar beside it")
    image = None
    if images is not None:
        for file in sorted(Path(images).iterdir()):
            image = cv2.imread(str(file))
            if image is not None:
                break
    if image is None:
        image = np.full((480, 640, 3), 114, np.uint8)
    batch, _ = preprocess([image], config, new_shape=imgsz)
    return batch


def compare(
    entries: Sequence[ReportEntry],
    val_images: str | os.PathLike | None = None,
    val_annotations: str | os.PathLike | None = None,
    threads: int = 2,
    warmup: int = 10,
    runs: int = 100,
    budget_s: float | None = 120.0,
    measure_map: bool = True,
    measure_latency: bool = True,
    progress: bool = True,
    commands: Sequence[str] = (),
) -> CompressionReport:
    """Measure every entry: mAP (when ``val_*`` given and ``measure_map``), then latency of all
    entries interleaved in one run on their engines at ``threads`` threads."""
    from litedet.bench.harness import measure_interleaved
    from litedet.runtime import engine_for, open_backend

    if not entries:
        raise ValueError("nothing to report: no models given")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    rows: list[ReportRow] = []
    backends = {}
    batches = {}
    input_size = None
    try:
        for entry in entries:
            path = Path(entry.path)
            if not path.exists():
                raise FileNotFoundError(f"model to report not found: {path}")
            engine = entry.engine or engine_for(path)
            backend = open_backend(path, engine=engine, threads=threads, precision=entry.precision)
            input_size = input_size or tuple(backend.config.input_size)
            # The file's own precision (an INT8 export runs through the engine's fp32 API).
            precision = backend.config.precision if entry.precision == "fp32" else entry.precision
            row = ReportRow(entry.name, str(path), engine, precision, threads,
                            entry.params if entry.params is not None else count_file_params(path), file_bytes(path),
                            notes=entry.notes)
            if measure_map and val_images is not None and val_annotations is not None:
                from litedet.engine.evaluator import evaluate_coco

                result = evaluate_coco(backend, val_images, val_annotations, progress=progress)
                row.map50_95, row.map50 = result.map50_95, result.map50
                LOGGER.info("%s: mAP50-95 %.4f", entry.name, result.map50_95)
            rows.append(row)
            backends[entry.name] = backend
            batches[entry.name] = _sample_batch(path, val_images, None)
        if measure_latency:
            configs = {name: (lambda b=backend, x=batches[name]: b.run(x)) for name, backend in backends.items()}
            stats = measure_interleaved(configs, warmup=warmup, min_runs=runs, budget_s=budget_s)
            for row in rows:
                s = stats[row.name]
                row.median_ms, row.p90_ms, row.runs, row.other_load = s.median_ms, s.p90_ms, s.n, s.other_load
    finally:
        for backend in backends.values():
            backend.close()
    return CompressionReport(rows, input_size or (0, 0), threads, str(val_images) if val_images else None,
                             commands=list(commands))
