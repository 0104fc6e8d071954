"""The backbone zoo: shapes, gradients, declared channels/strides, counts against the papers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from conftest import require_shared
from litedet import create_model, list_models
from litedet.bench.profile import profile_model
from litedet.models.pretrained import load_megvii_shufflenetv2, megvii_shufflenetv2, read_state_dict

BACKBONES = list_models(kind="backbone")

# Paper parameter counts (classifier, 1000 classes) and multiply-adds at 224, as printed.
PAPER = {
    "shufflenetv2_x0_5": (1.37e6, 41e6),
    "shufflenetv2_x1_0": (2.28e6, 146e6),
    "shufflenetv2_x1_5": (3.50e6, 299e6),
    "shufflenetv2_x2_0": (7.39e6, 591e6),
    "mobilenetv1_x1_0": (4.2e6, 569e6),
    "mobilenetv1_x0_75": (2.6e6, 325e6),
    "mobilenetv1_x0_5": (1.3e6, 149e6),
    "mobilenetv1_x0_25": (0.5e6, 41e6),
    "mobilenetv2_x1_0": (3.4e6, 300e6),
    "mobilenetv3_large_x1_0": (5.4e6, 219e6),
    # 0.75 variants: params only. Our 140.6M / 39.5M multiply-adds vs the printed 155M / 44M is
    # an open gap (the table asks counts for 1.0 only); see the README.
    "mobilenetv3_large_x0_75": (4.0e6, None),
    "mobilenetv3_small_x1_0": (2.5e6, 56e6),
    "mobilenetv3_small_x0_75": (2.0e6, None),
    "vovnet27_slim": (3.5e6, None),
    "vovnet39": (22.6e6, None),
    "vovnet57": (36.6e6, None),
}
# Where the printed figure and torchvision's count disagree, torchvision's exact count wins.
PAPER_PARAMS_DIFFER = {"mobilenetv2_x1_0": "Table 3 prints 3.4M; torchvision's identical network has 3.504872M"}
# Same architecture in torchvision: the counts must be equal, not close.
TORCHVISION = {
    "shufflenetv2_x0_5": lambda: torchvision.models.shufflenet_v2_x0_5(),
    "shufflenetv2_x1_0": lambda: torchvision.models.shufflenet_v2_x1_0(),
    "shufflenetv2_x1_5": lambda: torchvision.models.shufflenet_v2_x1_5(),
    "shufflenetv2_x2_0": lambda: torchvision.models.shufflenet_v2_x2_0(),
    "mobilenetv2_x1_0": lambda: torchvision.models.mobilenet_v2(),
    "mobilenetv2_x1_4": lambda: torchvision.models.mobilenet_v2(width_mult=1.4),
    "mobilenetv2_x0_75": lambda: torchvision.models.mobilenet_v2(width_mult=0.75),
    "mobilenetv3_large_x1_0": lambda: torchvision.models.mobilenet_v3_large(),
    "mobilenetv3_small_x1_0": lambda: torchvision.models.mobilenet_v3_small(),
}


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _close_to_printed(value: float, printed: float) -> bool:
    """Within 2 %, or equal once rounded to the precision the paper printed (0.47M prints as 0.5M)."""
    digits = len(f"{printed / 1e6:g}".split(".")[-1]) if "." in f"{printed / 1e6:g}" else 0
    return abs(value - printed) <= 0.02 * printed or round(value / 1e6, digits) == round(printed / 1e6, digits)


@pytest.mark.parametrize("name", BACKBONES)
def test_classifier_forward_and_gradients(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"


@pytest.mark.parametrize("name", BACKBONES)
def test_features_match_declared_channels_and_strides(name: str) -> None:
    model = create_model(name, features_only=True)
    x = torch.randn(1, 3, 96, 128)
    features = model(x)
    assert isinstance(features, list) and len(features) == len(model.out_channels) == len(model.strides)
    for feature, channels, stride in zip(features, model.out_channels, model.strides):
        assert feature.shape[1] == channels
        assert (feature.shape[2], feature.shape[3]) == (96 // stride, 128 // stride)
        assert torch.isfinite(feature).all()
    sum(f.mean() for f in features).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, f"feature mode owns parameters it never uses: {unused[:5]}"
    assert model.strides == [8, 16, 32]


@pytest.mark.parametrize("name", sorted(PAPER))
def test_counts_match_paper(name: str) -> None:
    model = create_model(name)
    params = _count(model)
    paper_params, paper_madds = PAPER[name]
    if name not in PAPER_PARAMS_DIFFER:
        assert _close_to_printed(params, paper_params), f"{name}: {params} params vs paper {paper_params}"
    if paper_madds is not None:
        madds = profile_model(model, 224).madds
        assert abs(madds - paper_madds) <= 0.02 * paper_madds, f"{name}: {madds} madds vs paper {paper_madds}"


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_counts_equal_torchvision(name: str) -> None:
    assert _count(create_model(name)) == _count(TORCHVISION[name]())


def test_shufflenetv2_computes_what_torchvision_computes() -> None:
    # Same layout, so torchvision weights load with a key rename and give the same logits.
    reference = torchvision.models.shufflenet_v2_x0_5().eval()
    ours = create_model("shufflenetv2_x0_5").eval()
    renamed = {}
    for key, value in reference.state_dict().items():
        for old, new in (("conv1.0.", "conv1.conv."), ("conv1.1.", "conv1.bn."), ("conv5.0.", "conv5.conv."), ("conv5.1.", "conv5.bn.")):
            key = key.replace(old, new) if key.startswith(old) else key
        renamed[key] = value
    ours.load_state_dict(renamed)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="resnet50"), "unknown model"),
        (dict(name="mobilenetv1_x1_0", num_classes=-1), "num_classes"),
        (dict(name="shufflenetv2_x1_0", out_indices=(7,)), "out_indices"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_model(**kwargs)


@pytest.mark.parametrize("width", [0, -0.5, 5])
def test_bad_width(width: float) -> None:
    from litedet.models.backbones.mobilenetv1 import MobileNetV1
    from litedet.models.backbones.mobilenetv3 import LARGE, MobileNetV3

    with pytest.raises(ValueError, match=r"width multiplier must be in \(0, 4\]"):
        MobileNetV1(width)
    with pytest.raises(ValueError, match="width multiplier"):
        MobileNetV3(LARGE, 1280, width)


def test_input_not_divisible() -> None:
    model = create_model("mobilenetv2_x1_0")
    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.randn(1, 3, 100, 64))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.randn(1, 1, 64, 64))


def _megvii_reference(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Megvii's ShuffleNetV2 forward written from their reference code's structure, on raw tensors."""

    def bn(t, prefix):
        return F.batch_norm(t, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                            state[f"{prefix}.weight"], state[f"{prefix}.bias"], False, 0.0, 1e-5)

    def conv(t, key, stride=1, groups=1):
        weight = state[key]
        return F.conv2d(t, weight, None, stride, weight.shape[-1] // 2, groups=groups)

    def main(t, p, stride):
        t = F.relu(bn(conv(t, f"{p}.0.weight"), f"{p}.1"))
        t = bn(conv(t, f"{p}.3.weight", stride, groups=t.shape[1]), f"{p}.4")
        return F.relu(bn(conv(t, f"{p}.5.weight"), f"{p}.6"))

    def proj(t, p):
        t = bn(conv(t, f"{p}.0.weight", 2, groups=t.shape[1]), f"{p}.1")
        return F.relu(bn(conv(t, f"{p}.2.weight"), f"{p}.3"))

    x = F.relu(bn(conv(x, "first_conv.0.weight", 2), "first_conv.1"))
    x = F.max_pool2d(x, 3, 2, 1)
    outputs = []
    for stage, repeats in (("stage2", 4), ("stage3", 8), ("stage4", 4)):
        for index in range(repeats):
            p = f"{stage}.{index}"
            if index == 0:
                x = torch.cat((proj(x, f"{p}.branch_proj"), main(x, f"{p}.branch_main", 2)), 1)
            else:  # their channel_shuffle: reshape(b*c/2, 2, hw).permute(1, 0, 2) -> even / odd channels
                b, c, h, w = x.shape
                pair = x.reshape(b * c // 2, 2, h * w).permute(1, 0, 2).reshape(2, -1, c // 2, h, w)
                x = torch.cat((pair[0], main(pair[1], f"{p}.branch_main", 1)), 1)
        outputs.append(x)
    return outputs


@pytest.mark.shared
def test_megvii_imagenet_weights_land_and_compute_the_same() -> None:
    path = require_shared("weights", "shufflenetv2-0.5x-imagenet", "shufflenetv2.pth")
    model = megvii_shufflenetv2(0.5, features_only=True, with_conv5=False, num_classes=0).eval()
    report = load_megvii_shufflenetv2(model, path)
    state = read_state_dict(path)
    assert report.complete and len(report.loaded) == len(state)
    assert not [k for k in report.missing if not k.endswith("num_batches_tracked")]
    x = torch.randn(1, 3, 64, 96)
    for ours, reference in zip(model(x), _megvii_reference(state, x)):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


def test_megvii_loader_refuses_torchvision_routing(tmp_path) -> None:
    from safetensors.torch import save_file

    model = create_model("shufflenetv2_x0_5", features_only=True, with_conv5=False)
    path = tmp_path / "w.safetensors"
    save_file({"first_conv.0.weight": torch.zeros(24, 3, 3, 3)}, str(path))
    with pytest.raises(ValueError, match="channel_order='megvii'"):
        load_megvii_shufflenetv2(model, path)
