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


def random_bn_detector(name: str = "v5lite-e", size: int = 64, seed: int = 0, **kwargs):
    """A registry detector in eval mode with non-trivial BatchNorm statistics (random gamma, beta,
    mean, var), so folding, pruning by gamma and quantization see different channels."""
    import torch
    from torch import nn

    from litedet.models.registry import create_model

    torch.manual_seed(seed)
    model = create_model(name, input_size=size, **kwargs).eval()
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.weight.data = torch.rand(n, generator=generator) + 0.1
            module.bias.data = torch.randn(n, generator=generator) * 0.1
            module.running_mean = torch.randn(n, generator=generator) * 0.1
            module.running_var = torch.rand(n, generator=generator) + 0.5
    return model


def folded_detector(name: str = "v5lite-e", size: int = 64, seed: int = 0, **kwargs):
    """A detector as an import from a deployed model leaves it: every BatchNorm an identity (its
    bias the folded one)."""
    import torch
    from torch import nn

    from litedet.models.registry import create_model

    torch.manual_seed(seed)
    model = create_model(name, input_size=size, **kwargs).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.zero_()
            module.running_var.fill_(1 - module.eps)
            module.weight.data.fill_(1.0)
            module.bias.data.normal_(0, 0.1)
    return model

