"""Counting: multiply-adds and MAC by hand on known layers, detector-style list outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from litedet.bench.profile import profile_model


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


def test_peak_live_activation_memory_by_hand() -> None:
    # Conv 3->8 then in-place ReLU then conv 8->4 at 8x8, batch 1, fp32. While the second conv
    # writes its output, the input (held by the caller) and the first conv's output are alive:
    # 4 bytes * 64 * (3 + 8 + 4). The in-place ReLU allocates nothing.
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(inplace=True), nn.Conv2d(8, 4, 1))
    profile = profile_model(model, 8)
    assert profile.peak_live_bytes == 4 * 64 * (3 + 8 + 4)
    # The layer-wise figure counts the in-place ReLU's input and output as two buffers.
    assert profile.peak_activation_bytes == 4 * 64 * (8 + 8)


class _Skip(nn.Module):
    """y = cat(a(x), b(a(x))): a's output stays alive across b, like a skip connection."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1, bias=False)
        self.b = nn.Conv2d(8, 8, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x)
        return torch.cat((a, self.b(a)), 1)


def test_peak_live_counts_skips_and_functional_ops() -> None:
    profile = profile_model(_Skip(), 4)
    # input 3 + a 8 + b 8 + concat 16 channels alive when cat writes, at 4x4 fp32
    assert profile.peak_live_bytes == 4 * 16 * (3 + 8 + 8 + 16)
    assert profile.madds == 16 * (3 * 8 + 8 * 8)
