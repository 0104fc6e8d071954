"""The model table behind `litedet models`: every registered model counted at an input size."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from litedet.bench.profile import profile_model
from litedet.models.registry import create_model, list_models, model_kind

logger = logging.getLogger(__name__)


@dataclass
class ModelRow:
    """One model's counts (madds = multiply-adds; FLOPs = 2 x madds)."""

    name: str
    kind: str
    params: int
    madds: int
    mac: int
    input_size: list[int]
    peak_activation_bytes: int
    peak_live_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "params": self.params,
            "madds": self.madds,
            "flops": 2 * self.madds,
            "mac": self.mac,
            "input_size": self.input_size,
            "peak_activation_bytes": self.peak_activation_bytes,
            "peak_live_bytes": self.peak_live_bytes,
        }


def default_input_size(name: str, model: Any) -> tuple[int, int]:
    """224 for backbones (ImageNet), the model's own size for detectors."""
    size = getattr(model, "input_size", None)
    if model_kind(name) == "detector" and size is not None:
        return tuple(size)  # type: ignore[return-value]
    return (224, 224)


def model_table(
    pattern: str = "*",
    input_size: int | None = None,
    skipped: list[tuple[str, str]] | None = None,
    kind: str | None = None,
) -> list[ModelRow]:
    """Count every registered model matching ``pattern`` (and ``kind``: "backbone" or
    "detector"); backbones as 1000-class classifiers at 224, detectors at their own input size.

    A model whose builder needs something absent here (an optional package, a weights file) is
    left out with a warning, and ``(name, reason)`` is appended to ``skipped`` when given.
    """
    if input_size is not None and input_size <= 0:
        raise ValueError(f"input size must be > 0, got {input_size}")
    if kind not in (None, "backbone", "detector"):
        raise ValueError(f"kind must be 'backbone' or 'detector', got {kind!r}")
    rows = []
    for name in list_models(pattern, kind=kind):
        try:
            model = create_model(name)
        except (ImportError, FileNotFoundError) as err:
            logger.warning("skipping %s: %s", name, err)
            if skipped is not None:
                skipped.append((name, f"{type(err).__name__}: {err}"))
            continue
        size = (input_size, input_size) if input_size else default_input_size(name, model)
        profile = profile_model(model, size)
        rows.append(
            ModelRow(
                name=name,
                kind=model_kind(name),
                params=profile.params,
                madds=profile.madds,
                mac=profile.mac,
                input_size=list(size),
                peak_activation_bytes=profile.peak_activation_bytes,
                peak_live_bytes=profile.peak_live_bytes,
            )
        )
    return rows


def format_table(rows: list[ModelRow]) -> str:
    """A Markdown table of the rows."""
    lines = [
        "| model | kind | input | params (M) | multiply-adds (M) | GFLOPs (= 2 x madds) | MAC (M elements) "
        "| peak activations (MiB, fp32) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        size = "x".join(str(v) for v in row.input_size)
        lines.append(
            f"| {row.name} | {row.kind} | {size} | {row.params / 1e6:.3f} | {row.madds / 1e6:.1f} | "
            f"{2 * row.madds / 1e9:.3f} | {row.mac / 1e6:.2f} | {row.peak_live_bytes / 2**20:.1f} |"
        )
    return "\n".join(lines)
