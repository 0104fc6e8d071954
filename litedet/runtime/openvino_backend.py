"""OpenVINO backend for exported IR models (``.xml`` + ``.bin``) and ONNX files, which OpenVINO reads directly; imports no torch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from litedet.config import ModelConfig, usable_cores
from litedet.runtime.base import Backend
from litedet.runtime.shapes import check_input_shape, check_input_type

# litedet precision -> OpenVINO INFERENCE_PRECISION_HINT. BENCHMARKS.md: on AMX CPUs OpenVINO
# defaults to bf16, so fp32 must be asked for explicitly to match torch.
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def compile_properties(precision: str = "fp32", threads: int | None = None) -> dict[str, object]:
    """OpenVINO ``compile_model`` properties for latency at ``precision``, on ``threads`` CPU
    threads when given (litedet's backend and the benchmark's peers alike)."""
    properties: dict[str, object] = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        properties["INFERENCE_NUM_THREADS"] = int(threads)
        if int(threads) < usable_cores():
            # OpenVINO pins its threads to cores it picks alone: two copies on a share of the
            # cores each (detect's inference streams, bench --streams) would land on the same ones
            properties["ENABLE_CPU_PINNING"] = False
    return properties


def openvino_reason(err: BaseException) -> str:
    """The line of an OpenVINO error that says what is wrong (``Incorrect weights in bin file!``),
    not the ``Exception from src/...`` and ``Check '...' failed at ...`` lines of its source
    locations."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(("Exception from ", "Check '"))]
    return (said or lines or [type(err).__name__])[-1]


class OpenVINOBackend(Backend):
    """Runs an OpenVINO IR on ``device`` (default CPU).

    ``precision``: ``fp32`` (exact; set explicitly since the CPU default is bf16 where AMX is
    present), ``bf16`` or ``fp16`` (the CPU plugin's inference precision; the weights file may be
    fp32 or compressed fp16 either way). ``threads`` sets ``INFERENCE_NUM_THREADS`` on the CPU
    (below the core count, threads are not pinned to cores). ``device``
    is an OpenVINO device name (``CPU``, ``GPU``, ``NPU``, ``AUTO``; any case).
    """

    name = "openvino"

    def __init__(
        self,
        weights: str | os.PathLike,
        config: ModelConfig,
        threads: int | None = None,
        precision: str = "fp32",
        device: str = "CPU",
    ) -> None:
        import openvino as ov

        if precision not in PRECISION_HINTS:
            raise ValueError(f"openvino precision must be one of {sorted(PRECISION_HINTS)}, got {precision!r}")
        super().__init__(config, threads=threads, precision=precision)
        path = Path(weights)
        if path.suffix.lower() == ".xml" and not path.with_suffix(".bin").is_file():
            raise FileNotFoundError(f"{path}: its weights file {path.with_suffix('.bin')} is missing (copy the .xml and .bin together)")
        device = device.upper()
        core = ov.Core()
        properties = compile_properties(precision, threads if device == "CPU" else None)  # thread settings: CPU only
        try:
            network = core.read_model(str(path))
            self.compiled = core.compile_model(network, device, properties)
        except RuntimeError as err:
            raise ValueError(f"{path}: OpenVINO cannot load this model ({openvino_reason(err)})") from None
        if len(self.compiled.inputs) != 1:
            raise ValueError(f"{path}: expected one image input, the model has {len(self.compiled.inputs)}")
        element = self.compiled.input(0).get_element_type()
        check_input_type(path, config.uint8_input, element == ov.Type.u8, element.get_type_name())
        partial = self.compiled.input(0).get_partial_shape()
        self.input_shape = [d.get_length() if d.is_static else None for d in partial]
        graph_outputs = [sorted(o.get_names())[0] if o.get_names() else str(i) for i, o in enumerate(self.compiled.outputs)]
        names = list(config.output_names) or graph_outputs
        try:
            self.outputs = [self.compiled.output(name) for name in names]
        except RuntimeError:
            raise ValueError(f"{path}: outputs {names} named in its config are not all in the model (it has {graph_outputs})") from None
        self.request = self.compiled.create_infer_request()

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        check_input_shape(batch, self.input_shape, self.name, channels_last=self.config.uint8_input)
        results = self.request.infer({0: batch})
        return [np.array(results[port], dtype=np.float32, copy=True) for port in self.outputs]
