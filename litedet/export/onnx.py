"""ONNX export: ``torch.onnx.export`` (the TorchScript path, ``dynamo=False``), then onnxslim.

The plain export ends at the raw head maps, so decode and NMS run in numpy (``litedet.ops``) the
same for every engine. ``nms=True`` builds a separate variant that decodes and runs NMS inside the
graph (``InGraphNMS``): ONNX ``NonMaxSuppression`` per class, on each box's best class only, which
is exactly what ``litedet.ops.non_max_suppression`` does with ``multi_label=False``.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from litedet.config import Preprocess

LOGGER = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "images"
NMS_OUTPUT_NAMES = ["detections", "num_detections"]


def raw_output_names(num_outputs: int) -> list[str]:
    """Names of the raw head maps, in level order: ``out0``, ``out1``, ..."""
    return [f"out{i}" for i in range(num_outputs)]


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` (opset 10+) as a traceable torch op.

    ``boxes`` [B, N, 4] (x1, y1, x2, y2), ``scores`` [B, C, N]; returns the selected
    [M, 3] int64 rows (batch, class, box). The eager forward (used while tracing and when the
    module runs in torch) keeps boxes whose score is above ``score_threshold`` and runs greedy
    NMS per (batch, class), like the ONNX op.
    """

    @staticmethod
    def forward(ctx, boxes, scores, max_output, iou_threshold, score_threshold):  # type: ignore[override]
        from litedet.ops.nms import nms as numpy_nms

        selected = []
        limit = int(max_output.reshape(-1)[0])
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                candidates = torch.nonzero(scores[b, c] > score_threshold.reshape(-1)[0]).reshape(-1)
                if candidates.numel() == 0:
                    continue
                keep = numpy_nms(
                    boxes[b, candidates].detach().cpu().numpy(),
                    scores[b, c, candidates].detach().cpu().numpy(),
                    float(iou_threshold.reshape(-1)[0]),
                    limit,
                )
                index = candidates[torch.from_numpy(keep).to(candidates.device)]
                selected.append(torch.stack([torch.full_like(index, b), torch.full_like(index, c), index], dim=1))
        if not selected:
            return torch.zeros((0, 3), dtype=torch.int64, device=boxes.device)
        return torch.cat(selected).to(torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, max_output, iou_threshold, score_threshold):  # pragma: no cover - export only
        return g.op("NonMaxSuppression", boxes, scores, max_output, iou_threshold, score_threshold, center_point_box_i=0)


class InGraphNMS(nn.Module):
    """A detector followed by YOLO decode and per-class NMS, for the ``--nms`` export.

    Outputs ``detections`` [B, max_det, 6] rows of (x1, y1, x2, y2, score, class_id) in input
    pixels, by descending score and zero-padded, and ``num_detections`` [B] (int64), the number
    of valid rows. Decode follows ``litedet.ops.decode.decode_yolo`` (YOLOv5 v4+); the score of a
    box is objectness x its best class probability, kept when above ``conf`` (YOLOv5 NMS).
    """

    def __init__(
        self,
        model: nn.Module,
        anchors: Sequence[Sequence[Sequence[float]]],
        strides: Sequence[int],
        num_classes: int,
        conf: float = 0.25,
        iou: float = 0.45,
        max_det: int = 300,
    ) -> None:
        super().__init__()
        if not 0.0 <= conf < 1.0 or not 0.0 <= iou <= 1.0 or max_det < 1:
            raise ValueError(f"--nms needs 0 <= conf < 1, 0 <= iou <= 1, max_det >= 1; got {conf}, {iou}, {max_det}")
        self.model = model
        self.strides = [int(s) for s in strides]
        self.num_classes = int(num_classes)
        self.conf, self.iou, self.max_det = float(conf), float(iou), int(max_det)
        for level, pairs in enumerate(anchors):
            self.register_buffer(f"anchors{level}", torch.tensor(pairs, dtype=torch.float32).reshape(1, -1, 1, 1, 2))
        self.eval()  # the export restores this mode on every submodule afterwards

    def _decode(self, raw_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        per_row = 5 + self.num_classes
        rows = []
        for level, (raw, stride) in enumerate(zip(raw_maps, self.strides)):
            anchors = getattr(self, f"anchors{level}")
            batch, _, height, width = raw.shape
            maps = raw.reshape(batch, anchors.shape[1], per_row, height, width).permute(0, 1, 3, 4, 2).sigmoid()
            grid_y, grid_x = torch.meshgrid(
                torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
            )
            grid = torch.stack([grid_x, grid_y], dim=-1).reshape(1, 1, height, width, 2)
            xy = (maps[..., 0:2] * 2.0 - 0.5 + grid) * float(stride)
            wh = (maps[..., 2:4] * 2.0) ** 2 * anchors
            rows.append(torch.cat([xy, wh, maps[..., 4:]], dim=-1).reshape(batch, -1, per_row))
        return torch.cat(rows, dim=1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        candidates = self._decode(self.model(images))  # [B, N, 5 + nc]
        centre, size = candidates[..., 0:2], candidates[..., 2:4]
        boxes = torch.cat([centre - size / 2, centre + size / 2], dim=-1)  # [B, N, 4] xyxy
        class_scores = candidates[..., 5:] * candidates[..., 4:5]  # [B, N, nc]
        best_score, best_class = class_scores.max(dim=-1)  # [B, N]
        # Only the best class of each box takes part (multi_label=False), so a box appears once.
        one_hot = nn.functional.one_hot(best_class, self.num_classes).to(best_score.dtype)
        scores = (one_hot * best_score.unsqueeze(-1)).permute(0, 2, 1).contiguous()  # [B, nc, N]
        selected = _NonMaxSuppression.apply(
            boxes,
            scores,
            torch.tensor([self.max_det], dtype=torch.int64),
            torch.tensor([self.iou], dtype=torch.float32),
            torch.tensor([self.conf], dtype=torch.float32),
        )
        batch_index, box_index = selected[:, 0], selected[:, 2]
        # Scatter the kept scores into a per-image row, zero-padded by max_det so top-k always has
        # max_det columns; top-k then caps detections per image as YOLOv5's max_det does.
        kept = nn.functional.pad(torch.zeros_like(best_score), (0, self.max_det))
        kept = kept.index_put((batch_index, box_index), best_score[batch_index, box_index])
        top_scores, top_index = kept.topk(self.max_det, dim=1)  # [B, K]
        padded_boxes = nn.functional.pad(boxes, (0, 0, 0, self.max_det))
        padded_classes = nn.functional.pad(best_class.to(torch.float32), (0, self.max_det))
        top_boxes = torch.gather(padded_boxes, 1, top_index.unsqueeze(-1).expand(-1, -1, 4))
        top_classes = torch.gather(padded_classes, 1, top_index)
        valid = top_scores > 0
        detections = torch.cat([top_boxes, top_scores.unsqueeze(-1), top_classes.unsqueeze(-1)], dim=-1)
        detections = detections * valid.unsqueeze(-1).to(detections.dtype)
        return detections, valid.to(torch.int64).sum(dim=1)


class ImageInput(nn.Module):
    """uint8 BGR images [B, H, W, 3] -> ``network`` on its normalised float input, for the
    ``--uint8-input`` export: the layout change, channel order and ``(x - mean) / std`` of
    ``litedet.data.transforms`` move into the graph, in the same float32 arithmetic (so the
    engine sees the very values the numpy pre-processing gives), and the host only letterboxes.
    """

    def __init__(self, network: nn.Module, preprocess: Preprocess) -> None:
        super().__init__()
        self.network = network
        self.rgb = bool(preprocess.rgb)
        self.subtract = any(preprocess.mean)
        self.register_buffer("mean", torch.tensor(preprocess.mean, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(preprocess.std, dtype=torch.float32).reshape(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> Any:
        pixels = images.permute(0, 3, 1, 2).to(torch.float32)
        if self.rgb:
            pixels = pixels.flip(1)
        if self.subtract:
            pixels = pixels - self.mean
        return self.network(pixels / self.std)


def fold_image_normalisation(proto) -> bool:
    """Fold the channel flip and ``/ std`` of an ``ImageInput`` graph into the convs reading the
    image, in place: images -> Transpose -> Cast -> [Slice(flip)] -> Div -> Conv becomes
    images -> Transpose -> Cast -> Conv with ``W'[:, d] = W[:, src(d)] / std[src(d)]``.

    Zero padding stays exact because the mean is zero (a graph with a Sub is left as it is). The
    result is the same sum of the same products in another rounding (outputs within ~1e-6
    relative of the unfolded graph), and the engines then read the uint8 image almost for free:
    ONNX Runtime's blocked-layout conv reads the NHWC Transpose directly, while a Slice or Div in
    between costs two extra passes over the image. Returns whether it folded."""
    from litedet.export.onnx_graph import OnnxGraph, drop_unused

    g = OnnxGraph(proto.graph)

    def only(tensor: str, op_type: str) -> Any:
        """The one node reading ``tensor`` if it is an ``op_type`` and the tensor is no graph output."""
        nodes = g.consumers.get(tensor, [])
        return nodes[0] if len(nodes) == 1 and nodes[0].op_type == op_type and g.only_consumer(tensor, nodes[0]) else None

    transpose = only(INPUT_NAME, "Transpose")
    cast = transpose and only(transpose.output[0], "Cast")
    if cast is None:
        return False
    flip = only(cast.output[0], "Slice")
    if flip is not None:
        axes = g.array(flip.input[3]) if len(flip.input) > 3 else None
        steps = g.array(flip.input[4]) if len(flip.input) > 4 else None
        if axes is None or steps is None or axes.tolist() != [1] or steps.tolist() != [-1]:
            return False
    divide = only((flip or cast).output[0], "Div")
    std = None if divide is None else g.array(divide.input[1])
    convs = [] if std is None or std.size != 3 or divide.output[0] in g.outputs else g.consumers.get(divide.output[0], [])
    for conv in convs:
        weight = g.array(conv.input[1]) if conv.op_type == "Conv" and len(conv.input) > 1 else None
        if (weight is None or weight.ndim != 4 or weight.shape[1] != 3 or next((a.i for a in conv.attribute if a.name == "group"), 1) != 1
                or conv.input[1] not in g.initializers):
            return False
    if not convs:
        return False
    source = [2, 1, 0] if flip is not None else [0, 1, 2]  # conv input channel d reads image channel source[d]
    scale = std.reshape(3).astype(np.float32)[source].reshape(1, 3, 1, 1)
    for conv in convs:
        folded = (g.array(conv.input[1]).astype(np.float32)[:, source] / scale).astype(np.float32)
        if len(g.consumers.get(conv.input[1], [])) == 1:
            g.set_array(conv.input[1], folded)
        else:  # an initializer the export shares with other nodes (equal values): this conv gets its own
            conv.input[1] = g.add_initializer(f"{conv.input[1]}_image_folded_{len(g.graph.initializer)}", folded)
        conv.input[0] = cast.output[0]
    for node in (flip, divide):
        if node is not None:
            proto.graph.node.remove(node)
    drop_unused(proto.graph)
    return True


def locate_op(model: nn.Module, example: torch.Tensor, op_kind: str) -> list[str]:
    """Module paths (``backbone.stage2.0.branch2``) whose traced graph contains ``op_kind``
    (``aten::cumsum``), to name the layer behind an export error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, (example,), check_trace=False, strict=False)
    except Exception:  # noqa: BLE001 - best effort: the original error is raised anyway
        return []
    found: list[str] = []
    for node in traced.inlined_graph.nodes():
        if node.kind() == op_kind:
            scope = node.scopeName().split("/")[-1]
            name = scope.replace("__module.", "").strip() or "<top level>"
            if name not in found:
                found.append(name)
    return found


def export_onnx(
    model: nn.Module,
    path: str | Path,
    imgsz: tuple[int, int],
    dynamic: bool = False,
    nms: InGraphNMS | None = None,
    opset: int = OPSET,
    simplify: bool = True,
    uint8_input: "Preprocess | None" = None,
) -> list[str]:
    """Export ``model`` (eval mode, Conv+BN already fused) to ``path``; returns the output names.

    ``imgsz`` is (height, width) of the example input. ``dynamic`` makes batch, height and width
    symbolic. ``nms`` (an ``InGraphNMS`` wrapping ``model``) exports the in-graph NMS variant.
    ``uint8_input`` (the model's ``Preprocess``) makes the input uint8 [B, H, W, 3] BGR with that
    normalisation in the graph (``ImageInput``). The result is checked with ``onnx.checker`` and
    simplified with onnxslim.
    """
    import onnx

    network = nms if nms is not None else model
    with torch.inference_mode():
        outputs = model(torch.zeros(1, 3, *imgsz))
    if uint8_input is not None:
        network = ImageInput(network, uint8_input)
        example = torch.zeros(1, *imgsz, 3, dtype=torch.uint8)
    else:
        example = torch.zeros(1, 3, *imgsz)
    num_outputs = len(outputs) if isinstance(outputs, (list, tuple)) else 1
    output_names = list(NMS_OUTPUT_NAMES) if nms is not None else raw_output_names(num_outputs)
    dynamic_axes = None
    if dynamic:
        spatial = {1: "height", 2: "width"} if uint8_input is not None else {2: "height", 3: "width"}
        dynamic_axes = {INPUT_NAME: {0: "batch", **spatial}}
        for index, name in enumerate(output_names):
            dynamic_axes[name] = {0: "batch"} if nms is not None else {0: "batch", 2: f"height{index}", 3: f"width{index}"}
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            # The tracer warns about Python-level shape checks (constant for a given input rank).
            warnings.simplefilter("ignore")
            torch.onnx.export(
                network,
                (example,),
                buffer,
                dynamo=False,  # BENCHMARKS.md: the dynamo path pulls in onnxscript and is slower here
                input_names=[INPUT_NAME],
                output_names=output_names,
                opset_version=opset,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
    except Exception as err:  # noqa: BLE001 - re-raised as a user error naming the layer
        raise ValueError(_explain_failure(network, example, err, opset)) from err
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto)
    if simplify:
        import onnxslim

        proto = onnxslim.slim(proto)
    if uint8_input is not None:
        fold_image_normalisation(proto)
        onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return output_names


def export(
    model: nn.Module,
    path: str | Path,
    imgsz: tuple[int, int],
    workdir: str | Path,
    dynamic: bool = False,
    half: bool = False,
    nms: InGraphNMS | None = None,
    stride: int = 32,
    uint8_input: "Preprocess | None" = None,
) -> tuple[list[str], list[str]]:
    """The format-table entry point (``litedet.export.formats``): (input names, output names)."""
    if half:
        raise ValueError("ONNX export is fp32 only; use --format openvino or ncnn for --half")
    return [INPUT_NAME], export_onnx(model, path, imgsz, dynamic=dynamic, nms=nms, uint8_input=uint8_input)


def _explain_failure(model: nn.Module, example: torch.Tensor, err: Exception, opset: int) -> str:
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    match = re.search(r"(aten|prim|onnx)::[A-Za-z_0-9.]+", str(err))
    if match is None:
        return f"ONNX export failed: {message}"
    op_kind = match.group(0)
    layers = locate_op(model, example, op_kind)
    where = f" in layer {', '.join(layers[:3])}" if layers else ""
    return (
        f"ONNX (opset {opset}) cannot take the operator {op_kind}{where}: {message} "
        "(replace that layer with an exportable one, or try another format)"
    )
