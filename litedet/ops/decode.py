"""Decode raw head maps into candidate boxes, in numpy, shared by every backend.

YOLO head (YOLOv5 ``Detect``): one map per level, [B, na * (5 + nc), H, W] of logits, channel
``a * (5 + nc) + k`` for anchor ``a`` and ``k`` in (tx, ty, tw, th, objectness, class 0..nc-1).
For the cell (gx, gy) at stride s with anchor (aw, ah) in input pixels (YOLOv5 v4+ decode):

    cx = (2 * sigmoid(tx) - 0.5 + gx) * s        w = (2 * sigmoid(tw)) ** 2 * aw
    cy = (2 * sigmoid(ty) - 0.5 + gy) * s        h = (2 * sigmoid(th)) ** 2 * ah

Objectness and class scores are sigmoids. The result is [B, N, 5 + nc] rows of
(cx, cy, w, h, objectness, class probabilities...) in input (letterboxed) pixels, levels in
order, then anchors, then rows, then columns: the same order as YOLOv5's ``Detect`` output.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, float32 in, float32 out: ``1 / (1 + exp(-x))``. Where ``exp(-x)``
    overflows (x < -88) the result is the exact limit 0, so the overflow is not reported."""
    x = np.asarray(x, dtype=np.float32)
    # four ufunc calls: after inference their count, not the data, sets the time of decode
    with np.errstate(over="ignore"):
        y = np.exp(np.negative(x))
    y += np.float32(1.0)
    return np.reciprocal(y, out=y) if x.ndim else np.asarray(np.reciprocal(y), dtype=np.float32)


def decode_yolo(
    outputs: Sequence[np.ndarray],
    anchors: Sequence[Sequence[Sequence[float]]],
    strides: Sequence[int],
    num_classes: int,
    min_objectness: float | None = None,
    quantized: Sequence[dict[str, Any]] | None = None,
) -> np.ndarray:
    """Decode YOLO raw maps.

    Args:
        outputs: one float array per level, [B, na * (5 + num_classes), H_i, W_i] logits.
        anchors: per level, ``na`` (w, h) pairs in input pixels.
        strides: per level, the input pixels per cell.
        num_classes: classes the head predicts.
        min_objectness: when given, rows whose objectness is at most this in every image of the
            batch are left out before the sigmoids are computed (NMS drops them anyway; most
            rows go this way at detection thresholds, so post-processing gets much cheaper).
        quantized: the maps of an INT8 model (``ModelConfig.quantized_outputs``): per level
            ``{"scale", "zero_point", "channels"}``, each output then uint8 [B, H, W, C >= channels]
            channels last; a row's logits are (q - zero_point) * scale in float32, which is what
            the model's DequantizeLinear would have output, so the result is the same.

    Returns:
        float32 [B, N, 5 + num_classes]: (cx, cy, w, h, obj, cls...); N = sum(na * H_i * W_i)
        rows without ``min_objectness``, else the rows that pass it, in the same order.
    """
    if not (len(outputs) == len(anchors) == len(strides)):
        raise ValueError(
            f"decode_yolo needs one anchor set and stride per output: got {len(outputs)} outputs, "
            f"{len(anchors)} anchor levels, {len(strides)} strides"
        )
    if not outputs:
        raise ValueError("decode_yolo needs at least one output level")
    per_row = 5 + num_classes
    if min_objectness is not None and not 0.0 <= min_objectness < 1.0:
        raise ValueError(f"min_objectness must be in [0, 1), got {min_objectness}")
    # sigmoid(t) > p  <=>  t > log(p / (1 - p)); compare logits, no sigmoid on dropped rows
    min_logit = None if not min_objectness else float(np.log(min_objectness / (1.0 - min_objectness)))
    # Gather the (surviving) rows of every level first, then one sigmoid and one decode for all:
    # the same float32 arithmetic per element as level by level, with few numpy calls in all
    # (right after inference each call is slow, so their count, not the data, sets the time).
    if quantized is not None and len(quantized) != len(outputs):
        raise ValueError(f"{len(quantized)} output quantizations for {len(outputs)} outputs")
    logits, cells = [], []
    for level, (raw, level_anchors, stride) in enumerate(zip(outputs, anchors, strides)):
        level_anchors = np.asarray(level_anchors, dtype=np.float32).reshape(-1, 2)
        num_anchors = len(level_anchors)
        if quantized is not None:
            picked, rows, height, width = _quantized_level(raw, quantized[level], num_anchors, per_row, min_logit, level)
        else:
            picked, rows, height, width = _float_level(raw, num_anchors, per_row, min_logit, level)
        batch = picked.shape[0]
        if picked.shape[1]:
            table = _cell_table(height, width, float(stride), level_anchors.tobytes())
            logits.append(picked)
            cells.append(table if rows is None else table[rows])
    if not logits:  # nothing above min_objectness anywhere
        return np.zeros((batch, 0, per_row), dtype=np.float32)
    rows = sigmoid(logits[0] if len(logits) == 1 else np.concatenate(logits, axis=1))
    table = cells[0] if len(cells) == 1 else np.concatenate(cells)
    # (2 * sigmoid - 0.5 + grid) * stride and (2 * sigmoid) ** 2 * anchor, in this order, in place
    xy = rows[..., 0:2]
    xy *= 2.0
    xy -= 0.5
    xy += table[:, 0:2]
    xy *= table[:, 2:3]
    wh = rows[..., 2:4]
    wh *= 2.0
    np.square(wh, out=wh)
    wh *= table[:, 3:]
    return rows


def _float_level(raw: Any, num_anchors: int, per_row: int, min_logit: float | None,
                 level: int) -> tuple[np.ndarray, np.ndarray | None, int, int]:
    """One float level [B, A * (5+nc), H, W]: its rows as [B, k, 5+nc] logits, anchor-major then
    cell, and their row numbers (None: every row); then H and W."""
    raw = np.asarray(raw, dtype=np.float32)
    if raw.ndim != 4 or raw.shape[1] != num_anchors * per_row:
        raise ValueError(
            f"output {level} has shape {raw.shape}; expected [B, {num_anchors * per_row}, H, W] "
            f"for {num_anchors} anchors and {per_row - 5} classes"
        )
    batch, _, height, width = raw.shape
    maps = raw.reshape(batch, num_anchors, per_row, height * width)
    if min_logit is None:
        # every row: [B, A, 5+nc, HW] -> [B, A * HW, 5+nc], anchor-major then cell (row-major)
        return maps.transpose(0, 1, 3, 2).reshape(batch, -1, per_row), None, height, width
    keep = maps[:, :, 4, :] > min_logit
    rows = np.flatnonzero(keep if batch == 1 else keep.any(axis=0))
    anchor_index, cell = np.divmod(rows, height * width)
    # [B, A, 5+nc, HW][:, a, :, c] is [k, B, 5+nc] (index arrays apart from each other go first)
    return maps[:, anchor_index, :, cell].transpose(1, 0, 2), rows, height, width


def _quantized_level(raw: Any, quantization: dict[str, Any], num_anchors: int, per_row: int, min_logit: float | None,
                     level: int) -> tuple[np.ndarray, np.ndarray | None, int, int]:
    """``_float_level`` for a uint8 channels-last level of an INT8 model: the rows are picked on
    the quantized objectness (the same threshold, moved to the integers exactly), then only they
    are dequantized."""
    raw = np.asarray(raw)
    needed = num_anchors * per_row
    if raw.ndim != 4 or raw.dtype != np.uint8 or raw.shape[3] < needed or int(quantization["channels"]) != needed:
        raise ValueError(
            f"quantized output {level} has shape {raw.shape} ({raw.dtype}) and {quantization['channels']} channels "
            f"in its config; expected uint8 [B, H, W, >= {needed}] holding {needed} channels "
            f"for {num_anchors} anchors and {per_row - 5} classes"
        )
    batch, height, width, _ = raw.shape
    lowest = _lowest_code(float(quantization["scale"]), int(quantization["zero_point"]), min_logit)
    scale, zero = np.float32(quantization["scale"]), np.float32(quantization["zero_point"])
    maps = raw.reshape(batch, height * width, raw.shape[3])[:, :, :needed].reshape(batch, height * width, num_anchors, per_row)
    if min_logit is None:
        rows = maps.transpose(0, 2, 1, 3).reshape(batch, -1, per_row)
        return (rows.astype(np.float32) - zero) * scale, None, height, width
    keep = maps[:, :, :, 4] >= lowest  # [B, HW, A]
    keep = keep.transpose(0, 2, 1)  # [B, A, HW]: anchor-major, as the float maps
    rows = np.flatnonzero(keep if batch == 1 else keep.any(axis=0))
    anchor_index, cell = np.divmod(rows, height * width)
    picked = maps[:, cell, anchor_index, :]  # [B, k, 5+nc]
    # (q - zero_point) * scale in float32, as DequantizeLinear computes it (a 256-entry lookup
    # table gives the same values but numpy's fancy indexing is 6x slower than this)
    return (picked.astype(np.float32) - zero) * scale, rows, height, width


@functools.lru_cache(maxsize=64)
def _lowest_code(scale: float, zero_point: int, min_logit: float | None) -> int:
    """The smallest uint8 code whose value, (q - zero_point) * scale in float32 as
    DequantizeLinear computes it, is above ``min_logit``: values grow with q, so "value >
    min_logit" is "q >= that code" (256 when no code is; 0 without a threshold)."""
    if min_logit is None:
        return 0
    values = (np.arange(256, dtype=np.float32) - np.float32(zero_point)) * np.float32(scale)
    return int(np.searchsorted(values > min_logit, True))


@functools.lru_cache(maxsize=64)
def _cell_table(height: int, width: int, stride: float, anchors: bytes) -> np.ndarray:
    """float32 [A * H * W, 5]: (gx, gy, stride, anchor w, anchor h) of each row of a level, in
    ``decode_yolo``'s row order; ``anchors`` is the level's float32 (w, h) pairs as bytes."""
    sizes = np.frombuffer(anchors, dtype=np.float32).reshape(-1, 2)
    gy, gx = np.divmod(np.arange(height * width), width)
    table = np.empty((len(sizes), height * width, 5), dtype=np.float32)
    table[..., 0], table[..., 1], table[..., 2] = gx, gy, stride
    table[..., 3:5] = sizes[:, None, :]
    table = table.reshape(-1, 5)
    table.flags.writeable = False  # shared between calls
    return table


# SSD box-coder variances for centre and size (SSD reference implementation, torchvision).
SSD_VARIANCES = (0.1, 0.2)


@functools.lru_cache(maxsize=64)
def _prior_table(height: int, width: int, input_h: float, input_w: float, priors: bytes) -> np.ndarray:
    """float32 [A * H * W, 4]: (prior cx, cy, w, h) of each row of an SSDLite level, prior-major
    then row then column; ``priors`` is the level's float32 (w, h) pairs, already scaled, as bytes."""
    sizes = np.frombuffer(priors, dtype=np.float32).reshape(-1, 2)
    rows, cols = np.divmod(np.arange(height * width, dtype=np.float32), np.float32(width))
    table = np.empty((len(sizes), height * width, 4), dtype=np.float32)
    table[..., 0] = (cols + np.float32(0.5)) / np.float32(width) * np.float32(input_w)
    table[..., 1] = (rows + np.float32(0.5)) / np.float32(height) * np.float32(input_h)
    table[..., 2:4] = sizes[:, None, :]
    table = table.reshape(-1, 4)
    table.flags.writeable = False  # shared between calls
    return table


# A class probability is exp(l - top) / sum(exp(l' - top)) with a sum of at least 1 (the top
# logit's own term), so it is at most exp(l - top). ``decode_ssdlite`` drops rows whose best class
# logit is below top + log(min_score) by more than this margin (in logits), far above the float32
# rounding of the subtraction, so no row that could pass is dropped.
_SSD_SKIP_MARGIN = 1e-3


def decode_ssdlite(
    outputs: Sequence[np.ndarray],
    anchors: Sequence[Sequence[Sequence[float]]],
    num_classes: int,
    anchor_input_size: tuple[int, int],
    input_size: tuple[int, int] | None = None,
    variances: Sequence[float] = SSD_VARIANCES,
    min_score: float | None = None,
) -> np.ndarray:
    """Decode SSDLite raw maps (``litedet.models.heads.ssdlite``) into YOLO-style rows.

    Each level is [B, A * (5 + nc), H, W], channel ``a * (5 + nc) + k`` with ``k`` in
    (dx, dy, dw, dh, background logit, class logits...). For cell (row i, column j) and prior
    (pw, ph) (``anchors`` are in pixels at ``anchor_input_size`` (h, w) and scale with the actual
    ``input_size``)::

        cx = (j + 0.5) / W * input_w + dx * v0 * pw      w = pw * exp(dw * v1)
        cy = (i + 0.5) / H * input_h + dy * v0 * ph      h = ph * exp(dh * v1)

    Class scores are a softmax over background + classes with the background dropped. Returns
    [B, N, 5 + nc] rows (cx, cy, w, h, 1.0, class probabilities...), so the objectness column is 1
    and ``non_max_suppression`` scores each box by its class probability. With ``min_score``,
    rows that cannot score above it in any image of the batch are left out before the softmax
    (NMS would drop them): a class probability is at most exp(class logit - top logit), so a row
    whose best class logit is more than -log(min_score) below its top logit goes. In a trained
    model the background logit leads by that much in most rows. The rows kept, in order, are the
    rows without ``min_score``.
    """
    if min_score is not None and not 0.0 <= min_score < 1.0:
        raise ValueError(f"min_score must be in [0, 1), got {min_score}")
    height_in, width_in = anchor_input_size if input_size is None else input_size
    scale_w, scale_h = width_in / anchor_input_size[1], height_in / anchor_input_size[0]
    per_row = 5 + num_classes
    skip_below = None if not min_score else float(np.log(min_score)) - _SSD_SKIP_MARGIN
    picked, tables = [], []
    batch = 1
    # Work channel-major, [B, 5+nc, rows]: every reduction over the classes is then elementwise
    # across long vectors of rows (a reduction along short rows of 81 costs a call per row).
    for level, (raw, level_anchors) in enumerate(zip(outputs, anchors)):
        raw = np.asarray(raw, dtype=np.float32)
        priors = np.asarray(level_anchors, dtype=np.float32).reshape(-1, 2) * np.float32([scale_w, scale_h])
        num_priors = len(priors)
        if raw.ndim != 4 or raw.shape[1] != num_priors * per_row:
            raise ValueError(
                f"SSDLite output {level} has shape {raw.shape}; expected [B, {num_priors * per_row}, H, W] "
                f"for {num_priors} priors and {num_classes} classes"
            )
        batch, _, height, width = raw.shape
        maps = raw.reshape(batch, num_priors, per_row, height * width)
        table = _prior_table(height, width, float(height_in), float(width_in), priors.tobytes())
        if skip_below is not None:
            best = maps[:, :, 5:, :].max(axis=2)  # the best class logit against the top one (background too)
            keep = (best - np.maximum(best, maps[:, :, 4, :]) >= skip_below).reshape(batch, -1)
            index = np.flatnonzero(keep if batch == 1 else keep.any(axis=0))
            if len(index) < keep.shape[1]:
                prior, cell = np.divmod(index, height * width)
                # [B, A, 5+nc, HW][:, a, :, c] is [k, B, 5+nc] (index arrays apart go first)
                picked.append(maps[:, prior, :, cell].transpose(1, 2, 0))
                tables.append(table[index])
                continue
        # [B, A, 5+nc, HW] -> [B, 5+nc, A * HW]: rows prior-major, then row, then column
        picked.append(maps.transpose(0, 2, 1, 3).reshape(batch, per_row, -1))
        tables.append(table)
    rows = picked[0] if len(picked) == 1 else np.concatenate(picked, axis=2)  # [B, 5+nc, N]
    table = tables[0] if len(tables) == 1 else np.concatenate(tables)
    logits = rows[:, 4:, :]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    out = np.empty((batch, rows.shape[2], per_row), dtype=np.float32)
    deltas = rows[:, 0:4, :].transpose(0, 2, 1)
    out[..., 0:2] = table[:, 0:2] + deltas[..., 0:2] * np.float32(variances[0]) * table[:, 2:4]
    out[..., 2:4] = table[:, 2:4] * np.exp(np.minimum(deltas[..., 2:4] * np.float32(variances[1]), np.float32(20.0)))
    out[..., 4] = 1.0
    out[..., 5:] = probs[:, 1:, :].transpose(0, 2, 1)
    return out
