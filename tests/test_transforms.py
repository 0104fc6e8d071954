"""Image -> network input: letterbox, stretch and to_tensor, checked against hand-written numpy/OpenCV."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from litedet.config import ModelConfig
from litedet.data.transforms import LetterboxInfo, Preprocessor, letterbox, preprocess, stretch, to_tensor
from litedet.ops import scale_boxes


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _reference_tensor(image: np.ndarray, rgb: bool, mean, std) -> np.ndarray:
    """The documented formula: channel order, then (x - mean) / std in float32, CHW."""
    pixels = image[..., ::-1] if rgb else image
    chw = pixels.transpose(2, 0, 1).astype(np.float32)
    return (chw - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]


# ---------------------------------------------------------------- letterbox


def test_letterbox_default_target_is_a_640_square():
    # 48 x 64 scales by 10 to 480 x 640, then 160 rows of padding split 80 / 80
    image = np.full((48, 64, 3), 7, np.uint8)
    out, info = letterbox(image)
    assert out.shape == (640, 640, 3)
    assert info == LetterboxInfo((48, 64), (640, 640), (10.0, 10.0), (0, 80))
    assert (out[80:560] == 7).all() and (out[:80] == 114).all() and (out[560:] == 114).all()


def test_letterbox_auto_default_stride_is_32():
    # 50 x 64 -> 500 x 640: 140 rows short of 640, 140 % 32 = 12 rows of padding (6 on top)
    image = _image(50, 64)
    out, info = letterbox(image, auto=True)
    assert out.shape == (512, 640, 3)
    assert info.shape == (512, 640) and info.pad == (0, 6)
    explicit, explicit_info = letterbox(image, stride=32, auto=True)
    assert np.array_equal(out, explicit) and info == explicit_info


@pytest.mark.parametrize("interpolation", [cv2.INTER_NEAREST, cv2.INTER_AREA, cv2.INTER_CUBIC])
def test_letterbox_resizes_with_the_requested_interpolation(interpolation):
    # same aspect ratio (5 x 7 -> 10 x 14): the output is exactly OpenCV's resize, no padding
    image = _image(5, 7)
    out, info = letterbox(image, (10, 14), interpolation=interpolation)
    expected = cv2.resize(image, (14, 10), interpolation=interpolation)
    assert not np.array_equal(expected, cv2.resize(image, (14, 10), interpolation=cv2.INTER_LINEAR))
    assert np.array_equal(out, expected)
    assert info.pad == (0, 0) and info.ratio == (2.0, 2.0)


def test_letterbox_default_interpolation_is_linear():
    image = _image(5, 7)
    out, _ = letterbox(image, (10, 14))
    assert np.array_equal(out, cv2.resize(image, (14, 10), interpolation=cv2.INTER_LINEAR))


@pytest.mark.parametrize("auto", [False, True])
def test_letterbox_at_the_target_size_returns_the_image_without_a_copy(auto):
    # nothing to resize or pad (64 x 96 is already a multiple of 32): no resample, no copy
    image = _image(64, 96)
    out, info = letterbox(image, (64, 96), auto=auto)
    assert out is image
    assert info == LetterboxInfo((64, 96), (64, 96), (1.0, 1.0), (0, 0))


def test_letterbox_empty_image_error_names_height_and_width():
    with pytest.raises(ValueError, match=r"cannot letterbox an empty image of shape \(0, 5\)$"):
        letterbox(np.zeros((0, 5, 3), np.uint8), 32)


@pytest.mark.parametrize("pad_value", [0, 255])
@pytest.mark.parametrize("center", [True, False])
def test_letterbox_pads_with_pad_value_and_keeps_the_image_block(pad_value, center):
    # 20 x 10 -> gain 2 -> 40 x 20 inside 40 x 41: 21 columns of padding, 10 left / 11 right when centred
    image = np.full((20, 10, 3), 77, np.uint8)
    out, info = letterbox(image, (40, 41), pad_value=pad_value, center=center)
    left = 10 if center else 0
    assert out.shape == (40, 41, 3) and info.pad == (left, 0) and info.ratio == (2.0, 2.0)
    assert (out[:, left:left + 20] == 77).all()
    assert (out[:, :left] == pad_value).all() and (out[:, left + 20:] == pad_value).all()


def test_letterbox_ratio_and_pad_unmap_a_box_exactly():
    # a white block at x 3..9, y 2..5 of a 12 x 16 image; gain 2 with nearest neighbour is exact
    image = np.zeros((12, 16, 3), np.uint8)
    image[2:5, 3:9] = 255
    out, info = letterbox(image, 32, interpolation=cv2.INTER_NEAREST)
    ys, xs = np.nonzero((out == 255).all(axis=2))
    found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
    assert info.pad == (0, 4) and info.ratio == (2.0, 2.0)
    np.testing.assert_array_equal(scale_boxes(found, info.ratio, info.pad, info.original_shape), [[3, 2, 9, 5]])


# ---------------------------------------------------------------- stretch


def test_stretch_resizes_to_the_exact_target_without_padding():
    image = _image(30, 40)
    out, info = stretch(image, (64, 48))
    assert out.shape == (64, 48, 3)
    assert np.array_equal(out, cv2.resize(image, (48, 64), interpolation=cv2.INTER_LINEAR))
    assert info == LetterboxInfo((30, 40), (64, 48), (48 / 40, 64 / 30), (0, 0))


def test_stretch_square_size_from_an_int():
    out, info = stretch(_image(30, 40), 32)
    assert out.shape == (32, 32, 3)
    assert info.shape == (32, 32) and info.ratio == (32 / 40, 32 / 30) and info.pad == (0, 0)


@pytest.mark.parametrize("interpolation", [cv2.INTER_NEAREST, cv2.INTER_AREA])
def test_stretch_uses_the_requested_interpolation(interpolation):
    image = _image(30, 40)
    out, _ = stretch(image, (45, 100), interpolation)
    expected = cv2.resize(image, (100, 45), interpolation=interpolation)
    assert not np.array_equal(expected, cv2.resize(image, (100, 45), interpolation=cv2.INTER_LINEAR))
    assert np.array_equal(out, expected)


def test_stretch_info_unmaps_boxes_exactly():
    # 10 x 20 -> 40 x 40: x gain 2, y gain 4; boxes come back through scale_boxes unchanged
    _, info = stretch(np.zeros((10, 20, 3), np.uint8), 40)
    boxes = np.array([[2, 1, 6, 3], [0, 0, 20, 10]], np.float32)
    mapped = boxes * np.array([2, 4, 2, 4], np.float32)
    np.testing.assert_array_equal(scale_boxes(mapped, info.ratio, info.pad, info.original_shape), boxes)


def test_stretch_rejects_a_bad_size():
    with pytest.raises(ValueError, match="positive values"):
        stretch(_image(4, 4), (0, 8))


# ---------------------------------------------------------------- to_tensor


@pytest.mark.parametrize("rgb", [True, False])
@pytest.mark.parametrize(
    "mean, std",
    [((0.0, 0.0, 0.0), (255.0, 255.0, 255.0)), ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)), ((1.0, 0.0, 2.5), (1.0, 3.0, 0.5))],
)
def test_to_tensor_is_chw_float32_of_the_formula(rgb, mean, std):
    image = _image(7, 5)
    out = to_tensor(image, rgb, mean, std)
    assert out.shape == (3, 7, 5) and out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, _reference_tensor(image, rgb, mean, std))


def test_to_tensor_channel_order():
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 20, 30  # B, G, R
    rgb = to_tensor(image, True, (0, 0, 0), (1, 1, 1))
    bgr = to_tensor(image, False, (0, 0, 0), (1, 1, 1))
    assert [float(c.mean()) for c in rgb] == [30.0, 20.0, 10.0]
    assert [float(c.mean()) for c in bgr] == [10.0, 20.0, 30.0]
    assert (rgb.min(axis=(1, 2)) == rgb.max(axis=(1, 2))).all()


def test_to_tensor_accepts_a_strided_view():
    image = _image(12, 10)
    view = image[::2, ::-1]
    out = to_tensor(view, True, (5, 6, 7), (2, 4, 8))
    np.testing.assert_array_equal(out, _reference_tensor(np.ascontiguousarray(view), True, (5, 6, 7), (2, 4, 8)))


def test_to_tensor_rejects_zero_std():
    with pytest.raises(ValueError, match=r"std must be non-zero per channel, got \[1, 0, 1\]"):
        to_tensor(_image(2, 2), True, (0, 0, 0), [1, 0, 1])


# ---------------------------------------------------------------- Preprocessor / preprocess


def _config(resize: str = "letterbox", rgb: bool = True) -> ModelConfig:
    return ModelConfig(
        "tiny", 1, ["thing"], (64, 96),
        preprocess={"resize": resize, "pad_value": 100, "rgb": rgb, "mean": (10.0, 20.5, 30.0), "std": (50.0, 60.0, 70.5)},
    )


@pytest.mark.parametrize("shape", [(40, 30), (30, 80), (64, 96), (17, 23)])
@pytest.mark.parametrize("rgb", [True, False])
@pytest.mark.parametrize("auto", [False, True])
def test_preprocessor_equals_letterbox_then_to_tensor(shape, rgb, auto):
    config = _config(rgb=rgb)
    spec = config.preprocess
    image = _image(*shape, seed=shape[0])
    boxed, expected_info = letterbox(image, config.input_size, stride=32, auto=auto, pad_value=spec.pad_value, center=spec.center)
    expected = to_tensor(boxed, spec.rgb, spec.mean, spec.std)[None]
    transform = Preprocessor(config, auto=auto)
    for _ in range(3):  # fresh and reused buffers alike
        batch, info = transform(image)
        assert batch.dtype == np.float32
        np.testing.assert_array_equal(batch, expected)
        assert info == expected_info
    batch, infos = preprocess([image, image], config, auto=auto)
    np.testing.assert_array_equal(batch, np.concatenate([expected, expected]))
    assert infos == [expected_info, expected_info]


@pytest.mark.parametrize("shape", [(40, 30), (64, 96)])
def test_preprocessor_resize_mode_equals_stretch_then_to_tensor(shape):
    config = _config(resize="resize")
    spec = config.preprocess
    image = _image(*shape)
    stretched, expected_info = stretch(image, config.input_size)
    expected = to_tensor(stretched, spec.rgb, spec.mean, spec.std)[None]
    batch, info = Preprocessor(config)(image)
    np.testing.assert_array_equal(batch, expected)
    assert info == expected_info
    batch, infos = preprocess([image], config)
    np.testing.assert_array_equal(batch, expected)
    assert infos == [expected_info]


@pytest.mark.parametrize("buffers", [1, 2, 3])
def test_preprocessor_reused_for_images_of_changing_shape_leaves_no_stale_pixels(buffers):
    """A fixed-size input with images of other shapes in turn (a folder of photos): the reused
    buffer is refilled only where the padding moved, and must equal a fresh letterbox each time."""
    config = _config()
    spec = config.preprocess
    transform = Preprocessor(config, buffers=buffers)
    shapes = [(40, 30), (30, 80), (64, 96), (17, 23), (96, 20), (40, 30), (20, 96)]
    for step, shape in enumerate(shapes * 2):
        image = _image(*shape, seed=step)
        boxed, expected_info = letterbox(image, config.input_size, stride=32, pad_value=spec.pad_value, center=spec.center)
        batch, info = transform(image)
        np.testing.assert_array_equal(batch, to_tensor(boxed, spec.rgb, spec.mean, spec.std)[None])
        assert info == expected_info


def test_letterbox_pads_a_single_channel_image_with_the_pad_value():
    """A grey [H, W] image (a mono camera) is letterboxed like a colour one: resized, then padded
    with ``pad_value`` above and below, and stays 2-D."""
    grey = np.full((10, 20), 7, dtype=np.uint8)
    boxed, info = letterbox(grey, 32, pad_value=114)
    assert boxed.shape == (32, 32)
    assert info.pad == (0, 8) and info.ratio == (1.6, 1.6)
    assert (boxed[:8] == 114).all() and (boxed[24:] == 114).all()
    assert (boxed[8:24] == 7).all()


# ---------------------------------------------------------------- uint8 input (normalised in the engine)


def _uint8_config(resize: str = "letterbox") -> ModelConfig:
    return dataclasses.replace(_config(resize=resize), uint8_input=True)


@pytest.mark.parametrize("shape", [(40, 30), (30, 80), (64, 96), (17, 23)])
@pytest.mark.parametrize("auto", [False, True])
def test_uint8_preprocessor_gives_the_letterboxed_bgr_image(shape, auto):
    """For an engine that normalises itself the input is the letterbox, pixel for pixel, NHWC."""
    config = _uint8_config()
    spec = config.preprocess
    image = _image(*shape, seed=shape[1])
    boxed, expected_info = letterbox(image, config.input_size, stride=32, auto=auto, pad_value=spec.pad_value, center=spec.center)
    transform = Preprocessor(config, auto=auto)
    for _ in range(3):
        batch, info = transform(image)
        assert batch.dtype == np.uint8 and batch.shape == (1, *boxed.shape)
        np.testing.assert_array_equal(batch[0], boxed)
        assert info == expected_info
    batch, infos = preprocess([image, image], config, auto=auto)
    np.testing.assert_array_equal(batch, np.stack([boxed, boxed]))
    assert infos == [expected_info, expected_info]


def test_uint8_preprocessor_resize_mode_and_changing_shapes():
    stretched_config = _uint8_config(resize="resize")
    image = _image(40, 30)
    stretched, _ = stretch(image, stretched_config.input_size)
    np.testing.assert_array_equal(Preprocessor(stretched_config)(image)[0][0], stretched)
    config = _uint8_config()
    spec = config.preprocess
    for buffers in (1, 2):
        transform = Preprocessor(config, buffers=buffers)
        for step, shape in enumerate([(40, 30), (30, 80), (64, 96), (17, 23), (96, 20), (40, 30)] * 2):
            image = _image(*shape, seed=step)
            boxed, _ = letterbox(image, config.input_size, stride=32, pad_value=spec.pad_value, center=spec.center)
            np.testing.assert_array_equal(transform(image)[0][0], boxed)


def test_uint8_preprocessor_takes_grey_and_bgra_images():
    config = _uint8_config()
    grey = _image(40, 30)[:, :, 0]
    batch, _ = Preprocessor(config)(grey)
    assert batch.shape == (1, 64, 96, 3)
    np.testing.assert_array_equal(batch[0, :, :, 0], batch[0, :, :, 2])
