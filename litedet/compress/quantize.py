"""Quantization of exported models: ONNX Runtime static/dynamic INT8, OpenVINO via NNCF, bf16.

- ``ort-static`` (default): post-training static INT8 (``onnxruntime.quantization.quantize_static``)
  in QDQ format with per-channel weights (Krishnamoorthi, "Quantizing deep convolutional networks
  for efficient inference: A whitepaper", 2018, §3: per-channel weight scales keep depthwise convs
  accurate), activations calibrated on real images pre-processed exactly as the model's sidecar
  says (letterbox, RGB, /255). ``exclude`` keeps named nodes in float (sensitive layers).
- ``ort-dynamic``: data-free weight-only INT8 (``quantize_dynamic``): weights stored as int8,
  activations quantized on the fly; needs no images, the simplest option.
- ``openvino``: NNCF post-training quantization of an OpenVINO model (``nncf.quantize``), and
  ``accuracy_control`` (``nncf.quantize_with_accuracy_control``): layers that cost more than
  ``max_drop`` mAP are reverted to float.
- bf16 needs no conversion: the OpenVINO backend runs any IR in bfloat16 on CPUs with AMX /
  AVX-512 BF16 when asked for ``precision="bf16"`` (``INFERENCE_PRECISION_HINT``), e.g.
  ``litedet bench --engine openvino --precision bf16``; ``litedet.compress.report`` measures it
  beside fp32 and INT8.

Every output keeps the model's sidecar (precision set, the quantization settings in
``extra["quantization"]``) so ``litedet val/detect/bench`` open it like any other export.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from litedet.config import ModelConfig, find_config, sidecar_path
from litedet.runtime.base import Backend

LOGGER = logging.getLogger(__name__)

METHODS = ("ort-static", "ort-dynamic", "openvino")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


# ------------------------------------------------------------------------------ calibration data


def calibration_images(source: str | os.PathLike, limit: int | None = None) -> list[Path]:
    """Image files for calibration: a folder of images (searched recursively), or a dataset YAML
    (its ``train`` split). Raises when none can be read, before any work starts."""
    import cv2

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"calibration source not found: {path}")
    if path.suffix in (".yaml", ".yml"):
        from litedet.data.datasets import load_data_config

        files = [sample.image for sample in load_data_config(path).load_split("train").samples]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        raise ValueError(f"calibration source {path} must be a folder of images or a dataset YAML")
    if limit is not None:
        if limit < 1:
            raise ValueError(f"calibration image count must be >= 1, got {limit}")
        files = files[:limit]
    readable = [f for f in files if cv2.imread(str(f)) is not None]
    if not readable:
        raise ValueError(f"calibration source {path} has no readable image ({len(files)} candidate files); "
                         f"give a folder with .jpg/.png images or a dataset YAML")
    if len(readable) < len(files):
        LOGGER.warning("%d of %d calibration files could not be read and are skipped", len(files) - len(readable), len(files))
    return readable


def calibration_batches(images: Sequence[Path], config: ModelConfig) -> Iterator[np.ndarray]:
    """Each image as a [1, 3, H, W] float32 batch, pre-processed per ``config`` (letterbox etc.)."""
    import cv2

    from litedet.data.transforms import preprocess

    for file in images:
        image = cv2.imread(str(file))
        if image is None:
            continue
        batch, _ = preprocess([image], config)
        yield batch


class ImageCalibrationReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over real images."""

    def __init__(self, images: Sequence[Path], config: ModelConfig, input_name: str) -> None:
        self.images = list(images)
        self.config = config
        self.input_name = input_name
        self._iterator: Iterator[np.ndarray] | None = None
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iterator, None)  # type: ignore[arg-type]
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._iterator = calibration_batches(self.images, self.config)

    def __len__(self) -> int:
        return len(self.images)


def _as_reader(images: Sequence[Path], config: ModelConfig, input_name: str):
    """An ``ImageCalibrationReader`` that also is a ``CalibrationDataReader`` subclass instance."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(ImageCalibrationReader, CalibrationDataReader):
        pass

    return Reader(images, config, input_name)


# ------------------------------------------------------------------------------------- results


@dataclass
class QuantizeResult:
    """The quantized file, its sidecar, sizes and settings."""

    output: Path
    method: str
    size_before: int
    size_after: int
    calibration_images: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dict(vars(self))
        data["output"] = str(self.output)
        return data


def model_files_size(path: str | os.PathLike) -> int:
    """Bytes of a model file and its companions (OpenVINO .bin, ncnn .bin, ONNX external data)."""
    path = Path(path)
    total = path.stat().st_size
    companions = {".xml": [".bin"], ".param": [".bin"]}.get(path.suffix, [])
    for suffix in companions:
        other = path.with_suffix(suffix)
        if other.exists():
            total += other.stat().st_size
    if path.suffix == ".onnx":
        data = path.with_name(path.name + ".data")
        if data.exists():
            total += data.stat().st_size
    return total


def _require_config(model: Path) -> ModelConfig:
    config = find_config(model)
    if config is None:
        raise FileNotFoundError(f"{model}: no model config beside it (expected {sidecar_path(model)}); "
                                f"export it with `litedet export` so the sidecar is written")
    return config


def _write_sidecar(config: ModelConfig, output: Path, precision: str, settings: dict[str, Any]) -> None:
    extra = dict(config.extra)
    extra["quantization"] = settings
    dataclasses.replace(config, precision=precision, extra=extra).save(sidecar_path(output))


def _check_output(model: Path, output: Path, suffix: str) -> None:
    if output.suffix != suffix:
        raise ValueError(f"output {output} must end in {suffix} for this method")
    if output.resolve() == model.resolve():
        raise ValueError(f"output {output} would overwrite the input model; choose another path")
    output.parent.mkdir(parents=True, exist_ok=True)


# ----------------------------------------------------------------------------- ONNX Runtime


def _onnx_input_name(model: Path) -> str:
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"{model}: expected one image input, found {inputs}")
    return inputs[0]


def quantize_onnx_static(
    model: str | os.PathLike,
    output: str | os.PathLike,
    calibration: str | os.PathLike,
    num_images: int = 64,
    per_channel: bool = True,
    calibrate_method: str = "minmax",
    exclude: Sequence[str] = (),
    reduce_range: bool = False,
) -> QuantizeResult:
    """Static INT8 (QDQ, signed int8 weights per channel, uint8 activations) of an ONNX model,
    calibrated on up to ``num_images`` images from ``calibration``.

    ``exclude`` lists ONNX node names to keep in float. ``reduce_range`` uses 7-bit weights
    (for CPUs without VNNI, where 8-bit products can saturate)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model, output = Path(model), Path(output)
    if not model.is_file():
        raise FileNotFoundError(f"ONNX model not found: {model}")
    if calibrate_method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, got {calibrate_method!r}")
    _check_output(model, output, ".onnx")
    config = _require_config(model)
    images = calibration_images(calibration, num_images)
    input_name = _onnx_input_name(model)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[calibrate_method]
    with tempfile.TemporaryDirectory(prefix="litedet-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference + graph optimisation first, as the ORT quantization guide recommends.
        quant_pre_process(str(model), str(prepared), skip_symbolic_shape=False)
        staged = Path(tmp) / output.name
        quantize_static(
            str(prepared), str(staged), _as_reader(images, config, input_name),
            quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method,
            nodes_to_exclude=list(exclude),
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        shutil.move(str(staged), output)
    settings = {"method": "ort-static", "format": "QDQ", "per_channel": per_channel, "weights": "int8",
                "activations": "uint8", "calibrate_method": calibrate_method, "calibration_images": len(images),
                "excluded_nodes": list(exclude), "reduce_range": reduce_range}
    _write_sidecar(config, output, "int8", settings)
    return QuantizeResult(output, "ort-static", model_files_size(model), model_files_size(output), len(images), settings)


def quantize_onnx_dynamic(model: str | os.PathLike, output: str | os.PathLike, per_channel: bool = True) -> QuantizeResult:
    """Data-free weight INT8 (``quantize_dynamic``): no calibration images needed."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model, output = Path(model), Path(output)
    if not model.is_file():
        raise FileNotFoundError(f"ONNX model not found: {model}")
    _check_output(model, output, ".onnx")
    config = _require_config(model)
    with tempfile.TemporaryDirectory(prefix="litedet-quant-") as tmp:
        staged = Path(tmp) / output.name
        quantize_dynamic(str(model), str(staged), per_channel=per_channel, weight_type=QuantType.QUInt8)
        shutil.move(str(staged), output)
    settings = {"method": "ort-dynamic", "weights": "uint8", "per_channel": per_channel, "activations": "dynamic"}
    _write_sidecar(config, output, "int8", settings)
    return QuantizeResult(output, "ort-dynamic", model_files_size(model), model_files_size(output), 0, settings)


# ------------------------------------------------------------------------------------ OpenVINO


def quantize_openvino(
    model: str | os.PathLike,
    output: str | os.PathLike,
    calibration: str | os.PathLike,
    num_images: int = 300,
    preset: str = "performance",
    accuracy_control: bool = False,
    max_drop: float = 0.01,
    val_images: str | os.PathLike | None = None,
    val_annotations: str | os.PathLike | None = None,
) -> QuantizeResult:
    """NNCF post-training INT8 of an OpenVINO IR (``.xml``) or ONNX model, written as IR.

    ``accuracy_control`` runs ``nncf.quantize_with_accuracy_control`` with COCO mAP50-95 on
    ``val_images`` + ``val_annotations`` (a COCO json) as the metric, reverting the layers that
    cost most to float until the drop is at most ``max_drop`` (absolute, e.g. 0.01 = 1 point)."""
    import nncf
    import openvino as ov

    model, output = Path(model), Path(output)
    if not model.is_file():
        raise FileNotFoundError(f"model not found: {model}")
    if model.suffix not in (".xml", ".onnx"):
        raise ValueError(f"OpenVINO quantization takes an .xml or .onnx model, got {model}")
    if preset not in ("performance", "mixed"):
        raise ValueError(f"preset must be 'performance' or 'mixed', got {preset!r}")
    if accuracy_control and (val_images is None or val_annotations is None):
        raise ValueError("accuracy control needs validation images and their COCO json (--val-images, --val-annotations)")
    if accuracy_control:
        for item in (val_images, val_annotations):
            if not Path(item).exists():  # type: ignore[arg-type]
                raise FileNotFoundError(f"validation data not found: {item}")
    _check_output(model, output, ".xml")
    config = _require_config(model)
    images = calibration_images(calibration, num_images)
    ov_model = ov.Core().read_model(str(model))
    calibration_set = nncf.Dataset(list(calibration_batches(images, config)))
    quant_preset = nncf.QuantizationPreset.PERFORMANCE if preset == "performance" else nncf.QuantizationPreset.MIXED
    settings: dict[str, Any] = {"method": "openvino", "tool": f"nncf {nncf.__version__}", "preset": preset,
                                "calibration_images": len(images), "accuracy_control": accuracy_control}
    if accuracy_control:
        from litedet.engine.evaluator import evaluate_coco

        def validate(compiled: Any, _items: Any) -> float:
            backend = _CompiledBackend(compiled, config)
            return float(evaluate_coco(backend, val_images, val_annotations, progress=False).map50_95)  # type: ignore[arg-type]

        validation_set = nncf.Dataset([0])  # the metric reads its own images (validate ignores the items)
        quantized = nncf.quantize_with_accuracy_control(
            ov_model, calibration_dataset=calibration_set, validation_dataset=validation_set,
            validation_fn=validate, max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE, preset=quant_preset,
            subset_size=len(images),
        )
        settings["max_drop"] = max_drop
    else:
        quantized = nncf.quantize(ov_model, calibration_set, preset=quant_preset, subset_size=len(images))
    ov.save_model(quantized, str(output), compress_to_fp16=False)
    _write_sidecar(config, output, "int8", settings)
    return QuantizeResult(output, "openvino", model_files_size(model), model_files_size(output), len(images), settings)


class _CompiledBackend(Backend):
    """A ``Backend`` over an already compiled OpenVINO model (the accuracy-control metric)."""

    name = "openvino"

    def __init__(self, compiled: Any, config: ModelConfig) -> None:
        super().__init__(config)
        self.compiled = compiled
        names = list(config.output_names)
        self.outputs = [compiled.output(n) for n in names] if names else list(compiled.outputs)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        results = self.compiled(np.ascontiguousarray(batch, dtype=np.float32))
        return [np.asarray(results[port], dtype=np.float32) for port in self.outputs]


def quantize(
    model: str | os.PathLike,
    output: str | os.PathLike,
    method: str = "ort-static",
    calibration: str | os.PathLike | None = None,
    num_images: int = 64,
    **options: Any,
) -> QuantizeResult:
    """Quantize an exported model by ``method`` (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}; choose one of {list(METHODS)}")
    if method in ("ort-static", "openvino") and calibration is None:
        raise ValueError(f"{method} quantization needs calibration images (--calib FOLDER or a dataset YAML)")
    if method == "ort-static":
        return quantize_onnx_static(model, output, calibration, num_images, **options)  # type: ignore[arg-type]
    if method == "ort-dynamic":
        return quantize_onnx_dynamic(model, output, **options)
    return quantize_openvino(model, output, calibration, num_images, **options)  # type: ignore[arg-type]
