"""Quantization-aware training (QAT) of a torch detector with ``torch.ao`` fake-quant, then export.

For the cases where post-training INT8 loses too much (Krishnamoorthi 2018, §3.2; Jacob et al.,
"Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
CVPR 2018, §3): BatchNorm is folded into the convs first (what the exported graph runs), then
every conv sees

- its input through a per-tensor affine uint8 ``FakeQuantize`` (moving-average min/max observer),
- its weight through a per-channel symmetric int8 ``FakeQuantize``,

so training adapts to the rounding (straight-through gradients). ``calibrate`` runs a few batches
to set the ranges (and keeps a few images for the export); ``finetune`` trains as usual.

``export_qat_onnx`` has two ways out:

- ``mode="fast"`` (default): the trained float weights are exported to ONNX and quantized by
  ``litedet.compress.quantize.quantize_onnx_static`` with its INT8 graph rewrites, the activation
  ranges QAT learned fixed on the conv inputs (``ranges``), the others calibrated on the kept
  images. The result is the same kind of graph as ``ort-static`` and runs as fast.
- ``mode="qdq"``: the TorchScript exporter writes each fake-quant as ``QuantizeLinear`` /
  ``DequantizeLinear`` around the convs only. ONNX Runtime cannot fuse a conv whose output is not
  quantized into one INT8 kernel, so this graph runs a mix of float and INT8 convs, SLOWER than
  fp32 (measured: see the README, section compress).
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver

LOGGER = logging.getLogger(__name__)

EXPORT_MODES = ("fast", "qdq")
KEEP_CALIBRATION_IMAGES = 32
# ONNX ops whose output range follows their input's in ORT's QDQ quantizer (a range fixed on
# their output would be ignored), so QAT ranges are not transplanted onto them.
PASS_THROUGH_OPS = ("MaxPool", "Slice", "Split", "Gather", "Reshape", "Transpose", "Resize", "Pad", "Squeeze",
                    "Unsqueeze", "Flatten", "AveragePool")


class FakeQuantConv2d(nn.Module):
    """A conv whose input and weight pass through fake quantization (uint8 / int8 per channel)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self.input_quant = FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                        dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=False)
        # int8 weights, symmetric (zero point 0), one scale per output channel; ONNX QDQ export needs
        # the full (-128, 127) range.
        self.weight_quant = FakeQuantize(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-128, quant_max=127,
                                         dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        return F.conv2d(self.input_quant(x), self.weight_quant(conv.weight), conv.bias, conv.stride, conv.padding,
                        conv.dilation, conv.groups)


def prepare_qat(model: nn.Module) -> nn.Module:
    """Fold BatchNorm (eval statistics) and wrap every Conv2d with fake quantization, in place."""
    from litedet.export.api import fuse_for_export

    model.eval()
    fuse_for_export(model)
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    if not targets:
        raise ValueError("QAT found no Conv2d layers to quantize")
    for name, conv in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, FakeQuantConv2d(conv))
    LOGGER.info("QAT: %d convs fake-quantized", len(targets))
    return model


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Run ``batches`` through the model with observers on (ranges only, no training). Keeps up
    to ``KEEP_CALIBRATION_IMAGES`` of the images on the model for ``export_qat_onnx``."""
    model.eval()
    model.apply(torch.ao.quantization.enable_observer)
    kept: list[np.ndarray] = []
    count = 0
    for batch in batches:
        model(batch)
        for image in batch[: max(KEEP_CALIBRATION_IMAGES - len(kept), 0)]:
            kept.append(image[None].detach().cpu().float().numpy())
        count += 1
    if count == 0:
        raise ValueError("QAT calibration got no batches")
    model._litedet_calibration = kept  # type: ignore[attr-defined]
    return count


def learned_ranges(model: nn.Module) -> dict[str, tuple[float, float]]:
    """The (min, max) each fake-quantized conv's input observer settled on, by module name."""
    ranges = {}
    for name, module in model.named_modules():
        if isinstance(module, FakeQuantConv2d):
            observer = module.input_quant.activation_post_process
            low, high = float(observer.min_val), float(observer.max_val)
            if np.isfinite(low) and np.isfinite(high) and high >= low:
                ranges[name] = (min(low, 0.0), max(high, 0.0))
    return ranges


def strip_fake_quant(model: nn.Module) -> nn.Module:
    """Replace every ``FakeQuantConv2d`` by its conv (the trained float weights), in place."""
    for name, module in list(model.named_modules()):
        if isinstance(module, FakeQuantConv2d):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.conv)
    return model


def freeze(model: nn.Module) -> nn.Module:
    """Stop updating the quantization ranges (before export or evaluation)."""
    model.apply(torch.ao.quantization.disable_observer)
    return model.eval()


def export_qat_onnx(
    model: nn.Module,
    out_dir: str | os.PathLike,
    stem: str = "model",
    mode: str = "fast",
    calibration: str | os.PathLike | Sequence[np.ndarray] | None = None,
    num_images: int = 64,
) -> Path:
    """Export a fake-quantized detector to an INT8 ONNX model with its sidecar (precision int8).

    ``mode="fast"`` (default): float export of the trained weights, then ORT static INT8 with
    the graph rewrites and QAT's learned conv-input ranges; the other tensors (conv outputs that
    feed no conv, e.g. the heads) are calibrated on ``calibration``: a folder of images or a
    dataset YAML (up to ``num_images``, pre-processed as the model's config says: letterbox, no
    augmentation), or ready [1, 3, H, W] arrays; default the images ``calibrate`` kept, which in
    a training loop are augmented (mosaic) and gave ranges that cost 1.7 mAP points on coco256
    against clean letterboxed images, so pass the dataset when there is one.
    ``mode="qdq"``: the fake-quant nodes exported as they are (see the module docstring: slow on
    ORT)."""
    if mode not in EXPORT_MODES:
        raise ValueError(f"QAT export mode must be one of {EXPORT_MODES}, got {mode!r}")
    from litedet.config import find_config
    from litedet.export.api import export_model

    freeze(model)
    out_dir = Path(out_dir)
    if mode == "qdq":
        result = export_model(model, "onnx", out_dir, stem=stem)
        config = find_config(result.path)
        if config is not None:
            config.precision = "int8"
            config.extra = {**config.extra, "quantization": {"method": "qat", "export": "qdq", "format": "QDQ",
                                                             "weights": "int8 per channel", "activations": "uint8 per tensor"}}
            config.save(Path(result.path).with_suffix(".json"))
        return Path(result.path)
    return _export_fast(model, out_dir, stem, calibration, num_images)


def _weight_key(weight: np.ndarray) -> bytes:
    """A conv's weights as a key that survives a permutation of its rows and columns."""
    return np.sort(weight.astype(np.float32).ravel()).tobytes()


def _export_fast(model: nn.Module, out_dir: Path, stem: str, calibration: str | os.PathLike | Sequence[np.ndarray] | None,
                 num_images: int) -> Path:
    import onnx
    from onnx import numpy_helper

    from litedet.compress.quantize import quantize_onnx_static
    from litedet.config import find_config
    from litedet.export.api import export_model

    if isinstance(calibration, (str, os.PathLike)):
        calib: str | os.PathLike | list[np.ndarray] = calibration
    else:
        calib = [np.asarray(a, dtype=np.float32) for a in
                  (calibration if calibration is not None else getattr(model, "_litedet_calibration", []))]
        if not calib:
            raise ValueError("QAT fast export needs calibration images: run qat.calibrate first or pass calibration=")
        num_images = len(calib)
    ranges_by_module = learned_ranges(model)
    float_model = strip_fake_quant(copy.deepcopy(model)).eval()
    # Matched by their weight values, sorted: the export may reorder a conv's rows and columns
    # (ShuffleNetV2 shuffles folded into the weights) but not change its input's range.
    by_weight = {_weight_key(module.weight.detach().cpu().numpy()): name
                 for name, module in float_model.named_modules() if isinstance(module, nn.Conv2d) and name in ranges_by_module}
    with tempfile.TemporaryDirectory(prefix="litedet-qat-") as tmp:
        exported = Path(export_model(float_model, "onnx", tmp, stem=stem).path)
        graph = onnx.load(str(exported)).graph
        producer = {out: node for node in graph.node for out in node.output}
        weights = {init.name: init for init in graph.initializer}
        ranges: dict[str, tuple[float, float]] = {}
        matched = 0
        for node in graph.node:
            if node.op_type != "Conv" or node.input[1] not in weights:
                continue
            name = by_weight.get(_weight_key(numpy_helper.to_array(weights[node.input[1]])))
            if name is None:
                continue
            matched += 1
            tensor = node.input[0]
            source = producer.get(tensor)
            if source is None or source.op_type in PASS_THROUGH_OPS:
                continue  # the image, or a tensor whose range ORT takes from its input
            low, high = ranges_by_module[name]
            if tensor in ranges:
                low, high = min(low, ranges[tensor][0]), max(high, ranges[tensor][1])
            ranges[tensor] = (low, high)
        LOGGER.info("QAT export: %d of %d convs matched, %d activation ranges fixed from QAT", matched,
                    len(ranges_by_module), len(ranges))
        output = out_dir / f"{stem}.onnx"
        result = quantize_onnx_static(exported, output, calib, num_images=num_images, ranges=ranges)
    config = find_config(result.output)
    if config is not None:
        settings = dict(config.extra.get("quantization", {}))
        settings.update({"method": "qat", "export": "fast", "qat_ranges_fixed": len(ranges),
                         "qat_convs_matched": matched})
        config.extra = {**config.extra, "quantization": settings}
        config.save(output.with_suffix(".json"))
    return result.output
