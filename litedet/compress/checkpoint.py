"""Saving compressed torch models.

A pruned or decomposed network no longer matches the layer widths of its registry builder, so
its checkpoint records what was done in the sidecar (``ModelConfig.extra["compression"]``, the
format is described in ``litedet.models.checkpoint``). Compression methods keep that record on
the model (``model_record``); ``save_compressed`` writes it; ``litedet.models.checkpoint.
load_detector`` (the one loader of every checkpoint) rebuilds the structure and loads the weights
strictly.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

from torch import nn

from litedet.config import ModelConfig
from litedet.models.checkpoint import COMPRESSION_KEY, save_checkpoint_weights

LOGGER = logging.getLogger(__name__)


def model_record(model: nn.Module) -> dict[str, Any]:
    """The compression record kept on a model object (``model.compression``), a fresh one if none."""
    record = getattr(model, "compression", None)
    if record is None:
        record = {"steps": [], "lowrank": {}, "pruned": False}
        model.compression = record  # type: ignore[attr-defined]
    return record


def model_config(model: nn.Module) -> ModelConfig:
    """The sidecar of a detector, with its compression record in ``extra``."""
    if not hasattr(model, "config"):
        raise ValueError(f"{type(model).__name__} has no model config; only litedet detectors can be saved with a sidecar")
    config = copy.deepcopy(model.config)
    record = getattr(model, "compression", None)
    if record:
        config.extra = dict(config.extra)
        config.extra[COMPRESSION_KEY] = copy.deepcopy(record)
    return config


def save_compressed(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model``'s weights as safetensors and its sidecar with the compression record."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"compressed torch models are saved as .safetensors, got {path}")
    return save_checkpoint_weights(model, path, model_config(model))
