"""Import published ncnn models (``.param`` text + ``.bin`` weights) into litedet detectors.

The ``.param`` format (ncnn wiki, "param and model file structure"): a magic line ``7767517``, a
line ``layer_count blob_count``, then one line per layer::

    type name input_count output_count inputs... outputs... key=value...

where an array value is written with key ``-23300 - id`` as ``count,v1,v2,...``.

The ``.bin`` holds the weights of the layers in ``.param`` order, with no names. For a convolution:
the weight blob (``weight_data_size`` values, stored with a 4-byte tag: ``0x01306B47`` fp16,
``0`` fp32, ``0x0002C056`` fp32, ``0x000D4B38`` int8, any other non-zero tag a 256-entry float
table + uint8 indices; fp16/int8/table data padded to 4 bytes), then ``num_output`` fp32 biases
without a tag when ``bias_term``. BatchNorm is already folded into the conv.

Weights are mapped onto a litedet model by structural order: the i-th conv of the graph goes to the
i-th ``nn.Conv2d`` our model runs, after checking that kind, shape, groups and stride agree; the
first disagreement is reported with both shapes. Folded biases go into the following BatchNorm
set to the identity (weight 1, mean 0, var 1 - eps), so the model stays trainable.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from litedet.errors import UserError

logger = logging.getLogger(__name__)

NCNN_MAGIC = 7767517
_TAG_FP16 = 0x01306B47
_TAG_INT8 = 0x000D4B38
_TAG_FP32_SCALED = 0x0002C056

ParamValue = Union[int, float, list[Union[int, float]]]

# Layers whose weights this importer reads (the convolutions of YOLOv5-Lite-style graphs).
_CONV_TYPES = ("Convolution", "ConvolutionDepthWise")
# Layers that carry weights in the .bin but that no litedet model maps to; refusing them keeps the
# .bin reader from silently losing its place.
_UNSUPPORTED_WEIGHT_TYPES = (
    "InnerProduct", "BatchNorm", "Scale", "PReLU", "Deconvolution", "DeconvolutionDepthWise",
    "Convolution1D", "Convolution3D", "ConvolutionDepthWise1D", "ConvolutionDepthWise3D",
    "Embed", "MemoryData", "LayerNorm", "GroupNorm", "InstanceNorm", "MultiHeadAttention",
    "Gemm", "LSTM", "GRU", "RNN", "Bias", "Normalize",
)


@dataclass
class NcnnLayer:
    """One line of a ``.param`` file, plus its weights once the ``.bin`` is read."""

    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, ParamValue]
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    storage: str = ""

    def param(self, key: int, default: ParamValue) -> ParamValue:
        return self.params.get(key, default)

    @property
    def is_conv(self) -> bool:
        return self.type in _CONV_TYPES

    @property
    def conv_shape(self) -> tuple[int, int, int, int]:
        """(out, in / groups, kh, kw) of a convolution layer."""
        out = int(self.param(0, 0))
        kw = int(self.param(1, 0))
        kh = int(self.param(11, kw))
        size = int(self.param(6, 0))
        if out <= 0 or kw <= 0 or kh <= 0 or size % (out * kh * kw):
            raise ValueError(
                f"ncnn layer {self.name!r} ({self.type}): inconsistent num_output={out}, kernel={kh}x{kw}, "
                f"weight_data_size={size}"
            )
        return out, size // (out * kh * kw), kh, kw

    @property
    def groups(self) -> int:
        return int(self.param(7, 1)) if self.type == "ConvolutionDepthWise" else 1

    @property
    def stride(self) -> tuple[int, int]:
        sw = int(self.param(3, 1))
        return int(self.param(13, sw)), sw


@dataclass
class NcnnGraph:
    """A parsed ncnn model: layers in file order, weights attached to the conv layers."""

    param_path: Path
    bin_path: Path | None
    layers: list[NcnnLayer] = field(default_factory=list)
    storage: set[str] = field(default_factory=set)

    @property
    def conv_layers(self) -> list[NcnnLayer]:
        return [layer for layer in self.layers if layer.is_conv]

    @property
    def input_names(self) -> list[str]:
        return [layer.outputs[0] for layer in self.layers if layer.type == "Input"]

    @property
    def output_names(self) -> list[str]:
        """Blobs produced and never consumed, in file order (the graph outputs)."""
        consumed = {blob for layer in self.layers for blob in layer.inputs}
        return [blob for layer in self.layers for blob in layer.outputs if blob not in consumed]


def _not_a_model(path: Path, why: str) -> UserError:
    return UserError(f"{path}: not a litedet/ncnn model ({why})")


def _parse_value(text: str, path: Path, line_no: int) -> ParamValue:
    try:
        if any(c in text for c in ".eE") and not text.lstrip("-").isdigit():
            return float(text)
        return int(text)
    except ValueError:
        raise _not_a_model(path, f"line {line_no}: bad parameter value {text[:20]!r}") from None


def read_ncnn_param(path: str | os.PathLike) -> list[NcnnLayer]:
    """Parse an ncnn ``.param`` text file into layers (no weights)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ncnn param file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise _not_a_model(path, "binary data where an ncnn .param text file was expected") from None
    # (physical line number, text) of the non-blank lines: ncnn skips blank lines, errors name the file's line
    numbered = [(no, line.strip()) for no, line in enumerate(text.splitlines(), start=1) if line.strip()]
    lines = [line for _, line in numbered]
    if not lines or lines[0] != str(NCNN_MAGIC):
        first = lines[0][:40] if lines else ""
        raise _not_a_model(path, f"first line {first!r}, expected the ncnn magic {NCNN_MAGIC}")
    try:
        layer_count, _blob_count = (int(v) for v in lines[1].split())
    except (IndexError, ValueError):
        header_no = numbered[1][0] if len(numbered) > 1 else 2
        raise _not_a_model(path, f"line {header_no} must be 'layer_count blob_count'") from None
    layers: list[NcnnLayer] = []
    for line_no, line in numbered[2:]:
        fields = line.split()
        try:
            layer_type, name, n_in, n_out = fields[0], fields[1], int(fields[2]), int(fields[3])
        except (IndexError, ValueError):
            raise _not_a_model(path, f"line {line_no}: expected 'type name inputs outputs ...', got {line[:60]!r}") from None
        blobs = fields[4 : 4 + n_in + n_out]
        if n_in < 0 or n_out < 0:
            raise _not_a_model(path, f"line {line_no}: layer {name!r} has a negative blob count {n_in} {n_out}")
        if len(blobs) != n_in + n_out:
            raise _not_a_model(path, f"line {line_no}: layer {name!r} lists fewer blobs than {n_in}+{n_out}")
        params: dict[int, ParamValue] = {}
        for item in fields[4 + n_in + n_out :]:
            key_text, sep, value_text = item.partition("=")
            if not sep:
                raise _not_a_model(path, f"line {line_no}: bad parameter {item!r} (expected key=value)")
            try:
                key = int(key_text) if key_text.lstrip("-").isascii() else None
            except ValueError:
                key = None
            if key is None:
                raise _not_a_model(path, f"line {line_no}: bad parameter key {key_text[:20]!r}")
            if key <= -23300:  # array: -23300 - id = count,v1,v2,...
                values = [_parse_value(v, path, line_no) for v in value_text.split(",")]
                params[-key - 23300] = values[1:]
            else:
                params[key] = _parse_value(value_text, path, line_no)
        layers.append(NcnnLayer(layer_type, name, blobs[:n_in], blobs[n_in:], params))
    if len(layers) != layer_count:
        raise _not_a_model(path, f"header says {layer_count} layers, file has {len(layers)}")
    return layers


class _BinReader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = path.read_bytes()
        self.offset = 0

    def take(self, size: int, what: str) -> bytes:
        end = self.offset + size
        if end > len(self.data):
            raise ValueError(
                f"{self.path}: truncated ncnn weights: {what} needs {size} bytes at offset {self.offset}, "
                f"the file has {len(self.data)} bytes (does the .bin belong to this .param?)"
            )
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def floats(self, count: int, what: str) -> np.ndarray:
        return np.frombuffer(self.take(4 * count, what), dtype="<f4").astype(np.float32)

    def tagged(self, count: int, what: str) -> tuple[np.ndarray, str]:
        """A weight blob with its storage tag (ncnn ``ModelBin::load(w, 0)``)."""
        tag_bytes = self.take(4, what)
        tag = int.from_bytes(tag_bytes, "little")
        if tag == _TAG_FP16:
            raw = self.take(_align4(2 * count), what)
            return np.frombuffer(raw[: 2 * count], dtype="<f2").astype(np.float32), "fp16"
        if tag == _TAG_INT8:
            raise ValueError(f"{self.path}: {what} is int8-quantized ncnn weights; import an fp16/fp32 model")
        if tag in (0, _TAG_FP32_SCALED):
            return self.floats(count, what), "fp32"
        # Any other tag: a 256-entry float table and one uint8 index per value.
        table = self.floats(256, what)
        indices = np.frombuffer(self.take(_align4(count), what)[:count], dtype=np.uint8)
        return table[indices], "table"


def _align4(size: int) -> int:
    return (size + 3) // 4 * 4


def read_ncnn_model(param_path: str | os.PathLike, bin_path: str | os.PathLike | None = None) -> NcnnGraph:
    """Parse ``.param`` and read the conv weights from ``.bin`` (default: beside the ``.param``,
    ``X.param`` -> ``X.bin``)."""
    param_path = Path(param_path)
    layers = read_ncnn_param(param_path)
    bin_file = Path(bin_path) if bin_path is not None else param_path.with_suffix(".bin")
    if not bin_file.is_file():
        raise FileNotFoundError(f"ncnn weights not found: {bin_file} (expected beside {param_path.name})")
    reader = _BinReader(bin_file)
    graph = NcnnGraph(param_path, bin_file, layers)
    for layer in layers:
        if layer.type in _UNSUPPORTED_WEIGHT_TYPES:
            raise ValueError(
                f"{param_path}: layer {layer.name!r} of type {layer.type} has weights litedet cannot import; "
                "only Convolution/ConvolutionDepthWise graphs (YOLOv5-Lite style) are supported"
            )
        if not layer.is_conv:
            continue
        if int(layer.param(8, 0)):
            raise ValueError(f"{param_path}: layer {layer.name!r} is int8-quantized; import an fp16/fp32 model")
        if int(layer.param(19, 0)):
            raise ValueError(f"{param_path}: layer {layer.name!r} takes its weights as an input (dynamic weight)")
        shape = layer.conv_shape
        weight, storage = reader.tagged(int(np.prod(shape)), f"layer {layer.name!r} weights")
        layer.weight = weight.reshape(shape)
        layer.storage = storage
        graph.storage.add(storage)
        if int(layer.param(5, 0)):
            layer.bias = reader.floats(shape[0], f"layer {layer.name!r} bias")
    if reader.offset != len(reader.data):
        raise ValueError(
            f"{bin_file}: {len(reader.data) - reader.offset} bytes left after the last layer of {param_path.name}; "
            "the .bin does not belong to this .param"
        )
    return graph


def _conv_bn_pairs(model: nn.Module) -> dict[nn.Conv2d, nn.BatchNorm2d]:
    """Each conv that is directly followed by a BatchNorm in a Sequential (ConvBnAct, branches)."""
    pairs: dict[nn.Conv2d, nn.BatchNorm2d] = {}
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            children = list(module.children())
            for first, second in zip(children, children[1:]):
                if isinstance(first, nn.Conv2d) and isinstance(second, nn.BatchNorm2d):
                    pairs[first] = second
    return pairs


def convs_in_execution_order(model: nn.Module, input_size: tuple[int, int] | None = None) -> list[tuple[str, nn.Conv2d]]:
    """(qualified name, conv) for every ``nn.Conv2d`` in the order a forward pass runs them."""
    names = {module: name for name, module in model.named_modules()}
    order: list[nn.Conv2d] = []
    seen: set[int] = set()

    def hook(module: nn.Module, _inputs: Any, _output: Any) -> None:
        if id(module) not in seen:
            seen.add(id(module))
            order.append(module)  # type: ignore[arg-type]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    divisor = int(getattr(getattr(model, "backbone", None), "min_input_divisor", 32))
    size = input_size or (2 * divisor, 2 * divisor)
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, 3, *size, dtype=param.dtype, device=param.device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return [(names[m], m) for m in order]


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(v) for v in shape) + "]"


@torch.no_grad()
def load_ncnn_weights(model: nn.Module, graph: NcnnGraph, arch: str = "the model") -> None:
    """Copy the graph's conv weights onto ``model`` by structural order; raise ValueError naming
    the first mismatched layer (ncnn name and shape vs our module name and shape)."""
    ours = convs_in_execution_order(model)
    theirs = graph.conv_layers
    bn_of = _conv_bn_pairs(model)
    for index, (layer, (name, conv)) in enumerate(zip(theirs, ours)):
        their_shape = tuple(layer.weight.shape) if layer.weight is not None else layer.conv_shape
        our_shape = tuple(conv.weight.shape)
        problem = ""
        if their_shape != our_shape:
            problem = "shape"
        elif layer.groups != conv.groups:
            problem = f"groups {layer.groups} vs {conv.groups}"
        elif layer.stride != tuple(conv.stride):
            problem = f"stride {layer.stride} vs {tuple(conv.stride)}"
        if problem:
            detail = "" if problem == "shape" else f" ({problem})"
            raise ValueError(
                f"{graph.param_path.name} does not fit {arch}: conv #{index} ncnn layer {layer.name!r} "
                f"({layer.type}) has weight {_shape_text(their_shape)}, {arch} expects {name} "
                f"{_shape_text(our_shape)}{detail}"
            )
        conv.weight.copy_(torch.from_numpy(layer.weight.reshape(our_shape)))
        bias = torch.from_numpy(layer.bias) if layer.bias is not None else torch.zeros(our_shape[0])
        if conv in bn_of:
            bn = bn_of[conv]
            if conv.bias is not None:
                conv.bias.zero_()
            # Identity BatchNorm carrying the folded bias: (x - 0) / sqrt((1 - eps) + eps) * 1 + b.
            bn.weight.fill_(1.0)
            bn.bias.copy_(bias)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
        elif conv.bias is not None:
            conv.bias.copy_(bias)
        elif layer.bias is not None and np.any(layer.bias):
            raise ValueError(
                f"{graph.param_path.name} does not fit {arch}: ncnn layer {layer.name!r} has a bias but "
                f"{name} has neither a bias nor a BatchNorm"
            )
    if len(theirs) != len(ours):
        if len(theirs) > len(ours):
            extra = theirs[len(ours)]
            raise ValueError(
                f"{graph.param_path.name} does not fit {arch}: the graph has {len(theirs)} convs, {arch} has "
                f"{len(ours)}; first unmatched ncnn layer {extra.name!r} ({extra.type}) weight "
                f"{_shape_text(tuple(extra.weight.shape))}"
            )
        name, conv = ours[len(theirs)]
        raise ValueError(
            f"{graph.param_path.name} does not fit {arch}: the graph has {len(theirs)} convs, {arch} has "
            f"{len(ours)}; first unmatched layer of {arch}: {name} {_shape_text(tuple(conv.weight.shape))}"
        )


def head_num_classes(graph: NcnnGraph, num_anchors: int = 3, levels: int = 3) -> int | None:
    """Classes predicted by a YOLO graph, from its last conv widths (``na * (5 + nc)``)."""
    convs = graph.conv_layers[-levels:]
    widths = {layer.conv_shape[0] for layer in convs}
    if len(widths) != 1:
        return None
    width = widths.pop()
    if width % num_anchors or width // num_anchors <= 5:
        return None
    return width // num_anchors - 5


def import_ncnn(
    param_path: str | os.PathLike,
    arch: str,
    bin_path: str | os.PathLike | None = None,
    num_classes: int | None = None,
    names: list[str] | None = None,
    input_size: int | None = None,
) -> nn.Module:
    """Build detector ``arch`` from the registry and fill it with the weights of an ncnn model.

    ``num_classes`` defaults to what the graph's head predicts; class names default to COCO for 80.
    The returned model is in eval mode, with ``source`` recorded on it for the config sidecar.
    """
    from litedet.models.registry import create_model, model_kind

    if model_kind(arch) != "detector":
        raise ValueError(f"{arch!r} is a backbone, not a detector; pick one of `litedet models --kind detector`")
    graph = read_ncnn_model(param_path, bin_path)
    if num_classes is None:
        num_classes = head_num_classes(graph)
    model = create_model(arch, num_classes=num_classes, names=names, input_size=input_size)
    load_ncnn_weights(model, graph, arch)
    model.eval()
    model.source = f"ncnn:{Path(param_path).name} ({'/'.join(sorted(graph.storage))} storage)"
    logger.info("imported %d conv layers from %s into %s", len(graph.conv_layers), param_path, arch)
    return model


def import_ncnn_weights(
    param_path: str | os.PathLike,
    arch: str,
    output: str | os.PathLike | None = None,
    bin_path: str | os.PathLike | None = None,
    num_classes: int | None = None,
    names: list[str] | None = None,
    input_size: int | None = None,
) -> tuple[Path, Any]:
    """Import an ncnn model into ``arch`` and write ``output`` (.safetensors) plus its sidecar
    (input size, class names, anchors, preprocessing RGB/255 letterbox pad 114).

    ``output`` defaults to ``<name>.safetensors`` in the current folder (``v5lite-s.ncnn.param``
    -> ``v5lite-s.safetensors``). Returns (weights path, ModelConfig).
    """
    from litedet.models.checkpoint import save_checkpoint_weights

    param_path = Path(param_path)
    if output is None:
        stem = param_path.name.removesuffix(".param").removesuffix(".ncnn")
        output = Path.cwd() / f"{stem}.safetensors"
    model = import_ncnn(param_path, arch, bin_path, num_classes=num_classes, names=names, input_size=input_size)
    config = model.config
    path = save_checkpoint_weights(model, output, config)
    return path, config
