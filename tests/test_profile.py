"""Counting: multiply-adds and MAC by hand on known layers, list outputs, the `litedet models` table."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from torch import nn

from litedet.bench.profile import profile_model
from litedet.cli import main


def test_conv_madds_and_mac_by_hand() -> None:
    # 1x1 conv c1=16 -> c2=32 at 8x8: madds = h*w*c1*c2; MAC = hw(c1 + c2) + c1*c2 (ShuffleNetV2 §2, G1).
    model = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False))
    profile = profile_model(model, (8, 8), in_channels=16)
    assert profile.madds == 8 * 8 * 16 * 32
    assert profile.mac == 8 * 8 * (16 + 32) + 16 * 32
    assert profile.params == 16 * 32
    assert profile.flops == 2 * profile.madds


def test_depthwise_and_linear_madds() -> None:
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    profile = profile_model(model, (4, 4), in_channels=8)
    assert profile.madds == 4 * 4 * 8 * 9 + 128 * 10
    assert [layer.type for layer in profile.layers] == ["Conv2d", "Flatten", "Linear"]
    assert profile.layers[0].output_shape == [1, 8, 4, 4]
    assert profile.peak_activation_bytes == 4 * (128 + 128)


class _TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 5, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.a(x), self.b(x)]


def test_models_with_list_outputs_and_mode_restored() -> None:
    model = _TwoOutputs().train()
    profile = profile_model(model, 16)
    assert profile.madds == 16 * 16 * 3 * (4 + 5)
    assert model.training


def test_bad_input_size() -> None:
    with pytest.raises(ValueError, match="input size"):
        profile_model(nn.Conv2d(3, 3, 1), 0)


def test_models_json_cli() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["models", "--json", "--filter", "mobilenetv1_x0_25", "--input", "160"]) == 0
    rows = json.loads(out.getvalue().strip().splitlines()[-1])
    assert len(rows) == 1
    row = rows[0]
    assert {"name", "params", "madds", "mac", "input_size"} <= set(row)
    assert row["name"] == "mobilenetv1_x0_25" and row["input_size"] == [160, 160]
    assert row["params"] == 470072 and row["madds"] > 0 and row["mac"] > 0


def test_models_cli_unknown_filter(capsys) -> None:
    assert main(["models", "--filter", "nothing-like-this"]) == 2
    assert "no registered model" in capsys.readouterr().err
