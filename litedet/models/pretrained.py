"""Loading published ImageNet weights onto litedet backbones (local files only, never pickles)."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from litedet.models.backbones.shufflenetv2 import SHUFFLENETV2_CONFIGS, ShuffleNetV2

logger = logging.getLogger(__name__)


@dataclass
class LoadReport:
    """What a loader placed: tensors loaded, file keys it could not place, model keys left unset."""

    loaded: list[str] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every tensor of the file landed (the model may still have keys the file lacks)."""
        return not self.unplaced

    def summary(self) -> str:
        return (
            f"{len(self.loaded)} tensors loaded, {len(self.unplaced)} file keys not placed"
            f"{' ' + str(self.unplaced[:5]) if self.unplaced else ''}, {len(self.missing)} model keys not in the file"
            f"{' ' + str(self.missing[:5]) if self.missing else ''}"
        )


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a .pth/.pt (``weights_only=True``: no code is unpickled) or .safetensors file,
    unwrapping a ``state_dict``/``model`` key and a DataParallel ``module.`` prefix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for non-checkpoint bytes
            raise ValueError(f"{path}: not a readable PyTorch state dict ({type(err).__name__}: {err})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a dict of tensors (a state dict)")
    return {re.sub(r"^module\.", "", k): v for k, v in state.items()}


def _megvii_to_litedet(key: str) -> str:
    """Megvii ShuffleNetV2 names -> ours: ``first_conv.0`` -> ``conv1.conv``, ``branch_main`` ->
    ``branch2``, ``branch_proj`` -> ``branch1`` (sequential indices coincide)."""
    key = re.sub(r"^first_conv\.0\.", "conv1.conv.", key)
    key = re.sub(r"^first_conv\.1\.", "conv1.bn.", key)
    key = re.sub(r"^conv_last\.0\.", "conv5.conv.", key)
    key = re.sub(r"^conv_last\.1\.", "conv5.bn.", key)
    key = re.sub(r"^classifier\.0\.", "fc.", key)
    key = key.replace(".branch_main.", ".branch2.").replace(".branch_proj.", ".branch1.")
    return key


def load_megvii_shufflenetv2(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> LoadReport:
    """Load Megvii-layout ShuffleNetV2 weights (``first_conv``, ``stage2..4``, ``branch_main`` /
    ``branch_proj``) into ``model``, which must be a ShuffleNetV2 built with
    ``channel_order="megvii"`` (the routing those weights were trained with).

    Returns a report; with ``strict`` a file tensor that finds no place (or a shape mismatch) is a
    ValueError naming the key and both shapes.
    """
    if not isinstance(model, ShuffleNetV2):
        raise ValueError(f"expected a ShuffleNetV2, got {type(model).__name__}")
    orders = {m.channel_order for m in model.modules() if hasattr(m, "channel_order")}
    if orders != {"megvii"}:
        raise ValueError(
            f"Megvii ShuffleNetV2 weights need a model built with channel_order='megvii' (got {sorted(orders)}); "
            "see litedet.models.pretrained.megvii_shufflenetv2"
        )
    source = read_state_dict(path)
    target = model.state_dict()
    report = LoadReport()
    new_state = {}
    for key, tensor in source.items():
        ours = _megvii_to_litedet(key)
        if ours not in target:
            report.unplaced.append(key)
            continue
        if tuple(target[ours].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{path}: tensor {key!r} has shape {tuple(tensor.shape)} but {ours!r} in the model has "
                f"{tuple(target[ours].shape)} (wrong width for this model?)"
            )
        new_state[ours] = tensor
        report.loaded.append(key)
    report.missing = sorted(set(target) - set(new_state))
    if strict and report.unplaced:
        raise ValueError(f"{path}: {len(report.unplaced)} tensors could not be placed, e.g. {report.unplaced[:5]}")
    model.load_state_dict(new_state, strict=False)
    logger.info("loaded %s: %s", path, report.summary())
    return report


def megvii_shufflenetv2(width: float = 0.5, weights: str | os.PathLike | None = None, **kwargs) -> ShuffleNetV2:
    """A ShuffleNetV2 with the Megvii routing, optionally loaded from ``weights``.

    For a detector backbone pass ``features_only=True, with_conv5=False, num_classes=0`` (the
    shared 0.5x ImageNet file has stages 2-4 only).
    """
    if width not in SHUFFLENETV2_CONFIGS:
        raise ValueError(f"ShuffleNetV2 width must be one of {sorted(SHUFFLENETV2_CONFIGS)}, got {width!r}")
    config = SHUFFLENETV2_CONFIGS[width]
    model = ShuffleNetV2(config.stage_repeats, config.stage_out_channels, channel_order="megvii", **kwargs)
    if weights is not None:
        load_megvii_shufflenetv2(model, weights)
    return model
