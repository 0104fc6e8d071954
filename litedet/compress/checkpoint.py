"""Saving and loading compressed torch models.

A pruned or decomposed network no longer matches the layer widths of its registry builder, so
its checkpoint records what was done in the sidecar (``ModelConfig.extra["compression"]``):

- ``"lowrank"``: ``{module name: {"kind": "svd" | "cp", "rank": r}}``, the layers that were
  replaced by factor layers (re-applied structurally before the weights are loaded);
- ``"pruned"``: True when channels were removed; the new widths are read from the tensor shapes
  stored in the safetensors file itself (no other record is needed);
- ``"steps"``: the history (method, settings) for reports.

``load_compressed`` rebuilds the registry model, re-applies the recorded structure, resizes every
Conv2d/BatchNorm2d/Linear to the stored shapes and loads the weights strictly, so a mismatch is an
error rather than silently ignored weights.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from litedet.config import ModelConfig, find_config, sidecar_path

LOGGER = logging.getLogger(__name__)

COMPRESSION_KEY = "compression"


def compression_record(config: ModelConfig | None) -> dict[str, Any]:
    """The ``extra["compression"]`` record of a config (empty when the model is uncompressed)."""
    if config is None:
        return {}
    return dict(config.extra.get(COMPRESSION_KEY, {}))


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
    """Write ``model``'s weights as safetensors and its sidecar (with the compression record)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"compressed torch models are saved as .safetensors, got {path}")
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp))
    os.replace(tmp, path)
    model_config(model).save(sidecar_path(path))
    return path


def resize_to_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> int:
    """Resize Conv2d / BatchNorm2d / Linear layers of ``model`` in place to the shapes in ``state``
    (the widths a pruned checkpoint was saved with). Depthwise convs stay depthwise. Returns the
    number of layers changed."""
    changed = 0
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        weight = state.get(prefix + "weight")
        if weight is None:
            continue
        if isinstance(module, nn.Conv2d):
            out_c, in_per_group = weight.shape[:2]
            depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
            groups = out_c if depthwise else module.groups
            in_c = in_per_group * groups
            if (out_c, in_c) != (module.out_channels, module.in_channels):
                module.out_channels, module.in_channels, module.groups = out_c, in_c, groups
                module.weight = nn.Parameter(torch.empty_like(weight))
                if module.bias is not None:
                    module.bias = nn.Parameter(torch.empty(out_c))
                changed += 1
        elif isinstance(module, nn.BatchNorm2d):
            features = weight.shape[0]
            if features != module.num_features:
                module.num_features = features
                module.weight = nn.Parameter(torch.empty(features))
                module.bias = nn.Parameter(torch.empty(features))
                module.running_mean = torch.zeros(features)
                module.running_var = torch.ones(features)
                changed += 1
        elif isinstance(module, nn.Linear):
            out_f, in_f = weight.shape
            if (out_f, in_f) != (module.out_features, module.in_features):
                module.out_features, module.in_features = out_f, in_f
                module.weight = nn.Parameter(torch.empty_like(weight))
                if module.bias is not None:
                    module.bias = nn.Parameter(torch.empty(out_f))
                changed += 1
    return changed


def apply_record(model: nn.Module, record: dict[str, Any], state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Re-apply a compression record's structure to a freshly built registry model."""
    from litedet.compress.lowrank import apply_lowrank_structure

    lowrank = record.get("lowrank") or {}
    if lowrank:
        apply_lowrank_structure(model, lowrank)
    if state is not None and record.get("pruned"):
        resize_to_state_dict(model, state)
    model.compression = copy.deepcopy(record)  # type: ignore[attr-defined]
    return model


def load_compressed(weights: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelConfig]:
    """Load a ``.safetensors`` written by ``save_compressed`` (or any litedet checkpoint with a
    sidecar): the registry model rebuilt, the recorded structure re-applied, weights loaded strictly."""
    from safetensors.torch import load_file

    from litedet.models.registry import create_model

    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"weights not found: {weights}")
    if weights.suffix != ".safetensors":
        raise ValueError(f"{weights}: expected a .safetensors torch checkpoint")
    config = find_config(weights)
    if config is None:
        raise FileNotFoundError(f"{weights}: no model config beside it (expected {sidecar_path(weights)})")
    model = create_model(config.model, num_classes=config.num_classes, names=config.names, input_size=config.input_size)
    state = load_file(str(weights), device=str(device))
    apply_record(model, compression_record(config), state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights}: weights do not match model {config.model!r} (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model.to(device).eval(), config


def load_model(weights: str | os.PathLike, model_name: str | None = None) -> tuple[nn.Module, ModelConfig]:
    """Any litedet torch checkpoint: a compressed one via ``load_compressed``, others via the
    detector loader of ``litedet.models.checkpoint``."""
    config = find_config(weights)
    if config is not None and compression_record(config):
        return load_compressed(weights)
    from litedet.models.checkpoint import load_detector

    model, config = load_detector(Path(weights), model_name=model_name)
    return model.eval(), config
