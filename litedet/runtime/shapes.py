"""Input checks shared by the engine backends (no torch)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def check_input_shape(batch: np.ndarray, expected: Sequence[object], engine: str, channels_last: bool = False) -> None:
    """Raise a ValueError naming both shapes when ``batch`` does not fit an engine input whose
    shape is ``expected`` (ints for fixed axes; names, None or -1 for dynamic ones).
    ``channels_last``: the engine takes uint8 images [B, H, W, 3] (``ModelConfig.uint8_input``)."""
    if channels_last:
        if batch.ndim != 4 or batch.shape[3] != 3:
            raise ValueError(f"{engine}: expected uint8 images [B, H, W, 3], got shape {list(batch.shape)}")
    elif batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"{engine}: expected a batch [B, 3, H, W], got shape {list(batch.shape)}")
    if len(expected) != 4:
        return
    for axis, (got, want) in enumerate(zip(batch.shape, expected)):
        if isinstance(want, (int, np.integer)) and want > 0 and got != want:
            raise ValueError(
                f"{engine}: the model takes input {list(expected)}, got {list(batch.shape)} (axis {axis}); "
                "export with --dynamic, or with --imgsz matching the input"
            )


def check_input_type(path: object, config_uint8: bool, takes_uint8: bool, type_name: str) -> None:
    """Raise a ValueError when the engine file's input type (``type_name``; uint8 when
    ``takes_uint8``) disagrees with its sidecar's ``uint8_input``: files of two exports mixed up."""
    if config_uint8 != takes_uint8:
        raise ValueError(
            f"{path}: its config says the input is {'uint8' if config_uint8 else 'float32'} but the model takes "
            f"{type_name}; the engine file and its .json sidecar come from different exports"
        )


def check_input_size(path: object, expected: Sequence[object], config_size: Sequence[int], channels_last: bool,
                     asked: bool) -> None:
    """At open: a model with a fixed input size (``expected``, the engine's input shape) must take
    the size litedet will letterbox to (``config_size``), else a ValueError naming both now,
    instead of at the first image. ``asked``: the size came from ``imgsz`` (not the sidecar)."""
    if len(expected) != 4:
        return
    fixed = expected[1:3] if channels_last else expected[2:4]
    if not all(isinstance(v, (int, np.integer)) and v > 0 for v in fixed):
        return
    if tuple(int(v) for v in fixed) == tuple(config_size):
        return
    takes = f"{fixed[0]}x{fixed[1]}"
    wanted = f"{config_size[0]}x{config_size[1]}"
    if asked:
        raise ValueError(f"{path} takes only {takes} images (exported without --dynamic), not {wanted}: "
                         f"re-export with --imgsz {config_size[0]},{config_size[1]} or --dynamic")
    raise ValueError(f"{path} takes {takes} images but its .json sidecar says input_size {wanted}: the sidecar "
                     "was edited or belongs to another export")
