"""Augmentations move boxes with their pixels: filled rectangles of unique colours are drawn, each
augmentation runs, and every output box must be the bounding box of its colour's pixels."""

from __future__ import annotations

import numpy as np
import pytest

from litedet.data.augment import (
    AugmentConfig,
    augment_sample,
    horizontal_flip,
    hsv_jitter,
    letterbox_with_boxes,
    mosaic4,
    random_affine,
)

# Saturated, far-apart colours (BGR); one per rectangle in a test, so a colour names one box.
COLOURS = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
                    (255, 255, 255), (0, 128, 255), (255, 128, 0), (128, 0, 255), (0, 255, 128), (128, 255, 0)])
BACKGROUND = 30  # dark grey, distinct from the 114 padding and from every colour
TOLERANCE = 2.0  # pixels: interpolation blurs one pixel on each side


def synthetic(width: int, height: int, boxes: list[tuple[int, int, int, int]], first_colour: int):
    """An image with each box filled in its own colour; class id = colour index."""
    image = np.full((height, width, 3), BACKGROUND, np.uint8)
    for offset, (x1, y1, x2, y2) in enumerate(boxes):
        image[y1:y2, x1:x2] = COLOURS[first_colour + offset]
    classes = np.arange(first_colour, first_colour + len(boxes), dtype=np.int64)
    return image, np.asarray(boxes, np.float32).reshape(-1, 4), classes


def colour_mask(image: np.ndarray, colour: int) -> np.ndarray:
    distance = np.abs(image.astype(np.int32) - COLOURS[colour]).sum(axis=2)
    return distance < 90


def check_consistent(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray, all_classes) -> None:
    """Every box is the bounding box of its colour (within TOLERANCE); every clearly visible
    colour has a box (boxes are only dropped when little of them is left)."""
    height, width = image.shape[:2]
    assert boxes.shape == (len(classes), 4)
    assert (boxes[:, [0, 2]] >= 0).all() and (boxes[:, [0, 2]] <= width).all()
    assert (boxes[:, [1, 3]] >= 0).all() and (boxes[:, [1, 3]] <= height).all()
    assert len(set(classes.tolist())) == len(classes), "a colour appears in two boxes"
    for box, cls in zip(boxes, classes):
        ys, xs = np.nonzero(colour_mask(image, int(cls)))
        assert len(xs), f"box {box} of colour {cls} has no pixels of that colour"
        mask_box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
        np.testing.assert_allclose(box, mask_box, atol=TOLERANCE, err_msg=f"colour {cls}")
    for cls in all_classes:
        if cls in classes:
            continue
        mask = colour_mask(image, int(cls))
        ys, xs = np.nonzero(mask)
        # Rectangles are at most 30x30 and scaled at most 1.5x (area <= 2025), so a dropped box
        # (< 10 % of its area left) shows at most ~203 pixels.
        assert mask.sum() < 400 or min(xs.ptp(), ys.ptp()) < 4, f"colour {cls} visible ({mask.sum()} px) without a box"


def tile(seed: int, first_colour: int, width: int = 128, height: int = 96):
    rng = np.random.default_rng(seed)
    boxes = []
    # Three non-overlapping rectangles of 12..30 px in a row of slots.
    for slot in range(3):
        w, h = (int(v) for v in rng.integers(12, 31, 2))
        x1 = slot * (width // 3) + int(rng.integers(0, width // 3 - w))
        y1 = int(rng.integers(0, height - h))
        boxes.append((x1, y1, x1 + w, y1 + h))
    return synthetic(width, height, boxes, first_colour)


@pytest.mark.parametrize("seed", range(6))
def test_mosaic_then_affine(seed):
    rng = np.random.default_rng(seed)
    tiles = [tile(seed * 10 + i, 3 * i) for i in range(4)]
    canvas, boxes, classes = mosaic4([t[0] for t in tiles], [t[1] for t in tiles], [t[2] for t in tiles], 128, rng)
    assert canvas.shape == (256, 256, 3)
    check_consistent(canvas, boxes, classes, range(12))
    image, boxes, classes = random_affine(canvas, boxes, classes, rng, translate=0.1, scale=0.5, border=-64)
    assert image.shape == (128, 128, 3)
    check_consistent(image, boxes, classes, range(12))


@pytest.mark.parametrize("seed", range(6))
def test_affine_scale_translate(seed):
    rng = np.random.default_rng(100 + seed)
    image, boxes, classes = tile(seed, 0)
    out, out_boxes, out_classes = random_affine(image, boxes, classes, rng, translate=0.2, scale=0.5)
    assert out.shape == image.shape
    check_consistent(out, out_boxes, out_classes, range(3))


def test_affine_identity_keeps_everything():
    image, boxes, classes = tile(0, 0)
    out, out_boxes, out_classes = random_affine(image, boxes, classes, np.random.default_rng(0), translate=0, scale=0)
    np.testing.assert_array_equal(out, image)
    np.testing.assert_allclose(out_boxes, boxes)


def test_horizontal_flip():
    image, boxes, classes = tile(3, 0)
    flipped, flipped_boxes = horizontal_flip(image, boxes)
    check_consistent(flipped, flipped_boxes, classes, range(3))
    np.testing.assert_allclose(flipped_boxes[:, 0], image.shape[1] - boxes[:, 2])


@pytest.mark.parametrize("width, height", [(100, 60), (60, 100), (128, 128)])
def test_letterbox_non_square(width, height):
    image, boxes, classes = synthetic(width, height, [(5, 5, 25, 30), (30, 40, 55, 58)], 0)
    boxed, mapped = letterbox_with_boxes(image, boxes, 160)
    assert boxed.shape == (160, 160, 3)
    check_consistent(boxed, mapped, classes, range(2))


def test_hsv_changes_colours_not_geometry():
    image, _, _ = tile(1, 0)
    out = hsv_jitter(image, np.random.default_rng(0), 0.015, 0.7, 0.4)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out, image)
    # Background and rectangles keep their places: the set of non-background pixels is the same.
    np.testing.assert_array_equal(np.abs(out.astype(int) - BACKGROUND).sum(2) > 40,
                                  np.abs(image.astype(int) - BACKGROUND).sum(2) > 40)
    assert hsv_jitter(image, np.random.default_rng(0), 0, 0, 0) is image


@pytest.mark.parametrize("seed", range(8))
def test_full_recipe_without_colour_jitter(seed):
    tiles = [tile(seed * 7 + i, 3 * i) for i in range(4)]

    def load(index):
        return tiles[index]

    config = AugmentConfig(mosaic=0.5, translate=0.1, scale=0.5, fliplr=0.5, hsv_h=0, hsv_s=0, hsv_v=0)
    rng = np.random.default_rng(seed)
    image, boxes, classes = augment_sample(load, seed % 4, 128, config, rng, num_items=4)
    assert image.shape == (128, 128, 3)
    # mosaic may draw the same tile twice; its colours then appear twice, so check only unique draws
    if len(set(classes.tolist())) == len(classes):
        check_consistent(image, boxes, classes, [c for c in range(12) if c in classes])


def test_same_seed_same_sample():
    tiles = [tile(i, 3 * i) for i in range(4)]
    config = AugmentConfig()
    first = augment_sample(lambda i: tiles[i], 1, 128, config, np.random.default_rng([0, 3, 1]), 4)
    second = augment_sample(lambda i: tiles[i], 1, 128, config, np.random.default_rng([0, 3, 1]), 4)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_config_checks():
    with pytest.raises(ValueError, match="augment.mosaic is a probability"):
        AugmentConfig(mosaic=2)
    with pytest.raises(ValueError, match="augment.scale must be a number >= 0"):
        AugmentConfig(scale=-1)
