"""Compression: pruning, low-rank, quantization, distillation, recipes (tiny inputs, CPU)."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from litedet.compress.checkpoint import save_compressed
from litedet.compress.distill import (
    AttentionTransfer,
    Distiller,
    FitNetLoss,
    HintonKD,
    ResponseKD,
    Taps,
    check_compatible,
    tap_features,
)
from litedet.compress.lowrank import cp_decompose, decompose, svd_decompose, svd_decompose_data_aware
from litedet.compress.prune import BNSparsity, input_statistics, magnitude_prune, structured_prune, weight_sparsity
from litedet.compress.recipe import parse_recipe
from litedet.models.checkpoint import load_detector
from conftest import random_bn_detector, structured_images

SIZE = 64


def _detector(name: str = "v5lite-e", seed: int = 0, **kwargs) -> nn.Module:
    return random_bn_detector(name, SIZE, seed, **kwargs)

def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return list(model(x))


# ------------------------------------------------------------------------------------- pruning


@pytest.mark.parametrize("importance", ["l1", "bn_scale"])
def test_structured_pruning_removes_channels_and_keeps_the_head_layout(importance):
    model = _detector("v5lite-s")
    x = torch.randn(1, 3, SIZE, SIZE)
    shapes = [o.shape for o in _outputs(model, x)]
    c3_width = model.neck.td4.cv1.conv.out_channels
    unit_width = model.backbone.stage3[1].branch2[0].out_channels
    result = structured_prune(model, 0.3, importance, imgsz=SIZE)
    assert result.params_after < 0.85 * result.params_before
    assert result.channels_after < result.channels_before
    assert model.neck.td4.cv1.conv.out_channels < c3_width  # C3 hidden width really shrank
    assert model.backbone.stage3[1].branch2[0].out_channels < unit_width  # inside ShuffleNetV2 units too
    assert model.backbone.stage3[1].branch2[5].out_channels == unit_width  # unit outputs kept (shuffle)
    assert [o.shape for o in _outputs(model, x)] == shapes  # head layout kept
    assert all(torch.isfinite(o).all() for o in _outputs(model, x))


def test_bn_scale_prunes_the_smallest_gammas():
    model = _detector("v5lite-e")
    bn = model.neck.td3.cv1.bn
    with torch.no_grad():
        bn.weight.fill_(1.0)
        bn.weight[:4] = 1e-4  # four channels network slimming should remove first
    kept_before = bn.weight.clone()
    structured_prune(model, 0.1, "bn_scale", imgsz=SIZE)
    remaining = model.neck.td3.cv1.bn.weight
    assert len(remaining) < len(kept_before)
    assert remaining.min() > 1e-3


def test_pruned_checkpoint_round_trip(tmp_path):
    model = _detector("v5lite-e")
    structured_prune(model, 0.25, "l1", imgsz=SIZE)
    x = torch.randn(1, 3, SIZE, SIZE)
    path = save_compressed(model, tmp_path / "pruned.safetensors")
    loaded, config = load_detector(path)
    assert config.extra["compression"]["pruned"] is True
    for a, b in zip(_outputs(model, x), _outputs(loaded, x)):
        torch.testing.assert_close(a, b)


def test_magnitude_pruning_sparsity_and_shapes():
    model = _detector("v5lite-e")
    shapes = {name: p.shape for name, p in model.named_parameters()}
    result = magnitude_prune(model, 0.5)
    assert result.sparsity == pytest.approx(0.5, abs=0.02)
    assert {name: p.shape for name, p in model.named_parameters()} == shapes
    assert result.params_after == result.params_before  # dense size unchanged: reported honestly
    assert weight_sparsity(model) > 0.45


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5])
def test_ratio_outside_open_interval_is_an_error(ratio):
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        structured_prune(_detector(), ratio)


def test_bn_sparsity_loss_and_subgradient():
    model = _detector()
    sparsity = BNSparsity(model, 1e-3)
    assert sparsity.loss() > 0
    model.zero_grad()
    for bn in sparsity.norms:
        bn.weight.grad = torch.zeros_like(bn.weight)
    sparsity.add_subgradient()
    bn = sparsity.norms[0]
    torch.testing.assert_close(bn.weight.grad, 1e-3 * torch.sign(bn.weight))


# ------------------------------------------------------------------------------------ low-rank


def test_svd_full_rank_reconstructs_and_low_rank_shrinks():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, 1, bias=True)
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(svd_decompose(conv, 16)(x), conv(x), atol=1e-4, rtol=1e-4)
    low = svd_decompose(conv, 4)
    assert sum(p.numel() for p in low.parameters()) < sum(p.numel() for p in conv.parameters())
    linear = nn.Linear(20, 12)
    y = torch.randn(3, 20)
    torch.testing.assert_close(svd_decompose(linear, 12)(y), linear(y), atol=1e-4, rtol=1e-4)


def test_cp_reconstructs_at_high_rank_with_stride():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1)
    x = torch.randn(2, 4, 9, 9)
    factors = cp_decompose(conv, 36)
    out = factors(x)
    assert out.shape == conv(x).shape
    assert (out - conv(x)).abs().max() < 1e-2 * conv(x).abs().max()


def test_decompose_pattern_that_matches_no_layer_is_an_error():
    with pytest.raises(ValueError, match=r"pattern 'nosuch\.\*' matches no layer of v5lite-e"):
        decompose(_detector("v5lite-e"), "svd", rank=0.5, exclude=("nosuch.*",))


def test_decompose_model_reduces_params_and_round_trips(tmp_path):
    model = _detector("v5lite-e")
    x = structured_images(1, SIZE)
    reference = _outputs(model, x)
    full = copy.deepcopy(model)
    # Full rank, every 1x1 replaced (even when larger), BatchNorm folded into the factors: same
    # outputs up to float32 rounding through ~40 layers, which scales with the output magnitude.
    assert len(decompose(full, "svd", energy=1.0, min_reduction=-100).layers) > 10
    for a, b in zip(_outputs(full, x), reference):
        torch.testing.assert_close(a, b, atol=1e-4 * float(b.abs().max()), rtol=0)
    result = decompose(model, "svd", rank=0.25)
    assert result.params_after < result.params_before and result.layers
    assert [o.shape for o in _outputs(model, x)] == [o.shape for o in reference]
    loaded, _ = load_detector(save_compressed(model, tmp_path / "lowrank.safetensors"))
    for a, b in zip(_outputs(model, x), _outputs(loaded, x)):
        torch.testing.assert_close(a, b)


def test_data_aware_svd_is_exact_at_full_rank_and_beats_weight_svd_on_correlated_inputs():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, 1, bias=False)
    # Inputs living (mostly) in a 4-dimensional subspace of the 16 channels, plus an offset.
    mixing = torch.randn(16, 4)
    x = torch.einsum("ck,bkhw->bchw", mixing, torch.randn(6, 4, 10, 10)) + 0.01 * torch.randn(6, 16, 10, 10) + 0.5
    stats = input_statistics(nn.Sequential(conv), [x[:3], x[3:]], [conv])[conv]
    torch.testing.assert_close(svd_decompose_data_aware(conv, 16, stats)(x), conv(x), atol=1e-4, rtol=1e-4)
    reference = conv(x)
    data_error = (svd_decompose_data_aware(conv, 4, stats)(x) - reference).pow(2).mean()
    weight_error = (svd_decompose(conv, 4)(x) - reference).pow(2).mean()
    assert data_error < 1e-2 * weight_error
    linear = nn.Linear(12, 10)
    y = torch.randn(50, 12)
    linear_stats = input_statistics(nn.Sequential(linear), [y], [linear])[linear]
    torch.testing.assert_close(svd_decompose_data_aware(linear, 10, linear_stats)(y), linear(y), atol=1e-4, rtol=1e-4)


def test_data_aware_decompose_of_a_detector_round_trips(tmp_path):
    model = _detector("v5lite-e")
    x = torch.randn(2, 3, SIZE, SIZE)
    reference = _outputs(model, x)
    full = copy.deepcopy(model)
    assert decompose(full, "svd", energy=1.0, min_reduction=-100, calibration=[x]).layers
    for a, b in zip(_outputs(full, x), reference):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
    result = decompose(model, "svd", rank=0.25, calibration=[x])
    assert result.params_after < result.params_before
    assert all(spec["bias"] for spec in model.compression["lowrank"].values())
    loaded, _ = load_detector(save_compressed(model, tmp_path / "lowrank.safetensors"))
    for a, b in zip(_outputs(model, x), _outputs(loaded, x)):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="calibration is empty"):
        decompose(copy.deepcopy(model), "svd", rank=0.5, calibration=[])


# ---------------------------------------------------------------------------------- quantization


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from litedet.export.api import export_model

    out = tmp_path_factory.mktemp("onnx")
    result = export_model(_detector("v5lite-e"), "onnx", out, stem="model")
    images = out / "calib"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(6):  # smooth synthetic photos: blurred noise at two scales
        image = cv2.GaussianBlur(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8), (0, 0), 3 + index)
        cv2.imwrite(str(images / f"img{index}.jpg"), image)
    return Path(result.path), images


def test_int8_static_onnx_runs_and_correlates_with_fp32(tiny_onnx, tmp_path):
    from litedet.compress.quantize import quantize
    from litedet.runtime import open_backend

    model, images = tiny_onnx
    result = quantize(model, tmp_path / "int8.onnx", "ort-static", images, num_images=6)
    assert result.size_after < result.size_before
    fp32, int8 = open_backend(model, threads=1), open_backend(result.output, threads=1)
    assert int8.config.precision == "int8" and int8.config.extra["quantization"]["per_channel"] is True
    from litedet.compress.quantize import calibration_batches

    correlations = []
    for batch in calibration_batches(sorted(images.iterdir()), fp32.config):  # pre-processed as the backend does
        for a, b in zip(fp32.run(batch), int8.run(batch)):
            assert a.shape == b.shape
            correlations.append(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    # The bound of the real-image check (where a badly scaled calibration measurably breaks it):
    # test_core_properties.py::test_int8_calibrated_on_real_images_keeps_outputs_on_held_out_real_images.
    assert np.median(correlations) >= 0.85


def test_dynamic_int8_is_data_free(tiny_onnx, tmp_path):
    from litedet.compress.quantize import quantize
    from litedet.runtime import open_backend

    model, _ = tiny_onnx
    result = quantize(model, tmp_path / "dyn.onnx", "ort-dynamic")
    outputs = open_backend(result.output, threads=1).run(np.full((1, 3, SIZE, SIZE), 0.5, np.float32))
    assert len(outputs) == 3


def test_calibration_folder_without_images_is_an_error(tiny_onnx, tmp_path):
    from litedet.compress.quantize import quantize

    model, _ = tiny_onnx
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="no readable image"):
        quantize(model, tmp_path / "x.onnx", "ort-static", empty)


# ---------------------------------------------------------------------------------- distillation


def _taps(model: nn.Module, x: torch.Tensor) -> Taps:
    with tap_features(model) as store:
        outputs = list(model(x))
    return Taps(outputs, store[-1])


def test_distillation_losses_are_zero_for_identical_networks():
    teacher = _detector()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        taps = _taps(teacher, x)
        channels = [f.shape[1] for f in taps.features]
        assert ResponseKD(3, 80)(taps, taps).abs() < 1e-6
        assert FitNetLoss(channels, channels)(taps, taps).abs() < 1e-6
        assert AttentionTransfer()(taps, taps).abs() < 1e-6
        logits = Taps([torch.randn(4, 10)])
        assert HintonKD(4.0)(logits, logits).abs() < 1e-6


@pytest.mark.parametrize("strategy", ["response", "fitnet", "attention"])
def test_distillation_loss_decreases_over_a_few_steps(strategy):
    teacher = _detector(seed=0)
    student = _detector(seed=1)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        target = _taps(teacher, x)
    distiller = Distiller({strategy: 1.0}, student, teacher, imgsz=SIZE)
    optimizer = torch.optim.Adam([*student.parameters(), *distiller.parameters()], lr=1e-3)
    student.train()
    losses = []
    for _ in range(6):
        loss = distiller(_taps(student, x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_teacher_with_other_classes_is_rejected():
    with pytest.raises(ValueError, match="teacher classes"):
        check_compatible(_detector(num_classes=3), _detector(num_classes=80))


# ----------------------------------------------------------------------------------------- recipe


def _recipe(**changes):
    data = {"model": "m.safetensors", "data": "d.yaml", "steps": [{"prune": {"ratio": 0.3}}, {"finetune": {"epochs": 1}}]}
    data.update(changes)
    return data


def test_recipe_parses_typed_steps():
    recipe = parse_recipe(_recipe(steps=[{"prune": {"method": "bn_scale", "ratio": 0.3}}, "finetune",
                                         {"quantize": {"calib": "imgs", "images": 8}}]))
    assert [name for name, _ in recipe.steps] == ["prune", "finetune", "quantize"]
    assert recipe.steps[0][1].ratio == 0.3 and recipe.steps[2][1].images == 8


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"steps": [{"shrink": {}}]}, "unknown step 'shrink'"),
        ({"steps": [{"prune": {"ratio": 0.3, "speed": 2}}]}, r"unknown keys \['speed'\]"),
        ({"steps": [{"prune": {"ratio": 1.3}}]}, r"\(0, 1\)"),
        ({"steps": [{"prune": {"ratio": "a lot"}}]}, "expected float"),
        ({"colour": "red"}, r"unknown keys \['colour'\]"),
        ({"data": None}, "needs 'data'"),
        ({"steps": []}, "non-empty list"),
        ({"model": "m.onnx"}, "need a torch checkpoint"),
        ({"steps": [{"quantize": {"method": "ort-static"}}]}, "calib"),
        ({"steps": [{"finetune": {"imgsz": 100}}]}, r"finetune.imgsz must be a multiple of 32"),
        ({"steps": [{"distill": {"teacher": "t.safetensors", "imgsz": 16}}]}, r"distill.imgsz must be a multiple of 32"),
        ({"report": {"threads": 0}}, r"report: threads must be >= 1, got 0"),
        ({"report": {"runs": 0}}, r"report: runs must be >= 1, got 0"),
        ({"report": {"budget_s": 0}}, r"report: budget_s must be > 0 seconds"),
        ({"report": {"val_images": "imgs"}}, r"report: val_images needs val_annotations too"),
        ({"out": __file__}, r"out .*test_compress.py is a file; give a folder"),
    ],
)
def test_recipe_errors_are_clear(changes, message):
    with pytest.raises(ValueError, match=message):
        parse_recipe(_recipe(**changes))


def test_cli_rejects_bad_ratio_before_work(capsys):
    from litedet.cli import main

    assert main(["prune", "--weights", "missing.safetensors", "--ratio", "1.5", "--no-report"]) == 2
    assert "(0, 1)" in capsys.readouterr().err


def test_qat_trains_and_exports_a_qdq_onnx(tmp_path):
    import onnx

    from litedet.compress.qat import FakeQuantConv2d, calibrate, export_qat_onnx, prepare_qat
    from litedet.runtime import open_backend

    model = _detector("v5lite-e")
    x = torch.rand(1, 3, SIZE, SIZE)
    reference = _outputs(model, x)
    prepare_qat(model)
    assert any(isinstance(m, FakeQuantConv2d) for m in model.modules())
    calibrate(model, [torch.rand(1, 3, SIZE, SIZE) for _ in range(3)] + [x])
    model.train()
    loss = sum(o.pow(2).mean() for o in model(x))
    loss.backward()  # straight-through gradients reach the float weights
    assert model.backbone.conv1.conv.conv.weight.grad is not None
    path = export_qat_onnx(model, tmp_path)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    backend = open_backend(path, threads=1)
    assert backend.config.precision == "int8"
    for a, b in zip(reference, backend.run(x.numpy())):
        assert np.corrcoef(a.numpy().ravel(), b.ravel())[0, 1] > 0.9  # on a calibration input


def test_cli_counts_and_distillation_weights_are_checked_before_work(capsys):
    from litedet.cli import main

    cases = [
        (["distill", "--teacher", "t.safetensors", "--student", "s.safetensors", "--data", "d.yaml", "--epochs", "-1"],
         "argument --epochs: must be >= 0, got -1"),
        (["prune", "--weights", "m.safetensors", "--ratio", "0.3", "--threads", "0"], "argument --threads: must be >= 1, got 0"),
        (["prune", "--weights", "m.safetensors", "--ratio", "0.3", "--runs", "0"], "argument --runs: must be >= 1, got 0"),
        (["distill", "--teacher", "t.safetensors", "--student", "s.safetensors", "--data", "d.yaml", "--strategies",
          "response=-1"], "--strategies: weight of 'response' must be > 0, got -1"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) if "argument" in message else contextlib.nullcontext():
            code = main(argv)
            assert code == 2
        assert message in capsys.readouterr().err


def test_an_unreadable_onnx_or_an_empty_calibration_folder_is_refused_before_stage_zero(tmp_path, capsys):
    from litedet.cli import main
    from litedet.config import ModelConfig

    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    ModelConfig(model="v5lite-e", num_classes=1, names=["a"], input_size=(64, 64)).save(tmp_path / "bad.json")
    images = tmp_path / "calib"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.zeros((64, 64, 3), np.uint8))
    out = tmp_path / "out"
    assert main(["quantize", "--weights", str(bad), "--calib", str(images), "-o", str(out), "--no-report"]) == 2
    assert f"{bad}: not a readable ONNX model" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    from litedet.models.checkpoint import save_checkpoint_weights
    from litedet.models.registry import create_model

    weights = save_checkpoint_weights(create_model("v5lite-e", input_size=64).eval(), tmp_path / "e.safetensors")
    assert main(["prune", "--weights", str(weights), "--ratio", "0.3", "--calib", str(empty),
                 "-o", str(out), "--no-report"]) == 2
    assert f"calibration source {empty} has no readable image" in capsys.readouterr().err
    assert not out.exists()
