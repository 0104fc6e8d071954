"""Detector weights on disk: ``model.safetensors`` + the ``model.json`` config sidecar.

Never unpickles anything: weights are safetensors (or an ncnn ``.param``/``.bin`` pair, imported
through ``litedet.export.ncnn_import``), the sidecar is JSON.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from litedet.config import ModelConfig, find_config, sidecar_path, write_bytes_atomic
from litedet.models.detector import Detector

logger = logging.getLogger(__name__)

# Registered detectors tried, in order, when an ncnn graph is given without an architecture.
_NCNN_GUESSES = ("v5lite-s", "v5lite-e")


def save_checkpoint_weights(model: Detector, path: str | os.PathLike, config: ModelConfig | None = None) -> Path:
    """Write ``model``'s weights as safetensors and its config sidecar (``X.safetensors`` ->
    ``X.json``), each atomically. Returns the weights path."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"weights path must end in .safetensors, got {path}")
    config = config or model.config
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    metadata = {"format": "litedet", "model": config.model}
    write_bytes_atomic(path, save_safetensors_bytes(state, metadata=metadata))
    config.save(sidecar_path(path))
    return path


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    data = path.read_bytes()
    try:
        tensors = load_safetensors_bytes(data)
    except (SafetensorError, ValueError, RuntimeError, OSError) as err:
        raise ValueError(f"{path}: not a litedet/ncnn model (not a readable safetensors file: {err})") from None
    # The header is a little-endian u64 length + JSON; its "__metadata__" names the model.
    metadata: dict[str, str] = {}
    try:
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__", {}) or {}
    except (ValueError, AttributeError):
        metadata = {}
    return tensors, metadata


def _check_state(model: Detector, tensors: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    """Raise ValueError naming the first tensor of the wrong shape (both shapes), else the first
    missing or extra one."""
    expected = model.state_dict()
    for key, value in expected.items():
        if key in tensors and tuple(tensors[key].shape) != tuple(value.shape):
            raise ValueError(
                f"{path} does not fit {arch}: tensor {key!r} has shape {list(tensors[key].shape)} in the file, "
                f"{arch} expects {list(value.shape)}"
            )
    missing = [key for key in expected if key not in tensors]
    extra = [key for key in tensors if key not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{arch} needs {missing[0]!r} {list(expected[missing[0]].shape)}, missing from the file")
        if extra:
            parts.append(f"the file has {extra[0]!r} {list(tensors[extra[0]].shape)}, unknown to {arch}")
        raise ValueError(
            f"{path} does not fit {arch} ({len(missing)} tensors missing, {len(extra)} unexpected): "
            + "; ".join(parts)
        )


def _build(model_name: str, config: ModelConfig | None, num_classes: int | None) -> Detector:
    from litedet.models.registry import create_model, model_kind

    if model_kind(model_name) != "detector":
        raise ValueError(f"{model_name!r} is a backbone, not a detector")
    kwargs: dict[str, Any] = {}
    if config is not None:
        kwargs.update(num_classes=config.num_classes, names=config.names, input_size=tuple(config.input_size))
        if config.head == "yolo":
            kwargs["anchors"] = config.anchors
    elif num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = create_model(model_name, **kwargs)
    if not isinstance(model, Detector):
        raise ValueError(f"{model_name!r} does not build a Detector")
    if config is not None:
        model.preprocess = config.preprocess
        model.source = config.source
    return model


def _load_ncnn(param: Path, model_name: str | None, num_classes: int | None) -> tuple[Detector, ModelConfig]:
    from litedet.export.ncnn_import import import_ncnn

    candidates = (model_name,) if model_name else _NCNN_GUESSES
    errors = []
    for arch in candidates:
        try:
            model = import_ncnn(param, arch)
        except ValueError as err:
            if "does not fit" not in str(err):
                raise
            errors.append(str(err))
            continue
        if num_classes is not None and num_classes != model.num_classes:
            model.reset_head(num_classes)
        return model, model.config
    raise ValueError(errors[0] if len(errors) == 1 else f"{param} fits none of {list(candidates)}; pass --model. {errors[0]}")


def load_detector(
    weights: str | os.PathLike,
    model_name: str | None = None,
    num_classes: int | None = None,
) -> tuple[Detector, ModelConfig]:
    """Load a detector for inference or fine-tuning; returns ``(model in eval mode, config)``.

    ``weights`` is a ``.safetensors`` file with its ``.json`` sidecar (``model_name`` may override
    or stand in for the sidecar), or an ncnn ``.param`` (``.bin`` beside it; ``model_name`` picks
    the architecture, else v5lite-s then v5lite-e are tried). ``num_classes`` different from the
    stored one replaces the head (fine-tuning on new classes).

    Raises FileNotFoundError naming a missing file, ValueError for a file that is not a model
    ("not a litedet/ncnn model") or that belongs to another architecture (first mismatched tensor).
    """
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.name.endswith(".param"):
        return _load_ncnn(path, model_name, num_classes)
    head = path.read_bytes()[:8]
    if head.startswith(str(7767517).encode()):
        raise ValueError(f"{path} is an ncnn .param file; name it *.param (its .bin beside it) to import it")
    config = find_config(path)
    if config is not None and config.extra.get("compression") and num_classes in (None, config.num_classes):
        # Pruned/decomposed weights: the registry model must first take the recorded structure.
        from litedet.compress.checkpoint import load_compressed

        return load_compressed(path)  # type: ignore[return-value]
    tensors, metadata = _read_safetensors(path)
    arch = model_name or (config.model if config else None) or metadata.get("model")
    if not arch:
        raise ValueError(
            f"{path}: no config sidecar {sidecar_path(path)} and no model name; pass --model (see `litedet models`)"
        )
    if config is not None and model_name and model_name != config.model:
        logger.warning("%s: building %s although its sidecar says %s", path, model_name, config.model)
        config = ModelConfig.from_dict({**config.to_dict(), "model": model_name}, source=str(sidecar_path(path)))
    model = _build(arch, config, num_classes if config is None else None)
    _check_state(model, tensors, path, arch)
    model.load_state_dict(tensors, strict=True)
    model.eval()
    if num_classes is not None and num_classes != model.num_classes:
        model.reset_head(num_classes)
    return model, (config if config is not None and num_classes in (None, config.num_classes) else model.config)
