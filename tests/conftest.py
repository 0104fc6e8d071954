"""Shared fixtures: where ../shared is, and skipping cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """``LITEDET_SHARED`` or ``../shared`` next to the repo."""
    return Path(os.environ.get("LITEDET_SHARED", REPO.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_dir()
    if not path.is_dir():
        pytest.skip(f"../shared not found at {path} (set LITEDET_SHARED)")
    return path


def require_shared(*parts: str) -> Path:
    """Path inside ../shared, or skip the test naming what is missing."""
    path = shared_dir().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found (set LITEDET_SHARED to the shared folder)")
    return path


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    # Tests run beside other work on 2 cores; keep torch from oversubscribing.
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    yield
