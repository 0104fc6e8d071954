"""Detection augmentations: mosaic, random affine (scale, translate, optional rotation/shear),
HSV jitter, horizontal flip and letterbox. numpy + OpenCV, torch-free.

Every geometric function takes and returns the image together with its boxes, so a box can never
be moved without its pixels: images are OpenCV arrays uint8 [H, W, 3] (BGR), boxes float32
[N, 4] (x1, y1, x2, y2) pixels of that image, class ids int64 [N]. Randomness comes only from
the ``numpy.random.Generator`` passed in, so a sample is reproducible from its seed.

Written by hand rather than with albumentations: its original package is no longer maintained
(its successor is AGPL-licensed), its mosaic needs a different data flow, and the pieces below are
short. The recipe and the default strengths are YOLOv5's (``hyp.scratch-low.yaml``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Sequence

import cv2
import numpy as np

from litedet.data.transforms import letterbox

PAD_VALUE = 114


@dataclass
class AugmentConfig:
    """Strengths of each augmentation (0 switches one off). Defaults: YOLOv5 hyp.scratch-low."""

    mosaic: float = 1.0  # probability of a 4-image mosaic
    degrees: float = 0.0  # rotation range (+/- degrees)
    translate: float = 0.1  # translation range (+/- fraction of the output size)
    scale: float = 0.5  # scale range (1 +/- scale)
    shear: float = 0.0  # shear range (+/- degrees)
    fliplr: float = 0.5  # probability of a horizontal flip
    hsv_h: float = 0.015  # hue gain range (fraction)
    hsv_s: float = 0.7  # saturation gain range (fraction)
    hsv_v: float = 0.4  # value gain range (fraction)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"augment.{f.name} must be a number >= 0, got {value!r}")
        for name in ("mosaic", "fliplr"):
            if getattr(self, name) > 1:
                raise ValueError(f"augment.{name} is a probability in [0, 1], got {getattr(self, name)}")

    @classmethod
    def off(cls) -> "AugmentConfig":
        """No augmentation at all (letterbox only)."""
        return cls(mosaic=0, degrees=0, translate=0, scale=0, shear=0, fliplr=0, hsv_h=0, hsv_s=0, hsv_v=0)


def resize_long_side(image: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize so the long side is ``size`` (keeping the aspect ratio); boxes scaled with it."""
    height, width = image.shape[:2]
    gain = size / max(height, width)
    if gain != 1:
        interpolation = cv2.INTER_LINEAR if gain > 1 else cv2.INTER_AREA
        image = cv2.resize(image, (max(1, round(width * gain)), max(1, round(height * gain))), interpolation=interpolation)
        boxes = boxes * np.array([image.shape[1] / width, image.shape[0] / height] * 2, dtype=np.float32)
    return image, boxes.astype(np.float32)


def letterbox_with_boxes(image: np.ndarray, boxes: np.ndarray, size: int | Sequence[int],
                         stride: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``litedet.data.transforms.letterbox`` (the inference letterbox) with the boxes mapped the
    same way: ``box * ratio + pad``."""
    boxed, info = letterbox(image, size, stride=stride, auto=False, pad_value=PAD_VALUE)
    ratio_w, ratio_h = info.ratio
    left, top = info.pad
    mapped = boxes * np.array([ratio_w, ratio_h, ratio_w, ratio_h], np.float32) + np.array([left, top, left, top], np.float32)
    return boxed, mapped.astype(np.float32)


def mosaic4(images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], classes: Sequence[np.ndarray], size: int,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four images around a random centre on a ``2*size`` square canvas (YOLOv4 mosaic; YOLOv5
    ``load_mosaic``). Images should already have their long side at ``size``. Boxes are shifted
    with their image and clipped to the part of it that is pasted; the canvas is meant to be cut
    to ``size`` by ``random_affine(..., border=-size // 2)``."""
    if not len(images) == len(boxes) == len(classes) == 4:
        raise ValueError(f"mosaic4 needs 4 images, boxes and classes, got {len(images)}/{len(boxes)}/{len(classes)}")
    canvas = np.full((2 * size, 2 * size, 3), PAD_VALUE, dtype=np.uint8)
    # Centre in [size/2, 3*size/2): every tile shows at least part of its image.
    xc, yc = (int(rng.uniform(size // 2, 3 * size // 2)) for _ in range(2))
    out_boxes, out_classes = [], []
    for index, (image, image_boxes, image_classes) in enumerate(zip(images, boxes, classes)):
        h, w = image.shape[:2]
        if index == 0:  # top left: the image's bottom-right corner at the centre
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b = w - (x2a - x1a), h - (y2a - y1a)
        elif index == 1:  # top right
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, 2 * size), yc
            x1b, y1b = 0, h - (y2a - y1a)
        elif index == 2:  # bottom left
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(2 * size, yc + h)
            x1b, y1b = w - (x2a - x1a), 0
        else:  # bottom right
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, 2 * size), min(2 * size, yc + h)
            x1b, y1b = 0, 0
        x2b, y2b = x1b + (x2a - x1a), y1b + (y2a - y1a)
        canvas[y1a:y2a, x1a:x2a] = image[y1b:y2b, x1b:x2b]
        if len(image_boxes):
            shifted = image_boxes + np.array([x1a - x1b, y1a - y1b] * 2, dtype=np.float32)
            # Clip to the pasted tile, not only the canvas: the rest of the image is not there.
            shifted[:, [0, 2]] = shifted[:, [0, 2]].clip(x1a, x2a)
            shifted[:, [1, 3]] = shifted[:, [1, 3]].clip(y1a, y2a)
            visible = (shifted[:, 2] > shifted[:, 0]) & (shifted[:, 3] > shifted[:, 1])
            out_boxes.append(shifted[visible])
            out_classes.append(image_classes[visible])
    all_boxes = np.concatenate(out_boxes).astype(np.float32) if out_boxes else np.zeros((0, 4), np.float32)
    all_classes = np.concatenate(out_classes).astype(np.int64) if out_classes else np.zeros(0, np.int64)
    return canvas, all_boxes, all_classes


def box_candidates(before: np.ndarray, after: np.ndarray, min_size: float = 2.0, min_area_ratio: float = 0.1,
                   max_aspect: float = 20.0) -> np.ndarray:
    """Boxes worth keeping after a transform (YOLOv5 ``box_candidates``): at least ``min_size``
    pixels wide and high, at least ``min_area_ratio`` of their transformed-but-unclipped area
    left, aspect ratio below ``max_aspect``. ``before`` is the scaled box before clipping."""
    w1, h1 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w2, h2 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    aspect = np.maximum(w2 / (h2 + 1e-16), h2 / (w2 + 1e-16))
    return (w2 > min_size) & (h2 > min_size) & (w2 * h2 / (w1 * h1 + 1e-16) > min_area_ratio) & (aspect < max_aspect)


def random_affine(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray, rng: np.random.Generator,
                  degrees: float = 0.0, translate: float = 0.1, scale: float = 0.5, shear: float = 0.0,
                  border: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random rotation/scale/shear about the image centre, then a random translation (YOLOv5
    ``random_perspective`` without the perspective term). The output is the input size plus
    ``2*border`` on each axis (``border=-size//2`` cuts a mosaic canvas to ``size``).

    Box corners go through the same matrix; the new box is their bounding box, clipped to the
    output and kept only if ``box_candidates`` says so (exact for scale and translation; with
    rotation or shear the corner box is loose, as in YOLOv5).
    """
    height, width = image.shape[0] + 2 * border, image.shape[1] + 2 * border
    if height <= 0 or width <= 0:
        raise ValueError(f"border {border} leaves no image from shape {image.shape[:2]}")
    centre = np.eye(3)
    centre[0, 2], centre[1, 2] = -image.shape[1] / 2, -image.shape[0] / 2
    rotation = np.eye(3)
    angle = rng.uniform(-degrees, degrees) if degrees else 0.0
    gain = rng.uniform(1 - scale, 1 + scale) if scale else 1.0
    rotation[:2] = cv2.getRotationMatrix2D((0, 0), angle, gain)
    shearing = np.eye(3)
    if shear:
        shearing[0, 1] = math.tan(math.radians(rng.uniform(-shear, shear)))
        shearing[1, 0] = math.tan(math.radians(rng.uniform(-shear, shear)))
    moving = np.eye(3)
    moving[0, 2] = (rng.uniform(0.5 - translate, 0.5 + translate) if translate else 0.5) * width
    moving[1, 2] = (rng.uniform(0.5 - translate, 0.5 + translate) if translate else 0.5) * height
    matrix = moving @ shearing @ rotation @ centre  # right to left: centre, rotate+scale, shear, move
    if border != 0 or not np.allclose(matrix, np.eye(3)):
        image = cv2.warpAffine(image, matrix[:2], dsize=(width, height), borderValue=(PAD_VALUE,) * 3)
    if not len(boxes):
        return image, boxes.reshape(0, 4).astype(np.float32), classes.reshape(0).astype(np.int64)
    corners = np.ones((len(boxes) * 4, 3))
    corners[:, :2] = boxes[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(-1, 2)  # (x1,y1) (x2,y2) (x1,y2) (x2,y1)
    moved = (corners @ matrix.T)[:, :2].reshape(-1, 8)
    xs, ys = moved[:, [0, 2, 4, 6]], moved[:, [1, 3, 5, 7]]
    new = np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1)
    clipped = new.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    keep = box_candidates(new, clipped)
    return image, clipped[keep].astype(np.float32), classes[keep].astype(np.int64)


def hsv_jitter(image: np.ndarray, rng: np.random.Generator, hue: float = 0.015, saturation: float = 0.7,
               value: float = 0.4) -> np.ndarray:
    """Random gains on hue, saturation and value through lookup tables (YOLOv5
    ``augment_hsv``). Geometry is untouched, so boxes need no change."""
    if not (hue or saturation or value):
        return image
    gains = rng.uniform(-1, 1, 3) * [hue, saturation, value] + 1
    hue_channel, sat_channel, val_channel = cv2.split(cv2.cvtColor(image, cv2.COLOR_BGR2HSV))
    levels = np.arange(0, 256, dtype=np.float32)
    lut_hue = ((levels * gains[0]) % 180).astype(np.uint8)  # OpenCV hue is 0..179
    lut_sat = np.clip(levels * gains[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(levels * gains[2], 0, 255).astype(np.uint8)
    merged = cv2.merge((cv2.LUT(hue_channel, lut_hue), cv2.LUT(sat_channel, lut_sat), cv2.LUT(val_channel, lut_val)))
    return cv2.cvtColor(merged, cv2.COLOR_HSV2BGR)


def horizontal_flip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right; x1' = W - x2, x2' = W - x1."""
    width = image.shape[1]
    flipped = boxes.copy()
    flipped[:, 0], flipped[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), flipped


def augment_sample(load: Any, index: int, size: int, config: AugmentConfig, rng: np.random.Generator,
                   num_items: int, use_mosaic: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The training recipe for one sample: mosaic (with probability ``config.mosaic``) or
    letterbox, then random affine, HSV jitter and horizontal flip. ``load(i)`` returns
    ``(image resized to long side size, boxes, classes)`` of item ``i``; ``num_items`` is the
    dataset length (mosaic partners are drawn from it). The result is ``size`` x ``size``."""
    if use_mosaic and config.mosaic > 0 and rng.random() < config.mosaic:
        indices = [index] + [int(i) for i in rng.integers(0, num_items, 3)]
        parts = [load(i) for i in indices]
        image, boxes, classes = mosaic4([p[0] for p in parts], [p[1] for p in parts], [p[2] for p in parts], size, rng)
        border = -size // 2
    else:
        image, boxes, classes = load(index)
        image, boxes = letterbox_with_boxes(image, boxes, size)
        border = 0
    image, boxes, classes = random_affine(image, boxes, classes, rng, degrees=config.degrees, translate=config.translate,
                                          scale=config.scale, shear=config.shear, border=border)
    image = hsv_jitter(image, rng, config.hsv_h, config.hsv_s, config.hsv_v)
    if config.fliplr > 0 and rng.random() < config.fliplr:
        image, boxes = horizontal_flip(image, boxes)
    return image, boxes, classes
