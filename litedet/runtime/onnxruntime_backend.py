"""ONNX Runtime backend for exported ``.onnx`` models (imports no torch)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from litedet.config import ModelConfig
from litedet.runtime.base import Backend
from litedet.runtime.shapes import check_input_shape, check_input_type

PRECISIONS = ("fp32",)


def session_options(threads: int | None = None) -> Any:
    """``onnxruntime.SessionOptions`` as litedet runs every ONNX Runtime session: ``threads``
    intra-op threads (None: ONNX Runtime's default), one inter-op thread (these graphs are
    sequential), warnings off, and the intra-op threads stop spinning when a run ends.

    ONNX Runtime's worker threads otherwise keep spinning for a while after each run, holding a
    core that the rest of the program needs between runs. Measured on two cores: `litedet detect
    --streams 1 --threads 2` on a video, v5lite-e@320 went from 65.6 to 90.0 FPS (medians of five
    paired runs; v5lite-s@416 53.5 to 57.1, within the noise), and a 2-thread session run right
    after another one took 4-8 calls to reach its speed (20.8 ms falling to 12.3 per call) where
    it now starts at it. Within a run the threads still spin between operators; back-to-back
    runs of one session were not slower.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


class OnnxRuntimeBackend(Backend):
    """Runs an ``.onnx`` export with ONNX Runtime.

    ``device``: ``cpu``, ``cuda`` or ``cuda:N`` (needs the onnxruntime-gpu build); default CUDA
    when that build sees a GPU, else the CPU. ``threads`` sets the intra-op thread pool (one
    inter-op thread: these graphs are sequential). ONNX Runtime runs the exported fp32 graph
    only; use OpenVINO or ncnn for bf16/fp16.
    """

    name = "onnxruntime"

    def __init__(
        self,
        weights: str | os.PathLike,
        config: ModelConfig,
        threads: int | None = None,
        precision: str = "fp32",
        device: str | None = None,
    ) -> None:
        import onnxruntime as ort

        if precision not in PRECISIONS:
            raise ValueError(f"onnxruntime runs fp32 only, got precision {precision!r}; use openvino (bf16, fp16) or ncnn (fp16)")
        super().__init__(config, threads=threads, precision=precision)
        path = Path(weights)
        options = session_options(threads)
        providers = _providers(device, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # noqa: BLE001 - ORT raises its own exception types per failure
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"{path}: not a loadable ONNX model ({first})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{path}: expected one image input, the model has {[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        self.input_shape = list(inputs[0].shape)
        check_input_type(path, config.uint8_input, inputs[0].type == "tensor(uint8)", inputs[0].type)
        graph_outputs = [o.name for o in self.session.get_outputs()]
        self.output_names = list(config.output_names) or graph_outputs
        missing = [n for n in self.output_names if n not in graph_outputs]
        if missing:
            raise ValueError(f"{path}: outputs {missing} named in its config are not in the model (it has {graph_outputs})")

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        check_input_shape(batch, self.input_shape, self.name, channels_last=self.config.uint8_input)
        outputs = self.session.run(self.output_names, {self.input_name: batch})
        return [np.asarray(out) for out in outputs]


def _providers(device: str | None, available: list[str]) -> list[Any]:
    """ONNX Runtime execution providers for ``device`` (None: CUDA when available, then CPU)."""
    if device is None:
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    kind, _, index = device.lower().partition(":")
    if kind == "cpu" and not index:
        return ["CPUExecutionProvider"]
    if kind == "cuda" and (not index or index.isdigit()):
        if "CUDAExecutionProvider" not in available:
            raise ValueError(f"onnxruntime: device {device!r} needs the onnxruntime-gpu build; this one has {available}")
        return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]
    raise ValueError(f"onnxruntime: unknown device {device!r}; use cpu, cuda or cuda:N")
