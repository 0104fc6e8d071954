"""Pruning correctness: the channels Torch-Pruning removes are exactly the ones it says it removes.

Diagnosis of issue 7 (L1 30 % collapse): a model pruned by the dependency graph must equal the
unpruned model with those output channels zeroed (conv weight, BN gamma/beta/mean); any index
mapping error across C3 concats, residual adds or upsampling would break the equality.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

from litedet.compress import prune as P
from litedet.models.registry import create_model
from conftest import random_bn_detector

SIZE = 64


def _detector() -> nn.Module:
    return random_bn_detector("v5lite-s", SIZE)

def _flat(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([o.flatten() for o in model(x)])


def test_neck_pruning_equals_zeroing_the_removed_channels():
    model = _detector()
    zeroed = copy.deepcopy(model)
    x = torch.randn(1, 3, SIZE, SIZE)
    names = {id(m): n for n, m in model.named_modules()}
    twins = dict(zeroed.named_modules())
    features = P._capture_inputs(model, [model.neck], x)[0]
    pruner = tp.pruner.MetaPruner(
        model, [f.clone() for f in features], importance=P.create_importance("l1"), pruning_ratio=0.3,
        ignored_layers=[*P._head_layers(model), model.backbone],
        forward_fn=lambda net, maps: net.head(net.neck(maps)),
    )
    removed = 0
    with torch.no_grad():
        for group in pruner.step(interactive=True):
            for dep, idxs in group:
                module = dep.target.module
                if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)) and dep.handler.__name__ == "prune_out_channels":
                    twin = twins[names[id(module)]]
                    twin.weight[idxs] = 0
                    if twin.bias is not None:
                        twin.bias[idxs] = 0
                    if isinstance(twin, nn.BatchNorm2d):
                        twin.running_mean[idxs] = 0
                    removed += len(idxs)
            group.prune()
    assert removed > 0
    model.eval()
    torch.testing.assert_close(_flat(model, x), _flat(zeroed, x), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------- calibration-based pruning (issue 7 fix)


def _plain_net() -> nn.Module:
    """conv(3->8) -> BN -> ReLU -> conv 1x1 (8->6) -> BN -> ReLU -> conv 1x1 (6->4)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 6, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 1))
    generator = torch.Generator().manual_seed(1)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data = torch.rand(module.num_features, generator=generator) + 0.5
            module.bias.data = torch.randn(module.num_features, generator=generator) * 0.2
    return net.eval()


def _batches(n: int = 2) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return [torch.rand(4, 3, 16, 16, generator=generator) for _ in range(n)]


def _make_constant_channel(net: nn.Module, channel: int, value: float) -> None:
    """Output ``channel`` of the first block is the constant ReLU(value): zero filter, bias ``value``."""
    with torch.no_grad():
        net[0].weight[channel] = 0
        net[1].running_mean[channel] = 0
        net[1].bias[channel] = value


def test_mean_compensation_makes_removing_a_constant_channel_exact():
    # A pruned channel's (constant) activation must not simply vanish from its consumers: that
    # shift, not the graph surgery, is what collapsed the imported v5lite-s.
    x = torch.rand(2, 3, 16, 16)
    outputs = {}
    for compensate in ("none", "mean", "lsq"):
        net = _plain_net()
        _make_constant_channel(net, 5, 1.5)
        with torch.no_grad():
            reference = net(x)
        P.structured_prune(net, 0.125, "l1", imgsz=16, calibration=_batches(), compensate=compensate,
                           adaptive_bn=False, ignore=["3"])
        assert net[0].out_channels == 7 and net[3].in_channels == 7
        with torch.no_grad():
            outputs[compensate] = (net(x) - reference).abs().max().item()
    assert outputs["none"] > 0.05
    assert outputs["mean"] < 1e-4 and outputs["lsq"] < 1e-4


def test_lsq_compensation_recovers_a_linearly_dependent_channel():
    net = _plain_net()
    with torch.no_grad():  # channel 7 = 2 x channel 2 (ReLU is positively homogeneous)
        net[0].weight[7] = net[0].weight[2]
        net[1].running_mean[7] = net[1].running_mean[2]
        net[1].running_var[7] = net[1].running_var[2]
        net[1].weight[7] = 2 * net[1].weight[2]
        net[1].bias[7] = 2 * net[1].bias[2]
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        reference = net(x)
    errors = {}
    for compensate in ("mean", "lsq"):
        pruned = copy.deepcopy(net)
        graph = tp.DependencyGraph().build_dependency(pruned, example_inputs=x)
        stats = P.input_statistics(pruned, _batches())
        group = graph.get_pruning_group(pruned[0], tp.prune_conv_out_channels, [7])
        assert P._compensate_removed_inputs(group, graph, stats, compensate) == 1
        group.prune()
        with torch.no_grad():
            errors[compensate] = (pruned(x) - reference).abs().max().item()
    assert errors["mean"] > 1e-2
    assert errors["lsq"] < 1e-3


def test_reconstruction_importance_ranks_redundant_channels_first():
    net = _plain_net()
    _make_constant_channel(net, 3, 0.7)  # predictable from nothing but its mean
    stats = P.input_statistics(net, _batches())
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=torch.rand(1, 3, 16, 16))
    group = graph.get_pruning_group(net[0], tp.prune_conv_out_channels, list(range(8)))
    scores = P.reconstruction_importance(group, graph, stats, 8)
    assert scores.shape == (8,)
    assert int(torch.argmin(scores)) == 3
    assert scores[3] < 0.01 * scores.median()


def test_recalibrate_batchnorm_sets_statistics_of_the_calibration_data():
    net = _plain_net()
    batches = _batches(3)
    P.recalibrate_batchnorm(net, batches)
    with torch.no_grad():
        z = torch.cat([net[0](b) for b in batches])
    torch.testing.assert_close(net[1].running_mean, z.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert net[1].momentum == 0.1  # restored after the pass
    assert not net.training


def test_allocate_channels_round_to_global_budget_and_cap():
    sizes = [60, 116, 32]
    scores = [torch.linspace(0, 1, n) for n in sizes]
    uniform = P.allocate_channels(sizes, scores, 0.3, False, 0.75, 8)
    assert [(n - k) % 8 for n, k in zip(sizes, uniform)] == [0, 0, 0]
    assert uniform == [60 - 40, 116 - 80, 32 - 24]
    scores[0] = scores[0] * 0.01  # group 0 is much less important: global pruning takes it first
    glob = P.allocate_channels(sizes, scores, 0.3, True, 0.5, None)
    assert sum(glob) == round(0.3 * sum(sizes))
    assert glob[0] == 30  # capped at half of the group
    assert glob[0] / sizes[0] > glob[1] / sizes[1]


def test_calibrated_pruning_of_a_folded_detector_stays_close_to_the_original():
    """The issue-7 pipeline on a BN-folded detector (as imported): with calibration images the
    pruned network's outputs stay much closer to the unpruned ones than plain L1 pruning."""
    model = create_model("v5lite-s", input_size=SIZE).eval()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # folded BN: identity statistics, information in conv weights + bias
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.bias.normal_(0, 0.5, generator=generator)
    calibration = [torch.rand(8, 3, SIZE, SIZE, generator=generator) for _ in range(2)]
    x = calibration[0]
    reference = _flat(model, x)
    errors = {}
    for name, options in {"l1": dict(importance="l1"),
                          "calibrated": dict(importance="reconstruction", calibration=calibration)}.items():
        pruned = copy.deepcopy(model)
        result = P.structured_prune(pruned, 0.3, imgsz=SIZE, round_to=8, **options)
        assert result.channels_after < result.channels_before
        errors[name] = ((_flat(pruned, x) - reference).norm() / reference.norm()).item()
    assert errors["calibrated"] < 0.5 * errors["l1"]


def test_prune_verb_needs_calibration_images_for_reconstruction_before_any_work(capsys):
    from litedet.cli import main

    # The weights file does not exist: the error must be about calibration, raised first.
    assert main(["prune", "--weights", "missing.safetensors", "--ratio", "0.3", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "calibration images" in err and "method l1" in err


def test_prune_verb_end_to_end_with_calibration_and_finetune(tmp_path):
    """`litedet prune` with the defaults (reconstruction importance, calibration from --data,
    widths rounded to 8, EMA fine-tune) on a tiny imported-like (BN-folded) detector."""
    from conftest import require_shared

    from litedet.cli import main
    from litedet.compress.checkpoint import save_compressed
    from litedet.models.checkpoint import load_detector

    require_shared("data", "raccoon")
    data = Path(__file__).resolve().parents[1] / "configs" / "data" / "raccoon.yaml"
    torch.manual_seed(0)
    model = create_model("v5lite-s", input_size=SIZE, num_classes=1, names=["raccoon"]).eval()
    weights = save_compressed(model, tmp_path / "folded.safetensors")
    out = tmp_path / "pruned"
    code = main(["prune", "--weights", str(weights), "--ratio", "0.3", "--data", str(data), "--calib-images", "8",
                 "--steps", "1", "--batch", "2", "--no-report", "--no-progress", "-o", str(out)])
    assert code == 0
    pruned, config = load_detector(out / "model.safetensors")
    step = config.extra["compression"]["steps"][0]
    assert step["method"] == "reconstruction" and step["compensate"] == "lsq" and step["round_to"] == 8
    widths = [m.out_channels for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d) and n.startswith("neck")]
    assert all(w % 8 == 0 for w in widths)
    assert sum(p.numel() for p in pruned.parameters()) < 0.85 * sum(p.numel() for p in model.parameters())


def test_ssdlite_pruning_keeps_its_prediction_layout():
    """SSDLite's box and class predictors write the anchor layout that decode reads: structured
    pruning narrows the network behind them, magnitude pruning leaves their weights alone."""
    model = create_model("ssdlite-mobilenetv3_small", num_classes=3).eval()
    fixed = P._head_layers(model)
    assert len(fixed) == 12 and all(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in fixed)
    x = torch.rand(1, 3, 128, 128)
    shapes = [o.shape for o in model(x)]
    pruned = copy.deepcopy(model)
    result = P.structured_prune(pruned, 0.3, "l1", imgsz=128)
    assert result.params_after < result.params_before
    assert [o.shape for o in pruned.eval()(x)] == shapes
    before = [m.weight.detach().clone() for m in fixed]
    P.magnitude_prune(model, 0.5)
    assert all(torch.equal(m.weight, w) for m, w in zip(fixed, before))
