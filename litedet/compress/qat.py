"""Quantization-aware training (QAT) of a torch detector with ``torch.ao`` fake-quant, then export.

For the cases where post-training INT8 loses too much (Krishnamoorthi 2018, §3.2; Jacob et al.,
"Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
CVPR 2018, §3): BatchNorm is folded into the convs first (what the exported graph runs), then
every conv sees

- its input through a per-tensor affine uint8 ``FakeQuantize`` (moving-average min/max observer),
- its weight through a per-channel symmetric int8 ``FakeQuantize``,

so training adapts to the rounding (straight-through gradients). ``calibrate`` runs a few batches
to set the ranges; ``finetune`` trains as usual; ``export_qat_onnx`` freezes the observers and
exports with ``litedet.export.export_model``: the TorchScript exporter writes each fake-quant as
``QuantizeLinear``/``DequantizeLinear`` (a QDQ graph, like ``ort-static``), which ONNX Runtime runs
with INT8 kernels.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver

LOGGER = logging.getLogger(__name__)


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
    """Run ``batches`` through the model with observers on (ranges only, no training)."""
    model.eval()
    model.apply(torch.ao.quantization.enable_observer)
    count = 0
    for batch in batches:
        model(batch)
        count += 1
    if count == 0:
        raise ValueError("QAT calibration got no batches")
    return count


def freeze(model: nn.Module) -> nn.Module:
    """Stop updating the quantization ranges (before export or evaluation)."""
    model.apply(torch.ao.quantization.disable_observer)
    return model.eval()


def export_qat_onnx(model: nn.Module, out_dir: str | os.PathLike, stem: str = "model") -> Path:
    """Export a fake-quantized detector to a QDQ ONNX model with its sidecar (precision int8)."""
    from litedet.config import find_config
    from litedet.export.api import export_model

    freeze(model)
    result = export_model(model, "onnx", out_dir, stem=stem)
    config = find_config(result.path)
    if config is not None:
        config.precision = "int8"
        config.extra = {**config.extra, "quantization": {"method": "qat", "format": "QDQ", "weights": "int8 per channel",
                                                         "activations": "uint8 per tensor"}}
        config.save(Path(result.path).with_suffix(".json"))
    return Path(result.path)
