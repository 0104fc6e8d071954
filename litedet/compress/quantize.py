"""Quantization of exported models: ONNX Runtime static/dynamic INT8, OpenVINO via NNCF, bf16.

- ``ort-static`` (default): post-training static INT8 (``onnxruntime.quantization.quantize_static``)
  in QDQ format with per-channel weights (Krishnamoorthi, "Quantizing deep convolutional networks
  for efficient inference: A whitepaper", 2018, §3: per-channel weight scales keep depthwise convs
  accurate), activations calibrated on real images pre-processed exactly as the model's sidecar
  says (letterbox, RGB, /255). ``exclude`` keeps named nodes in float (sensitive layers).
  Before quantizing, ``rewrite_for_int8`` makes exact (output-identical) changes to the float
  graph so that ONNX Runtime's fast INT8 kernels apply (see its docstring; ``rewrite=False``
  quantizes the exported graph as it is, the behaviour before these rewrites).
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

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from litedet.config import ModelConfig, find_config, sidecar_path
from litedet.export.onnx_graph import OnnxGraph, drop_unused
from litedet.runtime.base import Backend

LOGGER = logging.getLogger(__name__)

METHODS = ("ort-static", "ort-dynamic", "openvino")
# Raised whenever ``quantize_onnx_static`` starts writing a different INT8 graph for the same input
# (ranges, rewrites, its two ends): ``litedet tune``'s cached INT8 models are keyed by it.
QUANTIZE_REVISION = 2
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


class BatchReader:
    """``onnxruntime.quantization.CalibrationDataReader`` protocol over input batches that
    ``make_batches()`` yields afresh at every rewind (pre-processed real images, or ready arrays)."""

    def __init__(self, make_batches: Callable[[], Iterator[np.ndarray]], count: int, input_name: str) -> None:
        self.make_batches = make_batches
        self.count = count
        self.input_name = input_name
        self._iterator: Iterator[np.ndarray] | None = None
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iterator, None)  # type: ignore[arg-type]
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._iterator = iter(self.make_batches())

    def __len__(self) -> int:
        return self.count


def _as_reader(make_batches: Callable[[], Iterator[np.ndarray]], count: int, input_name: str):
    """A ``BatchReader`` that also is a ``CalibrationDataReader`` subclass instance."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(BatchReader, CalibrationDataReader):
        pass

    return Reader(make_batches, count, input_name)


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


# ------------------------------------------------------------ INT8 graph rewrites (ONNX Runtime)
#
# Why the plain QDQ model of v5lite-s ran slower than fp32 on ORT (measured with
# SessionOptions.enable_profiling, 1 thread): MLAS has fast AVX2/AVX512-VNNI "symmetric"
# int8 conv kernels (MlasConvSym*, used when weights are int8 with zero point 0) but takes them
# only when a depthwise conv has a multiple of 16 channels and a dense conv has input and output
# channels that are multiples of 4 (at least 16 outputs); otherwise it falls back to a generic
# im2col/indirection path. ShuffleNetV2-style widths (60, 116, 232 channels), the 3-channel stem
# conv and the 255-channel heads all miss this: the depthwise convs ran 3.3x SLOWER in INT8
# than in fp32 and the stem 2.3x slower. In addition ORT's NHWC layout pass cannot push its
# layout transposes through the Reshape-Transpose-Reshape channel shuffle, leaving 5-D uint8
# transposes (2.5 ms for one of them). The exporter now folds the shuffles into the weights (no
# transpose, no gather: ``litedet.layers.shuffle``); the rewrites below fix the kernel choice
# without changing what the model computes: zero channels are added (their weights are zero, so
# every real output is bit-identical).

SHUFFLE_PERM = [0, 2, 1, 3, 4]
ELEMENTWISE_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu")


@dataclass
class Int8Rewrites:
    """What ``rewrite_for_int8`` changed (counts), and the nodes it added that must stay float."""

    depthwise_padded: int = 0
    outputs_padded: int = 0
    inputs_padded: int = 0
    keep_float: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"depthwise_padded_to_16": self.depthwise_padded,
                "conv_outputs_padded_to_4": self.outputs_padded, "image_channels_padded_to_4": self.inputs_padded}


def _attribute(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _set_attribute(node: Any, name: str, value: Any) -> None:
    from onnx import helper

    for attr in list(node.attribute):
        if attr.name == name:
            node.attribute.remove(attr)
    node.attribute.append(helper.make_attribute(name, value))


def _pad_axis(array: np.ndarray, axis: int, count: int) -> np.ndarray:
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, count)
    return np.pad(array, widths)


def _insert_before(graph: Any, anchor: Any, nodes: Sequence[Any]) -> None:
    position = list(graph.node).index(anchor)
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)


def _count_channel_shuffles(graph: Any) -> int:
    """Reshape -> Transpose(0, 2, 1, 3, 4) -> Reshape channel shuffles left in a graph. litedet's
    exporter folds them into the weights (``litedet.layers.shuffle.fold_shuffle_stage``); a graph
    exported elsewhere may still carry them."""
    return sum(1 for node in graph.node if node.op_type == "Transpose" and list(_attribute(node, "perm", [])) == SHUFFLE_PERM)


def _is_depthwise(g: OnnxGraph, node: Any) -> bool:
    weight = g.array(node.input[1]) if len(node.input) > 1 else None
    return (node.op_type == "Conv" and weight is not None and weight.ndim == 4 and weight.shape[1] == 1
            and _attribute(node, "group", 1) == weight.shape[0] > 1)


def _pad_depthwise(graph: Any, align: int) -> int:
    """Conv -> [Relu/Clip/LeakyRelu] -> depthwise Conv -> Conv with C % align != 0 channels in the
    middle: C is padded with zero channels (zero output filters and bias in the first conv and
    the depthwise one, zero input weights in the last), so every real value is unchanged."""
    g = OnnxGraph(graph)
    count = 0
    for depthwise in list(graph.node):
        if not _is_depthwise(g, depthwise):
            continue
        channels = g.array(depthwise.input[1]).shape[0]  # type: ignore[union-attr]
        pad = -channels % align
        if pad == 0 or not g.private_weights(depthwise):
            continue
        tensor, between = depthwise.input[0], depthwise
        activation = g.producer.get(tensor)
        if activation is not None and activation.op_type in ELEMENTWISE_ACTIVATIONS and g.only_consumer(tensor, depthwise):
            between, tensor = activation, activation.input[0]
        producer = g.producer.get(tensor)
        users = g.consumers.get(depthwise.output[0], [])
        if (producer is None or producer.op_type != "Conv" or _attribute(producer, "group", 1) != 1
                or not g.only_consumer(tensor, between) or not g.private_weights(producer)
                or len(users) != 1 or users[0].op_type != "Conv" or _attribute(users[0], "group", 1) != 1
                or users[0].input[0] != depthwise.output[0] or depthwise.output[0] in g.outputs
                or not g.private_weights(users[0])):
            continue
        consumer = users[0]
        for node in (producer, depthwise):
            for name in node.input[1:3]:
                if name:
                    g.set_array(name, _pad_axis(g.array(name), 0, pad))  # type: ignore[arg-type]
        g.set_array(consumer.input[1], _pad_axis(g.array(consumer.input[1]), 1, pad))  # type: ignore[arg-type]
        _set_attribute(depthwise, "group", channels + pad)
        count += 1
    return count


def _pad_conv_outputs(graph: Any, align: int, minimum: int = 16) -> int:
    """Dense convs with C_out % align != 0 (and C_out >= minimum): zero output channels are added
    and a Slice gives back the first C_out, so consumers see the same tensor."""
    from onnx import helper

    g = OnnxGraph(graph)
    count = 0
    for conv in list(graph.node):
        if conv.op_type != "Conv" or _attribute(conv, "group", 1) != 1 or not g.private_weights(conv):
            continue
        weight = g.array(conv.input[1])
        if weight is None or weight.ndim != 4 or weight.shape[0] % align == 0 or weight.shape[0] < minimum:
            continue
        channels, pad = weight.shape[0], -weight.shape[0] % align
        for name in conv.input[1:3]:
            if name:
                g.set_array(name, _pad_axis(g.array(name), 0, pad))  # type: ignore[arg-type]
        original = conv.output[0]
        base = (conv.name or original) + "_unpad"
        conv.output[0] = base + "_in"
        starts = g.add_initializer(base + "_starts", np.array([0], np.int64))
        ends = g.add_initializer(base + "_ends", np.array([channels], np.int64))
        axes = g.add_initializer(base + "_axes", np.array([1], np.int64))
        position = list(graph.node).index(conv) + 1
        graph.node.insert(position, helper.make_node("Slice", [base + "_in", starts, ends, axes], [original], name=base))
        count += 1
    return count


def _pad_image_channels(graph: Any, align: int) -> list[str]:
    """Convs reading the image input with C_in % align != 0 (RGB: 3): the image gets zero
    channels (a Pad node, kept in float so the quantized tensor already has ``align`` channels)
    and the conv zero input weights. Returns the Pad node names."""
    from onnx import helper

    g = OnnxGraph(graph)
    inputs = [i.name for i in graph.input if i.name not in g.initializers]
    pads: list[str] = []
    # Only a conv reading a graph input: in a ``--uint8-input`` export the stem conv reads the
    # image through Transpose and Cast, and ONNX Runtime's layout optimizer pushes that Transpose
    # through a Pad placed there, making it a pad of the innermost NHWC axis: 3.9 ms for a
    # 416x416 image, more than the 4-channel stem conv saves (v5lite-s@416 INT8: 14.8 ms with
    # that Pad, 12.9 ms without, 2 threads).
    for image in inputs:
        for conv in list(g.consumers.get(image, [])):
            if conv.op_type != "Conv" or _attribute(conv, "group", 1) != 1 or conv.input[0] != image or not g.private_weights(conv):
                continue
            weight = g.array(conv.input[1])
            if weight is None or weight.ndim != 4 or weight.shape[1] % align == 0:
                continue
            pad = -weight.shape[1] % align
            g.set_array(conv.input[1], _pad_axis(weight, 1, pad))
            name = (conv.name or conv.output[0]) + "_pad_channels"
            amounts = g.add_initializer(name + "_pads", np.array([0, 0, 0, 0, 0, pad, 0, 0], np.int64))
            _insert_before(graph, conv, [helper.make_node("Pad", [image, amounts], [name + "_out"], name=name, mode="constant")])
            conv.input[0] = name + "_out"
            pads.append(name)
    return pads


def rewrite_for_int8(model: Any, depthwise_align: int = 16, channel_align: int = 4) -> Int8Rewrites:
    """Exact rewrites of a float ONNX model (in place) so that ONNX Runtime's INT8 CPU kernels take
    their fast paths once it is quantized (see the comment above): depthwise convs get
    ``depthwise_align`` channels, dense convs ``channel_align`` output channels (sliced back) and
    the image ``channel_align`` channels. Outputs are unchanged. Channel shuffles are not touched
    here: ``litedet export`` folds them away; a graph that still has some gets a warning."""
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 11:
        raise ValueError(f"INT8 graph rewrites need ONNX opset >= 11 (Pad/Slice with inputs), the model has {opset}; "
                         f"re-export it or pass rewrite=False")
    graph = model.graph
    result = Int8Rewrites()
    shuffles = _count_channel_shuffles(graph)
    if shuffles:
        LOGGER.warning("the graph has %d Reshape-Transpose-Reshape channel shuffles, which keep INT8 layout "
                       "transposes; export it with litedet (litedet export) to fold them into the weights", shuffles)
    result.depthwise_padded = _pad_depthwise(graph, depthwise_align)
    result.outputs_padded = _pad_conv_outputs(graph, channel_align)
    result.keep_float = _pad_image_channels(graph, channel_align)
    result.inputs_padded = len(result.keep_float)
    drop_unused(graph)
    del graph.value_info[:]  # shapes changed; quant_pre_process infers them again
    return result


# ------------------------------------------------------------ INT8 quantization parameters
#
# Three changes that make ONNX Runtime's INT8 graph cheaper without a less accurate model
# (v5lite-s@416, coco256 val, five 64-image calibration sets: mean mAP50-95 0.3309 with stage
# ranges against 0.3313 without; 2 threads, kernel time of its concats 1.13 -> 0.80 ms; with all
# three 6.94 -> 6.02 ms):
#
# - A folded ShuffleNetV2 stage keeps its channels as pieces that its units split off and
#   concatenate. QLinearConcat requantizes each input through a lookup table unless the input has the
#   output's scale and zero point, when it copies. ``concat_groups`` finds the tensors that flow
#   through one stage's splits and concats; they are given one range (the union of their
#   calibrated ranges), so every concat in the stage copies.
# - The image of a ``--uint8-input`` export reaches the stem conv as Cast(uint8 -> float); with the
#   range fixed to [0, 255] its QuantizeLinear has scale 1 and zero point 0, an exact identity, and
#   ``feed_uint8_image`` lets the quantized graph read the uint8 image itself (no Cast, no
#   QuantizeLinear).
# - Such a model may end in uint8 as well: ``quantized_head_outputs`` makes its outputs the
#   quantized head maps, channels last, and litedet's decode dequantizes only the candidate rows.

# Producers whose output may join a stage's shared range: the split/concat chain itself, and the
# ReLU (or plain) branch convs and max-pool feeding it. A concat with any other input (an upsample
# or a SiLU in a YOLO neck) keeps its own calibrated ranges.
CONCAT_GROUP_PRODUCERS = ("Split", "Concat", "Relu", "Conv", "MaxPool")


def concat_groups(graph: Any) -> list[list[str]]:
    """Float tensors that should share one INT8 range: connected components of channel Splits and
    of channel Concats whose every input comes from ``CONCAT_GROUP_PRODUCERS`` (one ShuffleNetV2
    stage each), each component in graph order. Components of a single tensor are left out."""
    g = OnnxGraph(graph)
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        parent.setdefault(name, name)
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for node in graph.node:
        if node.op_type == "Split":
            tensors = [node.input[0], *node.output]
        elif node.op_type == "Concat" and _attribute(node, "axis") in (1, -3):
            producers = [g.producer.get(name) for name in node.input]
            if any(p is None or p.op_type not in CONCAT_GROUP_PRODUCERS for p in producers):
                continue
            tensors = [*node.input, node.output[0]]
        else:
            continue
        tensors = [t for t in tensors if t and t not in g.initializers]
        for name in tensors[1:]:
            parent[find(name)] = find(tensors[0])
    members: dict[str, list[str]] = {}
    order = [out for node in graph.node for out in node.output]
    for name in order:
        if name in parent:
            members.setdefault(find(name), []).append(name)
    return [names for names in members.values() if len(names) > 1]


def shared_ranges(groups: Sequence[Sequence[str]], ranges: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """One (min, max) per group, the union of its members' ``ranges`` (0 included, as the
    quantizer does), for every member; members without a range are left out."""
    shared: dict[str, tuple[float, float]] = {}
    for names in groups:
        known = [ranges[name] for name in names if name in ranges]
        if not known:
            continue
        low = min(0.0, *(float(lo) for lo, _ in known))
        high = max(0.0, *(float(hi) for _, hi in known))
        shared.update({name: (low, high) for name in names if name in ranges})
    return shared


def uint8_image_tensor(graph: Any) -> str | None:
    """The float tensor ``Cast(image)`` (optionally after a Transpose) of a graph whose input is a
    uint8 image, i.e. a ``--uint8-input`` export; None for any other graph."""
    from onnx import TensorProto

    g = OnnxGraph(graph)
    for image in graph.input:
        if image.type.tensor_type.elem_type != TensorProto.UINT8:
            continue
        frontier = [image.name]
        for _ in range(2):
            users = [n for name in frontier for n in g.consumers.get(name, [])]
            if len(users) != 1:
                return None
            node = users[0]
            if node.op_type == "Cast" and _attribute(node, "to") == TensorProto.FLOAT:
                return node.output[0]
            if node.op_type != "Transpose":
                return None
            frontier = [node.output[0]]
    return None


def feed_uint8_image(model: Any, tensor: str) -> bool:
    """In a QDQ model, drop ``Cast -> QuantizeLinear`` of the uint8 image ``tensor`` when the
    QuantizeLinear has scale 1 and zero point 0 (an exact identity on 0..255): its readers take
    the uint8 image directly. Returns whether it did."""
    graph = model.graph
    g = OnnxGraph(graph)
    cast = g.producer.get(tensor)
    users = g.consumers.get(tensor, [])
    if cast is None or cast.op_type != "Cast" or len(users) != 1 or users[0].op_type != "QuantizeLinear":
        return False
    quantize = users[0]
    if quantize.output[0] in g.outputs:
        return False
    if _scalar_params(g, quantize) != (1.0, 0):
        return False
    source = cast.input[0]
    for node in g.consumers.get(quantize.output[0], []):
        node.input[:] = [source if name == quantize.output[0] else name for name in node.input]
    graph.node.remove(quantize)
    graph.node.remove(cast)
    del graph.value_info[:]
    drop_unused(graph)
    return True


def quantized_head_outputs(model: Any, config: ModelConfig) -> list[dict[str, Any]] | None:
    """Let a QDQ YOLO model end in its quantized head maps: each output ``DequantizeLinear(
    QuantizeLinear(x))`` (x optionally ``Slice`` of the zero-padded head conv, see
    ``_pad_conv_outputs``) becomes the uint8 map itself, channels last (``Transpose`` to NHWC,
    which ONNX Runtime's NHWC INT8 kernels already produce: the layout transposes and the
    dequantization leave the graph). Returns ``ModelConfig.quantized_outputs`` for the new
    outputs, or None (and the model is unchanged) unless every output has that form."""
    from onnx import TensorProto, helper

    if config.head != "yolo" or len(model.graph.output) != len(config.anchors):
        return None
    graph = model.graph
    g = OnnxGraph(graph)
    plans = []
    for output, anchors in zip(graph.output, config.anchors):
        channels = len(anchors) * (5 + config.num_classes)
        dequantize = g.producer.get(output.name)
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            return None
        quantize = g.producer.get(dequantize.input[0])
        if quantize is None or quantize.op_type != "QuantizeLinear":
            return None
        params = _scalar_params(g, quantize)
        if params is None or params != _scalar_params(g, dequantize):
            return None
        source = quantize.output[0]
        sliced = g.producer.get(quantize.input[0])
        if sliced is not None and sliced.op_type == "Slice":  # a padded head conv: take it unsliced
            starts, ends, axes = (g.array(name) for name in sliced.input[1:4])
            inner = g.producer.get(sliced.input[0])
            earlier = g.producer.get(inner.input[0]) if inner is not None and inner.op_type == "DequantizeLinear" else None
            if (starts is None or ends is None or axes is None or starts.tolist() != [0] or ends.tolist() != [channels]
                    or axes.tolist() != [1] or earlier is None or earlier.op_type != "QuantizeLinear"
                    or _scalar_params(g, earlier) != params or _scalar_params(g, inner) != params):
                return None
            source = earlier.output[0]
        plans.append((output.name, source, params, channels))
    del graph.output[:]
    entries = []
    for name, source, (scale, zero), channels in plans:
        graph.node.append(helper.make_node("Transpose", [source], [name + "_uint8"], name=name + "_channels_last",
                                           perm=[0, 2, 3, 1]))
        graph.output.append(helper.make_tensor_value_info(name + "_uint8", TensorProto.UINT8, None))
        entries.append({"scale": scale, "zero_point": zero, "channels": channels})
    _drop_dead_nodes(graph)
    drop_unused(graph)
    del graph.value_info[:]
    return entries


def _scalar_params(g: OnnxGraph, node: Any) -> tuple[float, int] | None:
    """(scale, zero point) of a per-tensor uint8 Quantize/DequantizeLinear, else None."""
    scale = g.array(node.input[1])
    zero = g.array(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if scale is None or zero is None or scale.size != 1 or zero.size != 1 or zero.dtype != np.uint8:
        return None
    return float(scale.reshape(-1)[0]), int(zero.reshape(-1)[0])


def _drop_dead_nodes(graph: Any) -> None:
    """Remove nodes whose outputs nothing reads (repeatedly, so whole dead chains go)."""
    outputs = {out.name for out in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        dead = [node for node in graph.node if not any(out in used for out in node.output)]
        if not dead:
            return
        for node in dead:
            graph.node.remove(node)


def _has_symbolic_input(model: Any) -> bool:
    """Whether a graph input has a dimension without a fixed size (a ``--dynamic`` export)."""
    return any(dim.dim_param or dim.dim_value <= 0 for tensor in model.graph.input
               for dim in tensor.type.tensor_type.shape.dim)


# What ONNX Runtime's symbolic shape inference writes into the working folder when it gives up.
SYMBOLIC_LEFTOVER = "sym_shape_infer_temp.onnx"


def _remove_symbolic_inference_leftovers() -> None:
    """Delete the partial model (and its external data file) that a failed symbolic shape
    inference saved in the working folder."""
    import onnx

    leftover = Path(SYMBOLIC_LEFTOVER)
    if not leftover.is_file():
        return
    try:
        partial = onnx.load(str(leftover), load_external_data=False)
        locations = {entry.value for tensor in partial.graph.initializer for entry in tensor.external_data
                     if entry.key == "location"}
    except Exception:  # noqa: BLE001 - best effort: only the known file then
        locations = set()
    for name in locations:
        data = Path(name)
        if data.parent == Path(".") and data.is_file():
            data.unlink()
    leftover.unlink()


def _calibrated_ranges(model: Path, reader: Any, method: Any, work: Path) -> dict[str, tuple[float, float]]:
    """(min, max) of every activation of ``model`` over ``reader``'s images, as quantize_static
    computes them (``onnxruntime.quantization.calibrate``)."""
    from onnxruntime.quantization.calibrate import create_calibrator

    calibrator = create_calibrator(str(model), augmented_model_path=str(work / "augmented.onnx"), calibrate_method=method)
    calibrator.collect_data(reader)
    return {name: (float(np.min(data.range_value[0])), float(np.max(data.range_value[1])))
            for name, data in calibrator.compute_data().data.items()}


def quantize_onnx_static(
    model: str | os.PathLike,
    output: str | os.PathLike,
    calibration: str | os.PathLike | Sequence[np.ndarray],
    num_images: int = 64,
    per_channel: bool = True,
    calibrate_method: str = "minmax",
    exclude: Sequence[str] = (),
    reduce_range: bool = False,
    rewrite: bool = True,
    ranges: dict[str, tuple[float, float]] | None = None,
) -> QuantizeResult:
    """Static INT8 (QDQ, signed int8 weights per channel, uint8 activations) of an ONNX model,
    calibrated on up to ``num_images`` images from ``calibration`` (a folder, a dataset YAML, or
    ready pre-processed [1, 3, H, W] float arrays).

    ``rewrite`` (default) first applies ``rewrite_for_int8`` (exact; makes ORT's fast INT8
    kernels apply), gives the tensors of each ShuffleNetV2 stage's split/concat chain one shared
    range (``concat_groups``: its concats copy instead of requantizing; not with ``ranges``) and
    lets the INT8 graph of a ``--uint8-input`` export read the uint8 image directly
    (``feed_uint8_image``); ``rewrite=False`` quantizes the graph as exported. ``exclude`` lists ONNX node
    names to keep in float. ``reduce_range`` uses 7-bit weights (for CPUs without VNNI, where
    8-bit products can saturate). ``ranges`` fixes the float range (min, max) of named
    activation tensors instead of calibrating them (QAT passes its learned ranges)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model, output = Path(model), Path(output)
    if not model.is_file():
        raise FileNotFoundError(f"ONNX model not found: {model}")
    if calibrate_method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, got {calibrate_method!r}")
    _check_output(model, output, ".onnx")
    config = _require_config(model)
    input_name = _onnx_input_name(model)
    if isinstance(calibration, (str, os.PathLike)):
        images = calibration_images(calibration, num_images)
        count = len(images)

        def make_reader() -> Any:
            return _as_reader(lambda: calibration_batches(images, config), count, input_name)
    else:
        arrays = [np.asarray(a, dtype=np.float32) for a in list(calibration)[:num_images]]
        if not arrays:
            raise ValueError("no calibration arrays given")
        count = len(arrays)

        def make_reader() -> Any:
            return _as_reader(lambda: iter(arrays), count, input_name)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[calibrate_method]
    extra: dict[str, Any] = {"ActivationSymmetric": False, "WeightSymmetric": True}
    overrides = dict(ranges or {})
    rewrites = Int8Rewrites()
    shared: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="litedet-quant-") as tmp:
        source = model
        if rewrite:
            graph = onnx.load(str(model))
            rewrites = rewrite_for_int8(graph)
            source = Path(tmp) / "rewritten.onnx"
            onnx.save(graph, str(source))
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference + graph optimisation first, as the ORT quantization guide recommends.
        # ORT's symbolic shape inference gives up on symbolic image sizes (a --dynamic export:
        # "Incomplete symbolic shape inference", leaving its partial model in the working
        # folder); ONNX's own shape inference is enough for a CNN.
        symbolic = _has_symbolic_input(onnx.load(str(source), load_external_data=False))
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=symbolic)
        except Exception as err:  # noqa: BLE001 - the tool raises a bare Exception
            if symbolic:
                raise
            _remove_symbolic_inference_leftovers()
            LOGGER.info("symbolic shape inference failed (%s); preparing %s with ONNX shape inference only", err, model)
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        image_tensor = None
        if rewrite:
            prepared_graph = onnx.load(str(prepared)).graph
            image_tensor = uint8_image_tensor(prepared_graph)
            if image_tensor is not None and image_tensor not in overrides:
                overrides[image_tensor] = (0.0, 255.0)  # scale 1, zero point 0: see feed_uint8_image
            groups = concat_groups(prepared_graph)
            if groups and not ranges:  # QAT's learned ranges are kept as they were trained
                shared = shared_ranges(groups, _calibrated_ranges(prepared, make_reader(), method, Path(tmp)))
                overrides.update(shared)
        if overrides:
            extra["TensorQuantOverrides"] = {name: [{"rmin": np.float32(low), "rmax": np.float32(high)}]
                                             for name, (low, high) in overrides.items()}
        staged = Path(tmp) / output.name
        with _without_preprocessing_advice():
            quantize_static(
                str(prepared), str(staged), make_reader(),
                quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method,
                nodes_to_exclude=list(exclude) + rewrites.keep_float, extra_options=extra,
            )
        image_direct, outputs = False, None
        if image_tensor is not None:
            quantized = onnx.load(str(staged))
            image_direct = feed_uint8_image(quantized, image_tensor)
            if image_direct:  # a litedet-runtime model: it may end in uint8 as it starts
                outputs = quantized_head_outputs(quantized, config)
                if outputs is not None:
                    config = dataclasses.replace(config, output_names=[o.name for o in quantized.graph.output],
                                                 quantized_outputs=outputs)
                onnx.save(quantized, str(staged))
        shutil.move(str(staged), output)
    settings = {"method": "ort-static", "format": "QDQ", "per_channel": per_channel, "weights": "int8",
                "activations": "uint8", "calibrate_method": calibrate_method, "calibration_images": count,
                "excluded_nodes": list(exclude), "reduce_range": reduce_range,
                "int8_rewrites": rewrites.to_dict() if rewrite else None,
                "fixed_ranges": len(ranges) if ranges else 0,
                "shared_concat_ranges": len(shared), "uint8_image_direct": image_direct if rewrite else False,
                "uint8_outputs": outputs is not None}
    _write_sidecar(config, output, "int8", settings)
    return QuantizeResult(output, "ort-static", model_files_size(model), model_files_size(output), count, settings)


class _PreprocessingAdvice(logging.Filter):
    """ONNX Runtime's quantizer logs "Please consider to run pre-processing before quantization"
    on the root logger whenever a model lacks its marker; litedet's static path has run it, and the
    dynamic one needs none: the line would only break a verb's one-line output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "consider to run pre-processing" not in record.getMessage()


@contextlib.contextmanager
def _without_preprocessing_advice() -> Iterator[None]:
    root = logging.getLogger()
    advice = _PreprocessingAdvice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


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
        with _without_preprocessing_advice():
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
