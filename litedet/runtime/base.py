"""The one interface every inference engine implements. Imports no torch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import numpy as np

from litedet.config import ModelConfig


class Backend(ABC):
    """Runs a network on a pre-processed batch and returns its raw outputs.

    ``run`` takes a float32 array [B, 3, H, W] (already letterboxed and normalised per
    ``config.preprocess``), or for a ``config.uint8_input`` engine the letterboxed uint8 images
    [B, H, W, 3] BGR (``litedet.data.transforms.Preprocessor`` makes either), and returns the
    raw head maps in level order as float32 numpy arrays (for a YOLO head: [B, na*(5+nc), H_i, W_i], logits). Decode and NMS happen in
    ``litedet.ops``, the same for every engine.
    """

    name: str = "base"
    # Whether copies with their own threads can run side by side in one process (torch's thread
    # count is the process's, so a torch engine cannot).
    concurrent_copies: bool = True

    def __init__(self, config: ModelConfig, threads: int | None = None, precision: str = "fp32") -> None:
        self.config = config
        self.threads = threads
        self.precision = precision
        # ``open_backend`` sets this: ``reopen(threads=n)`` opens the same file with the same
        # options on n threads (an inference stream of ``detect_source``); None for an engine
        # built otherwise.
        self.reopen: Callable[..., "Backend"] | None = None

    @abstractmethod
    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Raw outputs for ``batch`` (float32 [B, 3, H, W], or uint8 [B, H, W, 3] when
        ``config.uint8_input``)."""

    @property
    def input_dtype(self) -> type:
        """``np.uint8`` for an engine that takes uint8 images, else ``np.float32``."""
        return np.uint8 if self.config.uint8_input else np.float32

    def example_input(self, batch: int = 1, size: tuple[int, int] | None = None, seed: int = 0) -> np.ndarray:
        """A random input this engine takes: ``batch`` images of ``size`` (default ``input_size``)."""
        height, width = size or self.input_size
        rng = np.random.default_rng(seed)
        if self.config.uint8_input:
            return rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
        return rng.random((batch, 3, height, width), dtype=np.float32)

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the engine expects; a dynamic engine takes any stride multiple."""
        return self.config.input_size

    @property
    def dynamic(self) -> bool:
        return self.config.dynamic

    def close(self) -> None:
        """Release engine resources."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
