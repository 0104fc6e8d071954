"""Conv+BN folding (``fuse_model``), the identity-BatchNorm test and ``make_divisible``
(litedet.layers.conv), on small hand-built modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from litedet.layers.conv import ConvBnAct, fuse_conv_bn, fuse_model, is_identity_batchnorm, make_divisible


def _randomize_bn(bn: nn.BatchNorm2d, generator: torch.Generator) -> nn.BatchNorm2d:
    """Running statistics and affine parameters far from the identity."""
    n = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(n, generator=generator))
        bn.running_var.copy_(torch.rand(n, generator=generator) * 2 + 0.1)
        bn.weight.copy_(torch.rand(n, generator=generator) + 0.5)
        bn.bias.copy_(torch.randn(n, generator=generator))
    return bn


class _BnThenConv(nn.Module):
    """A custom (non-Sequential) block that registers ``conv`` before ``bn`` but runs BN first:
    registration order says nothing about data flow outside a Sequential."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x))


def test_fused_conv_equals_conv_then_bn_in_float32():
    """Grouped conv without bias, tiny running variances and a large eps: the folded conv matches
    conv -> BN to float32 rounding (a few ulps of the largest output, 1e-5 relative)."""
    generator = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False)
    bn = _randomize_bn(nn.BatchNorm2d(6, eps=1e-3), generator).eval()
    bn.running_var.copy_(torch.tensor([1e-9, 1e-7, 1e-5, 1e-3, 1.0, 4.0]))
    x = torch.randn(2, 4, 7, 7, generator=generator)
    with torch.no_grad():
        expected = bn(conv(x))
        fused = fuse_conv_bn(conv, bn)
        got = fused(x)
    assert fused.groups == 2 and fused.bias is not None
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_fuse_model_folds_every_conv_bn_pair_and_keeps_the_function():
    """ConvBnAct, (Conv2d, BatchNorm2d) neighbours in nested and top-level Sequentials are folded; a
    BN after a non-conv and a BN inside a custom module are left; the eval output is unchanged."""
    generator = torch.Generator().manual_seed(1)
    model = nn.Sequential(
        ConvBnAct(3, 4, 3),
        nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU()),
        nn.BatchNorm2d(4),  # after a Sequential: lone
        _BnThenConv(4),
        nn.Conv2d(4, 4, 1),
        nn.BatchNorm2d(4),
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            _randomize_bn(module, generator)
    model.eval()
    lone_bn, custom = model[2], model[3]
    custom_conv, custom_bn = custom.conv, custom.bn
    x = torch.randn(2, 3, 8, 8, generator=generator)
    with torch.no_grad():
        before = model(x)
        assert fuse_model(model) is model
        after = model(x)
    assert isinstance(model[0].bn, nn.Identity) and model[0].conv.bias is not None
    assert isinstance(model[1][1], nn.Identity) and model[1][0].bias is not None
    assert isinstance(model[5], nn.Identity) and model[4].bias is not None
    assert model[2] is lone_bn
    assert custom.conv is custom_conv and custom.bn is custom_bn
    assert [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)] == [lone_bn, custom_bn]
    assert (after - before).abs().max() <= 1e-5 * before.abs().max()


def test_fuse_model_leaves_a_custom_block_whose_bn_runs_before_its_conv():
    generator = torch.Generator().manual_seed(2)
    block = _BnThenConv(3)
    _randomize_bn(block.bn, generator)
    model = nn.Sequential(nn.ReLU(), block).eval()
    x = torch.randn(1, 3, 6, 6, generator=generator)
    with torch.no_grad():
        before = model(x)
        fuse_model(model)
        after = model(x)
    assert isinstance(block.bn, nn.BatchNorm2d) and isinstance(block.conv, nn.Conv2d) and block.conv.bias is not None
    assert torch.equal(after, before)


# ---- is_identity_batchnorm ------------------------------------------------------------------------


def _identity_bn(channels: int = 3, eps: float = 1e-5) -> nn.BatchNorm2d:
    """What the ncnn importer leaves: weight 1, mean 0, var 1 - eps, a folded bias."""
    bn = nn.BatchNorm2d(channels, eps=eps).eval()
    with torch.no_grad():
        bn.running_var.fill_(1.0 - eps)
        bn.bias.copy_(torch.linspace(-1.0, 2.0, channels))
    return bn


@pytest.mark.parametrize("eps", [1e-5, 1e-3, 0.1])
def test_identity_batchnorm_recognises_the_importer_identity_for_any_eps(eps):
    assert is_identity_batchnorm(_identity_bn(eps=eps))


@pytest.mark.parametrize("eps", [1e-5, 1e-3])
def test_identity_batchnorm_survives_statistics_saved_in_half_precision(eps):
    """A checkpoint written in fp16 and loaded into a float32 model: 1 - eps comes back rounded to
    fp16 (1 - 1e-3 -> 0.99902344, 2.3e-5 off), and the BN is still the folded identity."""
    bn = _identity_bn(eps=eps)
    with torch.no_grad():
        bn.running_var.copy_(bn.running_var.half().float())
    assert float((bn.running_var + bn.eps - 1).abs().max()) > 1e-5 or eps == 1e-5
    assert is_identity_batchnorm(bn)


def test_identity_batchnorm_rejects_a_variance_or_scale_beyond_rounding():
    bn = _identity_bn()
    with torch.no_grad():
        bn.running_var[1] += 2e-4
    assert not is_identity_batchnorm(bn)
    # a scale 3e-5 from 1 (250 float32 ulps) is a real scale, not rounding of 1
    bn = _identity_bn()
    with torch.no_grad():
        bn.weight[2] = 1.0 + 3e-5
    assert not is_identity_batchnorm(bn)
    bn = _identity_bn()
    with torch.no_grad():
        bn.running_mean[0] = 1e-7
    assert not is_identity_batchnorm(bn)


@pytest.mark.parametrize("missing", ["running_mean", "running_var"])
def test_identity_batchnorm_is_false_when_a_running_statistic_is_missing(missing):
    bn = _identity_bn()
    setattr(bn, missing, None)
    assert is_identity_batchnorm(bn) is False


def test_identity_batchnorm_is_false_for_a_bn_that_stopped_tracking_statistics():
    """Buffers still hold identity statistics, but the layer no longer tracks them: like
    ``fuse_model``, treat it as a BN without running statistics."""
    bn = _identity_bn()
    bn.track_running_stats = False
    assert is_identity_batchnorm(bn) is False
    model = nn.Sequential(nn.Conv2d(3, 3, 1), bn).eval()
    fuse_model(model)
    assert model[1] is bn


# ---- make_divisible -------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [(30.0, 32), (26.0, 24), (28.0, 32), (4.0, 8), (100.0, 104), (36.0, 40)])
def test_make_divisible_defaults_to_multiples_of_8(value, expected):
    assert make_divisible(value) == expected


@pytest.mark.parametrize("value, divisor, expected", [(10.0, 9, 9), (20.0, 18, 18), (30.0, 27, 27)])
def test_make_divisible_keeps_a_value_that_loses_exactly_ten_percent(value, divisor, expected):
    assert 0.9 * value == expected  # exactly 90 %
    assert make_divisible(value, divisor) == expected


@pytest.mark.parametrize("value, expected", [(7.4, 7), (7.6, 8), (1.0, 1), (0.2, 1)])
def test_make_divisible_by_one_rounds_to_the_nearest_integer(value, expected):
    assert make_divisible(value, 1) == expected


def test_make_divisible_uses_the_given_min_value():
    assert make_divisible(3.0, 8, min_value=4) == 4
    assert make_divisible(3.0, 8, min_value=0) == 8  # 0 would lose 100 %: one divisor up
    assert make_divisible(5.0, 8, min_value=16) == 16
    assert make_divisible(3.0, 8) == 8


@pytest.mark.parametrize("divisor", [0, -8])
def test_make_divisible_rejects_a_non_positive_divisor(divisor):
    with pytest.raises(ValueError, match=rf"^divisor must be > 0, got {divisor}$"):
        make_divisible(16.0, divisor)


def test_make_divisible_is_a_multiple_never_below_ninety_percent():
    for divisor in (1, 3, 4, 8, 16):
        for tenth in range(1, 2000, 7):
            value = tenth / 10
            result = make_divisible(value, divisor)
            assert result % divisor == 0 and result >= divisor
            assert result >= 0.9 * value and result <= value + divisor / 2 + divisor
