"""What every backbone shares: classifier or feature-extractor mode, declared channels/strides."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def check_width_multiplier(width: float, name: str = "width multiplier") -> float:
    """Reject a width multiplier that cannot build a network."""
    if not isinstance(width, (int, float)) or width <= 0 or width > 4:
        raise ValueError(f"{name} must be in (0, 4], got {width!r}")
    return float(width)


class Backbone(nn.Module):
    """Base class. Subclasses build ``self.stages`` (a ModuleList, one entry per feature level,
    each ending at a new stride), set ``stage_channels``/``stage_strides``, and optionally a
    classifier head.

    ``features_only=True``: ``forward`` returns the list of maps picked by ``out_indices``, and
    ``out_channels``/``strides`` describe them (necks read these, never a hand-written count).
    Otherwise ``forward`` returns class logits ``[B, num_classes]``.
    """

    stage_channels: list[int]
    stage_strides: list[int]

    def __init__(self, features_only: bool, out_indices: Sequence[int] | None, num_classes: int) -> None:
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.features_only = features_only
        self.num_classes = num_classes
        self._out_indices = None if out_indices is None else tuple(out_indices)

    def _set_out_indices(self, default: Sequence[int]) -> None:
        indices = tuple(default) if self._out_indices is None else self._out_indices
        count = len(self.stage_channels)
        for index in indices:
            if not -count <= index < count:
                raise ValueError(f"out_indices entry {index} is out of range for {count} stages (0..{count - 1})")
        self.out_indices = tuple(i % count for i in indices)
        stages = self._modules.get("stages")
        if self.features_only and isinstance(stages, nn.ModuleList):
            # A feature extractor owns only what it runs (timm's features_only does the same):
            # stages after the deepest returned map would hold parameters that never see a gradient.
            self.stages = nn.ModuleList(list(stages)[: max(self.out_indices) + 1])

    @property
    def out_channels(self) -> list[int]:
        """Channels of each returned feature map."""
        return [self.stage_channels[i] for i in self.out_indices]

    @property
    def strides(self) -> list[int]:
        """Stride (input pixels per feature pixel) of each returned feature map."""
        return [self.stage_strides[i] for i in self.out_indices]

    @property
    def min_input_divisor(self) -> int:
        """Input height/width must be a multiple of this (the deepest stride)."""
        return max(self.stage_strides)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError for an input the network cannot take (wrong rank, channels, size)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an input of shape [B, 3, H, W], got {tuple(x.shape)}")
        divisor = self.min_input_divisor
        if x.shape[2] % divisor or x.shape[3] % divisor:
            raise ValueError(
                f"input size {x.shape[2]}x{x.shape[3]} must be a multiple of {divisor} for this network"
            )

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Run the stages (in feature mode, only up to the deepest one returned)."""
        outputs = []
        last = max(self.out_indices) + 1 if self.features_only else len(self.stages)
        for stage in self.stages[:last]:
            x = stage(x)
            outputs.append(x)
        return outputs

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Global average pool, then ``self.classifier`` when the backbone has one."""
        # No class-level default: it would shadow the submodule nn.Module registers.
        classifier = getattr(self, "classifier", None)
        x = x.mean((2, 3))
        return x if classifier is None else classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            self.check_input(x)
        outputs = self.forward_stages(x)
        if self.features_only:
            return [outputs[i] for i in self.out_indices]
        return self.forward_head(outputs[-1])
