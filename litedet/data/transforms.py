"""Image -> network input: letterbox and normalisation, numpy + OpenCV only (no torch).

Shared by inference (every backend), evaluation and training, so a model sees the same pixels
everywhere. Images are OpenCV arrays: uint8 [H, W, 3] in BGR order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np

if TYPE_CHECKING:  # config imports nothing heavy, but keep the transform importable alone
    from litedet.config import ModelConfig


@dataclass(frozen=True)
class LetterboxInfo:
    """How one image was placed in the network input, enough to map boxes back.

    ``original_shape`` and ``shape`` are (height, width) before and after; ``ratio`` is the
    resize gain per axis (width, height), ``pad`` the (left, top) pixels added before the image.
    """

    original_shape: tuple[int, int]
    shape: tuple[int, int]
    ratio: tuple[float, float]
    pad: tuple[int, int]


def as_shape(size: int | Sequence[int]) -> tuple[int, int]:
    """``416`` or ``(h, w)`` -> (h, w), validated."""
    if isinstance(size, (int, np.integer)):
        shape = (int(size), int(size))
    else:
        shape = tuple(int(v) for v in size)
    if len(shape) != 2 or min(shape) <= 0:
        raise ValueError(f"image size must be N or (height, width) with positive values, got {size!r}")
    return shape  # type: ignore[return-value]


def ensure_bgr(image: np.ndarray) -> np.ndarray:
    """Grey [H, W] or [H, W, 1] and BGRA [H, W, 4] images -> BGR [H, W, 3] uint8."""
    image = np.asarray(image)
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an image [H, W, 3] (BGR), got shape {image.shape}")
    return image


def letterbox(
    image: np.ndarray,
    new_shape: int | Sequence[int] = 640,
    stride: int = 32,
    auto: bool = False,
    scaleup: bool = True,
    pad_value: int = 114,
    center: bool = True,
    interpolation: int = cv2.INTER_LINEAR,
) -> tuple[np.ndarray, LetterboxInfo]:
    """Resize keeping the aspect ratio, then pad (YOLOv5 ``utils/augmentations.letterbox``).

    The image is scaled by ``r = min(new_h / h, new_w / w)`` (never above 1 unless ``scaleup``)
    to ``(round(w * r), round(h * r))`` and padded with ``pad_value``. With ``auto`` the padding
    is only what makes each side a multiple of ``stride`` (a dynamic-shape engine: output shapes
    vary); otherwise the output is exactly ``new_shape`` (a static engine). ``center`` splits the
    padding between both sides as YOLOv5 does (the odd pixel goes right/bottom); otherwise all of
    it goes right/bottom.

    Returns the padded image and a ``LetterboxInfo`` whose ``pad`` and ``ratio`` are the exact
    integer offsets and per-axis gains used, so ``litedet.ops.scale_boxes`` inverts it.
    """
    image = np.asarray(image)
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"cannot letterbox an empty image of shape {image.shape}")
    new_h, new_w = as_shape(new_shape)
    if stride <= 0:
        raise ValueError(f"stride must be > 0, got {stride}")
    gain = min(new_h / height, new_w / width)
    if not scaleup:
        gain = min(gain, 1.0)
    resized_w, resized_h = max(1, int(round(width * gain))), max(1, int(round(height * gain)))
    pad_w, pad_h = new_w - resized_w, new_h - resized_h
    if auto:
        pad_w, pad_h = pad_w % stride, pad_h % stride
    if (resized_w, resized_h) != (width, height):
        image = cv2.resize(image, (resized_w, resized_h), interpolation=interpolation)
    if center:
        # YOLOv5: top, bottom = round(dh/2 - 0.1), round(dh/2 + 0.1)
        left, top = int(round(pad_w / 2 - 0.1)), int(round(pad_h / 2 - 0.1))
    else:
        left, top = 0, 0
    right, bottom = pad_w - left, pad_h - top
    if pad_w or pad_h:
        value = (pad_value,) * (image.shape[2] if image.ndim == 3 else 1)
        image = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=value)
    info = LetterboxInfo(
        original_shape=(height, width),
        shape=(int(image.shape[0]), int(image.shape[1])),
        ratio=(resized_w / width, resized_h / height),
        pad=(left, top),
    )
    return image, info


def stretch(image: np.ndarray, new_shape: int | Sequence[int], interpolation: int = cv2.INTER_LINEAR) -> tuple[np.ndarray, LetterboxInfo]:
    """Plain resize to ``new_shape`` ignoring the aspect ratio (models trained that way)."""
    height, width = image.shape[:2]
    new_h, new_w = as_shape(new_shape)
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    return resized, LetterboxInfo((height, width), (new_h, new_w), (new_w / width, new_h / height), (0, 0))


def to_tensor(image: np.ndarray, rgb: bool, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """BGR uint8 [H, W, 3] -> float32 [3, H, W]: channel order, then ``(x - mean) / std``."""
    chw = image.transpose(2, 0, 1)
    if rgb:
        chw = chw[::-1]
    out = chw.astype(np.float32)
    mean_arr = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std_arr = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    if mean_arr.any():
        out -= mean_arr
    out /= std_arr
    return out


def preprocess(
    images: Sequence[np.ndarray],
    config: "ModelConfig",
    auto: bool = False,
    new_shape: int | Sequence[int] | None = None,
    interpolation: int = cv2.INTER_LINEAR,
) -> tuple[np.ndarray, list[LetterboxInfo]]:
    """Images (BGR uint8) -> (float32 batch [B, 3, H, W], one ``LetterboxInfo`` per image).

    Follows ``config.preprocess``: letterbox (or stretch) to ``new_shape`` (default
    ``config.input_size``), padding only to a multiple of the largest stride when ``auto``;
    BGR -> RGB when ``rgb``; ``(x - mean) / std``. With ``auto`` all images must come out the
    same shape to share a batch.
    """
    if len(images) == 0:
        raise ValueError("preprocess needs at least one image")
    spec = config.preprocess
    target = config.input_size if new_shape is None else as_shape(new_shape)
    stride = max(config.strides) if config.strides else 32
    tensors, infos = [], []
    for image in images:
        image = ensure_bgr(image)
        if spec.resize == "letterbox":
            boxed, info = letterbox(
                image, target, stride=stride, auto=auto, pad_value=spec.pad_value, center=spec.center,
                interpolation=interpolation,
            )
        else:
            boxed, info = stretch(image, target, interpolation=interpolation)
        tensors.append(to_tensor(boxed, spec.rgb, spec.mean, spec.std))
        infos.append(info)
    shapes = {t.shape for t in tensors}
    if len(shapes) > 1:
        raise ValueError(f"images letterboxed to different shapes {sorted(shapes)}; batch them one at a time")
    return np.stack(tensors), infos
