"""Image -> network input: letterbox and normalisation, numpy + OpenCV only (no torch).

Shared by inference (every backend), evaluation and training, so a model sees the same pixels
everywhere. Images are OpenCV arrays: uint8 [H, W, 3] in BGR order.
"""

from __future__ import annotations

import threading
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


@dataclass(frozen=True)
class LetterboxGeometry:
    """Where a letterbox puts an image: resized to (``resized_h``, ``resized_w``) at (``left``,
    ``top``) inside an output of (``height``, ``width``)."""

    resized_h: int
    resized_w: int
    top: int
    left: int
    height: int
    width: int

    def info(self, original_shape: tuple[int, int]) -> LetterboxInfo:
        height, width = original_shape
        return LetterboxInfo(
            original_shape=(height, width),
            shape=(self.height, self.width),
            ratio=(self.resized_w / width, self.resized_h / height),
            pad=(self.left, self.top),
        )


def letterbox_geometry(
    shape: tuple[int, int],
    new_shape: int | Sequence[int] = 640,
    stride: int = 32,
    auto: bool = False,
    scaleup: bool = True,
    center: bool = True,
) -> LetterboxGeometry:
    """The placement ``letterbox`` uses for an image of ``shape`` (height, width); see there."""
    height, width = shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"cannot letterbox an empty image of shape {tuple(shape)}")
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
    if center:
        # YOLOv5: top, bottom = round(dh/2 - 0.1), round(dh/2 + 0.1)
        left, top = int(round(pad_w / 2 - 0.1)), int(round(pad_h / 2 - 0.1))
    else:
        left, top = 0, 0
    return LetterboxGeometry(resized_h, resized_w, top, left, resized_h + pad_h, resized_w + pad_w)


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
    geometry = letterbox_geometry(image.shape[:2], new_shape, stride, auto, scaleup, center)
    original_shape = (int(image.shape[0]), int(image.shape[1]))
    if (geometry.resized_w, geometry.resized_h) != (original_shape[1], original_shape[0]):
        image = cv2.resize(image, (geometry.resized_w, geometry.resized_h), interpolation=interpolation)
    right = geometry.width - geometry.resized_w - geometry.left
    bottom = geometry.height - geometry.resized_h - geometry.top
    if geometry.left or geometry.top or right or bottom:
        value = (pad_value,) * (image.shape[2] if image.ndim == 3 else 1)
        image = cv2.copyMakeBorder(image, geometry.top, bottom, geometry.left, right, cv2.BORDER_CONSTANT, value=value)
    return image, geometry.info(original_shape)


def stretch(image: np.ndarray, new_shape: int | Sequence[int], interpolation: int = cv2.INTER_LINEAR) -> tuple[np.ndarray, LetterboxInfo]:
    """Plain resize to ``new_shape`` ignoring the aspect ratio (models trained that way)."""
    height, width = image.shape[:2]
    new_h, new_w = as_shape(new_shape)
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    return resized, LetterboxInfo((height, width), (new_h, new_w), (new_w / width, new_h / height), (0, 0))


def _normalise_into(image: np.ndarray, out: np.ndarray, rgb: bool, mean: np.ndarray, std: np.ndarray) -> None:
    """BGR uint8 [h, w, 3] -> ``out`` float32 [3, h, w] (a view is fine): channel order, then
    ``(x - mean) / std`` in float32, the same arithmetic as ``to_tensor``, on contiguous planes."""
    planes = cv2.split(image)  # three contiguous uint8 planes: far faster than a strided transpose
    for channel in range(3):
        plane = planes[2 - channel] if rgb else planes[channel]
        target = out[channel]
        if mean[channel]:
            np.subtract(plane, mean[channel], out=target, dtype=np.float32)
            np.divide(target, std[channel], out=target)
        else:
            np.divide(plane, std[channel], out=target, dtype=np.float32)


def _channel_constants(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    mean_arr = np.asarray(mean, dtype=np.float32).reshape(3)
    std_arr = np.asarray(std, dtype=np.float32).reshape(3)
    if not np.all(std_arr != 0):
        raise ValueError(f"preprocess std must be non-zero per channel, got {list(std)}")
    return mean_arr, std_arr


def to_tensor(image: np.ndarray, rgb: bool, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """BGR uint8 [H, W, 3] -> float32 [3, H, W]: channel order, then ``(x - mean) / std``."""
    mean_arr, std_arr = _channel_constants(mean, std)
    out = np.empty((3, *image.shape[:2]), dtype=np.float32)
    _normalise_into(np.ascontiguousarray(image), out, rgb, mean_arr, std_arr)
    return out


class Preprocessor:
    """BGR uint8 image -> (network input [1, ...], ``LetterboxInfo``) by ``config.preprocess``, fast.

    The network input is float32 [1, 3, H, W], normalised; or, for an engine that normalises in
    its graph (``config.uint8_input``), the letterboxed image itself, uint8 [1, H, W, 3] BGR,
    which the resize writes straight into. Gives exactly the values of ``preprocess`` (same
    geometry, same float32 arithmetic), but resizes once, converts only the image region (the
    padding of a reused buffer is written when the placement changes, i.e. once per video) and
    never allocates per frame. The returned array is one of ``buffers`` reused buffers per
    thread: it stays valid until ``buffers`` more calls on the same thread, so a pipeline with k
    frames in flight needs ``buffers > k``.
    """

    def __init__(
        self,
        config: "ModelConfig",
        new_shape: int | Sequence[int] | None = None,
        auto: bool = False,
        interpolation: int = cv2.INTER_LINEAR,
        buffers: int = 2,
    ) -> None:
        if buffers < 1:
            raise ValueError(f"buffers must be >= 1, got {buffers}")
        spec = config.preprocess
        self.letterbox = spec.resize == "letterbox"
        self.target = config.input_size if new_shape is None else as_shape(new_shape)
        self.stride = max(config.strides) if config.strides else 32
        self.auto, self.center, self.interpolation = auto, spec.center, interpolation
        self.rgb = spec.rgb
        self.mean, self.std = _channel_constants(spec.mean, spec.std)
        # the normalised pad value, by the same float32 arithmetic as the image pixels
        pad = np.full(3, spec.pad_value, dtype=np.float32)
        self.pad = (pad - self.mean) / self.std
        self.uint8 = config.uint8_input  # the engine normalises: the buffer holds the BGR pixels
        self.pad_value = spec.pad_value
        self.buffers = buffers
        self._local = threading.local()
        self._placements: dict[tuple[int, ...], tuple[LetterboxGeometry, LetterboxInfo, bool, slice, slice]] = {}

    def geometry(self, shape: tuple[int, int]) -> LetterboxGeometry:
        if self.letterbox:
            return letterbox_geometry(shape, self.target, self.stride, self.auto, True, self.center)
        height, width = self.target
        return LetterboxGeometry(height, width, 0, 0, height, width)

    def _buffer(self, geometry: LetterboxGeometry) -> np.ndarray:
        local = self._local
        ring = getattr(local, "ring", None)
        if ring is None or len(ring) != self.buffers:
            ring = local.ring = [None] * self.buffers
            local.next = 0
        index = local.next
        local.next = (index + 1) % self.buffers
        entry = ring[index]
        if entry is not None and (entry[0] is geometry or entry[0] == geometry):
            return entry[1]
        size = (geometry.height, geometry.width)
        shape = (1, *size, 3) if self.uint8 else (1, 3, *size)
        if entry is None or entry[1].shape != shape:
            buffer = np.empty(shape, dtype=np.uint8 if self.uint8 else np.float32)
            self._fill(buffer, slice(None), slice(None))
        else:  # same size, new placement (images of another shape): refill only the pad strips
            buffer = entry[1]
            bottom, right = geometry.top + geometry.resized_h, geometry.left + geometry.resized_w
            self._fill(buffer, slice(None, geometry.top), slice(None))
            self._fill(buffer, slice(bottom, None), slice(None))
            self._fill(buffer, slice(geometry.top, bottom), slice(None, geometry.left))
            self._fill(buffer, slice(geometry.top, bottom), slice(right, None))
        ring[index] = (geometry, buffer)
        return buffer

    def _fill(self, buffer: np.ndarray, rows: slice, cols: slice) -> None:
        """Write the pad value into ``rows`` x ``cols`` of the first image of ``buffer``, one
        scalar fill per contiguous plane (broadcasting a 3-value pattern is ~50x slower)."""
        if self.uint8:
            buffer[0, rows, cols] = self.pad_value  # one pad value for every channel
        else:
            for channel in range(3):
                buffer[0, channel, rows, cols] = self.pad[channel]

    def _placement(self, shape: tuple[int, ...]) -> tuple[LetterboxGeometry, LetterboxInfo, bool, slice, slice]:
        """Geometry, info, whether to resize, and the image region's rows and columns for images
        of ``shape``: computed once per shape (a video or camera has one), as right after
        inference even this arithmetic costs tens of microseconds."""
        placement = self._placements.get(shape[:2])
        if placement is None:
            original_shape = (int(shape[0]), int(shape[1]))
            geometry = self.geometry(original_shape)
            resize = (geometry.resized_w, geometry.resized_h) != (original_shape[1], original_shape[0])
            rows = slice(geometry.top, geometry.top + geometry.resized_h)
            cols = slice(geometry.left, geometry.left + geometry.resized_w)
            placement = (geometry, geometry.info(original_shape), resize, rows, cols)
            if len(self._placements) >= 64:  # a folder of many sizes: keep the memory bounded
                self._placements.clear()
            self._placements[shape[:2]] = placement
        return placement

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, LetterboxInfo]:
        image = ensure_bgr(image)
        geometry, info, resize, rows, cols = self._placement(image.shape)
        buffer = self._buffer(geometry)
        if self.uint8:  # resize straight into the buffer; the engine does the rest
            region = buffer[0, rows, cols]
            if resize:
                written = cv2.resize(image, (geometry.resized_w, geometry.resized_h), dst=region, interpolation=self.interpolation)
                if written is not region:  # an OpenCV that would not write into the view
                    region[...] = written
            else:
                region[...] = image
            return buffer, info
        if resize:
            image = cv2.resize(image, (geometry.resized_w, geometry.resized_h), interpolation=self.interpolation)
        _normalise_into(image, buffer[0, :, rows, cols], self.rgb, self.mean, self.std)
        return buffer, info


def preprocess(
    images: Sequence[np.ndarray],
    config: "ModelConfig",
    auto: bool = False,
    new_shape: int | Sequence[int] | None = None,
    interpolation: int = cv2.INTER_LINEAR,
) -> tuple[np.ndarray, list[LetterboxInfo]]:
    """Images (BGR uint8) -> (float32 batch [B, 3, H, W], one ``LetterboxInfo`` per image); for a
    ``config.uint8_input`` engine the uint8 batch [B, H, W, 3] of letterboxed BGR images.

    Follows ``config.preprocess``: letterbox (or stretch) to ``new_shape`` (default
    ``config.input_size``), padding only to a multiple of the largest stride when ``auto``;
    BGR -> RGB when ``rgb``; ``(x - mean) / std``. With ``auto`` all images must come out the
    same shape to share a batch. A new array each call (``Preprocessor`` reuses its buffers).
    """
    if len(images) == 0:
        raise ValueError("preprocess needs at least one image")
    transform = Preprocessor(config, new_shape, auto=auto, interpolation=interpolation, buffers=1)
    tensors, infos = [], []
    for image in images:
        batch, info = transform(image)
        tensors.append(batch[0].copy())
        infos.append(info)
    shapes = {t.shape for t in tensors}
    if len(shapes) > 1:
        raise ValueError(f"images letterboxed to different shapes {sorted(shapes)}; batch them one at a time")
    return np.stack(tensors), infos
