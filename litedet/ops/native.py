"""YOLO post-processing in one compiled call, where litedet was built with its C extension.

``YoloPostprocess`` gives what ``decode_yolo`` followed by ``non_max_suppression`` (and
``scale_boxes``) give for the usual detection case: float32 head maps (or an INT8 model's uint8
maps), one class per box or every class above the threshold (COCO evaluation). The C
code (``litedet/ops/_native.c``) repeats the numpy code's float arithmetic step by step; only
its exp is the C library's, so boxes and scores agree with the numpy path to a few float32 ulps
(a score that lands within them of ``conf``, or an IoU within them of ``iou``, may decide the
other way). It exists for speed: right after inference every distinct numpy call costs
microseconds while its code comes back into the caches, and the numpy path makes about a
hundred of them per image; this path reads the objectness planes and then only the rows above
the threshold.

Where the extension is missing (an install without a C compiler) or ``LITEDET_NATIVE=0`` is set,
``available()`` is False and callers use the numpy path.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from litedet.ops.decode import _cell_table

try:  # built by setup.py where a C compiler is present; optional
    from litedet.ops import _native
except ImportError:  # pragma: no cover - depends on the install
    _native = None

Letterbox = tuple[tuple[float, float], tuple[float, float], tuple[int, int]]


def available() -> bool:
    """True when the compiled post-processing is installed and not disabled (``LITEDET_NATIVE=0``)."""
    return _native is not None and os.environ.get("LITEDET_NATIVE", "1") != "0"


class YoloPostprocess:
    """Decode + NMS (+ undoing the letterbox) of one YOLO head, compiled.

    ``YoloPostprocess(anchors, strides, num_classes, quantized)(outputs, conf, iou, ...)`` gives
    what ``non_max_suppression(decode_yolo(outputs, anchors, strides, num_classes,
    min_objectness=conf, quantized=quantized), conf, iou, ...)`` gives, up to the
    exp rounding noted in the module docstring; with ``letterboxes`` the boxes also go through
    ``scale_boxes``. ``quantized``: an INT8 model's ``ModelConfig.quantized_outputs`` (its maps
    are uint8 [B, H, W, C] channels last), else None for float32 [B, na * (5 + nc), H, W] maps.
    Keeps each map size's cell tables, so a stream of frames pays for its setup once. Check
    ``available()`` first; a call gives None where this path does not apply (maps of another
    dtype, layout or size, not C-contiguous, ``conf`` of 0 or 1): use numpy then.
    """

    def __init__(self, anchors: Sequence[Sequence[Sequence[float]]], strides: Sequence[int], num_classes: int,
                 quantized: Sequence[dict[str, Any]] | None = None) -> None:
        if len(anchors) != len(strides) or not strides:
            raise ValueError(f"{len(anchors)} anchor levels for {len(strides)} strides")
        if quantized is not None and len(quantized) != len(strides):
            raise ValueError(f"{len(quantized)} output quantizations for {len(strides)} outputs")
        # an INT8 model's uint8 channels-last maps (ModelConfig.quantized_outputs), else float maps
        self.quantized = None if not quantized else [
            (float(q["scale"]), float(q["zero_point"]), int(q["channels"])) for q in quantized]
        self.anchors = [np.asarray(level, dtype=np.float32).reshape(-1, 2) for level in anchors]
        self.strides = [float(s) for s in strides]
        self.num_classes = int(num_classes)
        self.per_row = 5 + self.num_classes
        self._tables: dict[tuple[tuple[int, ...], ...], tuple[tuple[np.ndarray, int, int, int, Any], ...] | None] = {}
        self._masks: dict[tuple[int, ...] | None, bytes | None] = {None: None}
        self._logits: dict[float, float] = {}
        self._last: tuple[tuple[np.ndarray, int, int, int, Any], ...] = ()  # the tables of the last maps' shapes

    def _plan(self, outputs: Sequence[Any]) -> tuple[tuple[np.ndarray, int, int, int, Any], ...] | None:
        """Per level (cell table, anchors, H, W, quantization) for maps of these shapes; None if they do not fit."""
        try:
            key = tuple(tuple(raw.shape) for raw in outputs)
        except AttributeError:
            return None
        if key not in self._tables:
            plan = []
            for level, (shape, sizes, stride) in enumerate(zip(key, self.anchors, self.strides)):
                needed = len(sizes) * self.per_row
                if self.quantized is None:  # [B, A * (5 + nc), H, W]
                    if len(shape) != 4 or shape[1] != needed:
                        break
                    height, width, quantization = shape[2], shape[3], None
                else:  # [B, H, W, channels], the first A * (5 + nc) channels used
                    quantization = self.quantized[level]
                    if len(shape) != 4 or quantization[2] != needed or shape[3] < needed:
                        break
                    height, width = shape[1], shape[2]
                    quantization = (quantization[0], quantization[1], shape[3])
                plan.append((_cell_table(height, width, stride, sizes.tobytes()), len(sizes), height, width, quantization))
            fits = len(plan) == len(self.strides) == len(key)
            self._tables[key] = tuple(plan) if fits else None
        return self._tables[key]

    def _mask(self, classes: Sequence[int]) -> bytes:
        key = tuple(int(c) for c in classes)
        if key not in self._masks:
            wanted = np.zeros(self.num_classes, dtype=np.uint8)
            wanted[[c for c in key if 0 <= c < self.num_classes]] = 1
            self._masks[key] = wanted.tobytes()
        return self._masks[key]  # type: ignore[return-value]

    def _min_logit(self, conf: float) -> float:
        """sigmoid(t) > conf  <=>  t > log(conf / (1 - conf)), as decode_yolo compares."""
        value = self._logits[conf] = float(np.log(conf / (1.0 - conf)))
        return value

    def __call__(
        self,
        outputs: Sequence[Any],
        conf: float = 0.25,
        iou: float = 0.45,
        classes: Sequence[int] | None = None,
        agnostic: bool = False,
        max_det: int = 300,
        max_nms: int = 30000,
        letterboxes: Sequence[Any] | None = None,
        multi_label: bool = False,
    ) -> list[np.ndarray] | None:
        """One float32 array [n, 6] (x1, y1, x2, y2, score, class) per image, by descending score.

        ``letterboxes``: per image a ``LetterboxInfo`` (anything with ``ratio`` (w, h), ``pad``
        (left, top) and ``original_shape`` (height, width)) to map the boxes back to the original
        image as ``scale_boxes`` does; None keeps them in input pixels. ``multi_label``: a box
        gives one candidate per class above ``conf`` (COCO evaluation), as in
        ``non_max_suppression``. (Written for the frame-by-frame case: every bytecode here costs
        time right after inference.)
        """
        if not 0.0 < conf < 1.0 or max_det < 1:
            return None
        min_logit = self._logits.get(conf)
        if min_logit is None:
            min_logit = self._min_logit(conf)
        mask = None if classes is None else self._mask(classes)
        batch = len(outputs[0]) if outputs else 0
        if letterboxes is not None and len(letterboxes) != batch:
            raise ValueError(f"{len(letterboxes)} letterboxes for a batch of {batch}")
        results = []
        for image in range(batch):
            scale = None
            if letterboxes is not None:
                info = letterboxes[image]
                ratio, pad, original = info.ratio, info.pad, info.original_shape
                if isinstance(ratio, (int, float)):
                    ratio = (ratio, ratio)
                scale = (ratio[0], ratio[1], pad[0], pad[1], original[1], original[0])
            # the previous call's tables first: the C code checks every map against them
            found = _native.detect(outputs, self._last, image, self.per_row, min_logit, conf, iou, max_det,
                                   max_nms, agnostic, mask, scale, multi_label)
            if found is None:
                tables = self._plan(outputs)
                if tables is None:
                    return None
                self._last = tables
                found = _native.detect(outputs, tables, image, self.per_row, min_logit, conf, iou, max_det,
                                       max_nms, agnostic, mask, scale, multi_label)
                if found is None:
                    return None
            results.append(np.frombuffer(found[0], dtype=np.float32).reshape(found[1], 6))
        return results
