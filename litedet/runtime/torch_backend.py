"""PyTorch eager backend for litedet ``.safetensors`` checkpoints (imports torch)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from litedet.config import ModelConfig
from litedet.runtime.base import Backend

PRECISIONS = ("fp32", "bf16", "fp16")


class TorchBackend(Backend):
    """Runs a ``litedet.models`` detector in eager mode (CUDA when present, else CPU).

    ``precision``: ``fp32``; ``bf16`` (autocast, fast on AMX CPUs); ``fp16`` (CUDA only).
    Takes any input that is a multiple of the largest stride, so ``dynamic`` is True.
    """

    name = "torch"
    concurrent_copies = False  # torch.set_num_threads is per process

    def __init__(
        self,
        weights: str | os.PathLike,
        config: ModelConfig | None,
        threads: int | None = None,
        precision: str = "fp32",
        model: str | None = None,
        device: str | None = None,
    ) -> None:
        from litedet.models.checkpoint import load_detector

        if precision not in PRECISIONS:
            raise ValueError(f"torch precision must be one of {PRECISIONS}, got {precision!r}")
        if threads is not None:
            torch.set_num_threads(int(threads))
        try:
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        except RuntimeError:
            raise ValueError(f"torch: unknown device {device!r}; use cpu, cuda or cuda:N") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"torch: device {device!r} asked for, but this torch sees no CUDA device; use device 'cpu'")
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("torch fp16 needs CUDA; use bf16 or fp32 on the CPU")
        model_name = model or (config.model if config is not None else None)
        num_classes = config.num_classes if config is not None else None
        network, loaded = load_detector(Path(weights), model_name=model_name, num_classes=num_classes)
        super().__init__(config or loaded, threads=threads, precision=precision)
        self.model = network.eval().to(self.device)

    @property
    def dynamic(self) -> bool:
        return True

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        inputs = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            outputs = self.model(inputs)
        if isinstance(outputs, torch.Tensor):
            outputs = [outputs]
        return [out.float().cpu().numpy() for out in outputs]
