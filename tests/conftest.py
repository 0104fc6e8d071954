"""Shared fixtures: where ../shared is, and skipping cleanly when it is absent."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cv2
import numpy as np
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


@pytest.fixture(params=["pairwise", "loop"])
def nms_path(request, monkeypatch):
    """Run a test through both ways ``nms`` computes: the IoU matrix (up to PAIRWISE_LIMIT
    candidates) and the box-by-box loop (above it)."""
    if request.param == "loop":
        monkeypatch.setattr(sys.modules["litedet.ops.nms"], "PAIRWISE_LIMIT", 0)
    return request.param


def logit(p: float) -> float:
    """The logit whose sigmoid is ``p``: builds raw head maps with known probabilities."""
    return float(np.log(p / (1 - p)))


def structured_images(count: int, size: int, seed: int = 0):
    """Images [count, 3, size, size] in [0, 1] with structure a detector responds to: a smooth
    colour field (bilinear upsampling of an 8x coarser noise) with flat-coloured rectangles."""
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, max(size // 8, 2), max(size // 8, 2), generator=generator)
    images = nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    for image in images:
        for _ in range(4):
            x0, y0 = (int(v) for v in torch.randint(0, size * 3 // 4, (2,), generator=generator))
            w, h = (int(v) for v in torch.randint(max(size // 8, 1), max(size // 3, 2), (2,), generator=generator))
            image[:, y0:y0 + h, x0:x0 + w] = torch.rand(3, 1, 1, generator=generator)
    return images


def random_bn_detector(name: str = "v5lite-e", size: int = 64, seed: int = 0, **kwargs):
    """A registry detector in eval mode whose output depends on its input, as a trained one's does.

    Random BatchNorm scales (0.5-1.5) and shifts, running statistics measured on
    ``structured_images`` (so every layer sees normalised activations instead of saturating or
    vanishing) and head convs at unit gain over a fan-in of unit-variance features (the default
    init, std 0.01, makes the maps almost constant). Folding, pruning by gamma and quantization
    then see channels that differ and outputs that change with the image: the correlation of the
    raw maps of a COCO image and an all-zero image is ~0.4-0.85 (``test_core_properties``), where
    the untouched init gives 0.99999999."""
    import math

    import torch
    from torch import nn

    from litedet.models.registry import create_model

    torch.manual_seed(seed)
    model = create_model(name, input_size=size, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    batchnorms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for module in batchnorms:
        n = module.num_features
        module.weight.data = torch.rand(n, generator=generator) + 0.5
        module.bias.data = torch.randn(n, generator=generator) * 0.2
        module.reset_running_stats()
        module.momentum = None  # cumulative average: the statistics of exactly the batch below
    for conv in getattr(model.head, "convs", []):
        fan_in = conv.weight[0].numel()
        conv.weight.data = torch.randn(conv.weight.shape, generator=generator) * (0.5 / math.sqrt(fan_in))
    model.train()
    with torch.no_grad():
        model(structured_images(8, size, seed))
    for module in batchnorms:
        module.momentum = 0.1
    return model.eval()


def folded_detector(name: str = "v5lite-e", size: int = 64, seed: int = 0, **kwargs):
    """A detector as an import from a deployed model leaves it: every BatchNorm that follows a
    conv folded into it and left as an identity (zero mean, unit variance and scale; its bias the
    folded one). Computes the same function as ``random_bn_detector`` with the same arguments."""
    import torch
    from torch import nn

    model = random_bn_detector(name, size, seed, **kwargs)
    with torch.no_grad():
        for module in model.modules():
            children = list(module.children())
            for conv, bn in zip(children, children[1:]):
                if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                    continue
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
                bias = bn.bias - bn.running_mean * scale
                if conv.bias is not None:
                    bias = bias + conv.bias * scale
                    conv.bias.zero_()
                bn.bias.copy_(bias)
                bn.running_mean.zero_()
                bn.running_var.fill_(1 - bn.eps)
                bn.weight.fill_(1.0)
    return model


# A tiny training run: settings and an 8 + 2 image YOLO dataset (trainer and resume tests).
TINY = dict(model="v5lite-e", epochs=2, batch=2, imgsz=64, workers=0, progress=False, nbs=4, warmup_epochs=1,
            eval_interval=2, cache=True)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """8 train + 2 val images (96x72) with 1-2 boxes each, YOLO format, classes [a, b]."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 2)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for index in range(count):
            image = np.full((72, 96, 3), 40, np.uint8)
            lines = []
            for box in range(1 + index % 2):
                w, h = (int(v) for v in rng.integers(16, 40, 2))
                x, y = int(rng.integers(0, 96 - w)), int(rng.integers(0, 72 - h))
                image[y:y + h, x:x + w] = (200, 60 + 100 * box, 30)
                lines.append(f"{box} {(x + w / 2) / 96:.5f} {(y + h / 2) / 72:.5f} {w / 96:.5f} {h / 72:.5f}")
            cv2.imwrite(str(root / "images" / split / f"{index}.jpg"), image)
            (root / "labels" / split / f"{index}.txt").write_text("\n".join(lines) + "\n")
    data = root / "data.yaml"
    data.write_text("path: .\ntrain: images/train\nval: images/val\nnames: [a, b]\n")
    return data
