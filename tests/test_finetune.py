"""Fine-tuning compressed detectors (issue 7): folded BatchNorms are restored before the first
step, and the EMA of the weights is what the run ends with (tiny inputs, CPU, raccoon data)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from litedet.compress.finetune import FinetuneConfig, finetune
from litedet.layers.conv import is_identity_batchnorm
from conftest import folded_detector, require_shared

SIZE = 64
DATA = Path(__file__).resolve().parents[1] / "configs" / "data" / "raccoon.yaml"


def _folded_detector() -> nn.Module:
    """An imported-like v5lite-e for the raccoon class: every BatchNorm an identity."""
    return folded_detector("v5lite-e", SIZE, num_classes=1, names=["raccoon"])

def _config(**kwargs) -> FinetuneConfig:
    return FinetuneConfig(**{"steps": 3, "batch": 2, "imgsz": SIZE, "lr": 0.01, "warmup_steps": 1, "progress": False,
                             "restore_images": 4, **kwargs})


def test_finetune_restores_folded_batchnorm_first():
    require_shared("data", "raccoon")
    model = _folded_detector()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(is_identity_batchnorm(bn) for bn in bns)
    result = finetune(model, str(DATA), _config(steps=1, lr=1e-6))
    assert result.restored_batchnorms == len(bns)
    assert not any(is_identity_batchnorm(bn) for bn in bns)
    # Nothing folded any more: a second run restores nothing.
    assert finetune(model, str(DATA), _config(steps=1, lr=1e-6)).restored_batchnorms == 0


def test_finetune_without_folded_layers_restores_nothing():
    require_shared("data", "raccoon")
    model = _folded_detector()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_var.fill_(2.0)  # real statistics: not an identity
    assert finetune(model, str(DATA), _config(steps=1, lr=1e-6)).restored_batchnorms == 0


def test_finetune_ends_with_the_ema_weights():
    require_shared("data", "raccoon")
    start = _folded_detector()
    plain, averaged = copy.deepcopy(start), copy.deepcopy(start)
    assert finetune(plain, str(DATA), _config(ema=False)).ema is False
    assert finetune(averaged, str(DATA), _config(ema=True)).ema is True
    first = dict(start.named_parameters())

    def distance(model: nn.Module) -> float:
        return sum(float((p.detach() - first[n].detach()).norm()) for n, p in model.named_parameters())

    # The same three steps (same seed), but the EMA lags behind the last weights towards the start.
    assert 0 < distance(averaged) < distance(plain)
    for bn in (m for m in averaged.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.isfinite(bn.running_var).all()


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"steps": 0}, {"batch": 0}, {"lr": 0.0}])
def test_finetune_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        FinetuneConfig(**kwargs)


def test_finetune_at_another_size_makes_it_the_models_input_size():
    require_shared("data", "raccoon")
    model = _folded_detector()
    size = model.input_size
    finetune(model, str(DATA), _config(steps=1, lr=1e-6))
    assert model.input_size == size  # no imgsz given: unchanged
    finetune(model, str(DATA), _config(steps=1, lr=1e-6, imgsz=96))
    assert model.input_size == (96, 96) and model.config.input_size == (96, 96)
