"""Folding ShuffleNetV2 channel shuffles into weights: exact in torch, and exported graphs (ONNX,
OpenVINO, ncnn) without any Reshape-Transpose-Reshape that give torch's head outputs."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import random_bn_detector, require_shared, structured_images
from litedet.export.fold import RestoreChannelOrder, fold_channel_shuffles
from litedet.layers import ShuffleV2Block, fuse_model
from litedet.layers.shuffle import FoldedShuffleStage, fold_shuffle_stage

SIZE = 64
DETECTORS = ["v5lite-e", "v5lite-s", "yolo-shufflenetv2_x0_5"]


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(x)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _folded(model: nn.Module) -> tuple[nn.Module, int]:
    copy_ = fuse_model(copy.deepcopy(model).eval())
    return copy_, fold_channel_shuffles(copy_)


def _random_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.data = torch.rand(n, generator=generator) + 0.5
                module.bias.data = torch.randn(n, generator=generator) * 0.2
                module.running_mean.data = torch.randn(n, generator=generator) * 0.2
                module.running_var.data = torch.rand(n, generator=generator) + 0.5
    return model.eval()


@pytest.mark.parametrize("name", DETECTORS)
def test_fold_equals_torch_and_removes_every_shuffle(name: str) -> None:
    model = random_bn_detector(name, SIZE)
    x = structured_images(2, SIZE, seed=1)
    reference = _outputs(model, x)
    fused = _outputs(fuse_model(copy.deepcopy(model)), x)
    folded, removed = _folded(model)
    assert removed == sum(isinstance(m, ShuffleV2Block) for m in model.modules())
    assert not any(isinstance(m, ShuffleV2Block) for m in folded.modules())
    assert not any(isinstance(m, RestoreChannelOrder) for m in folded.modules())  # the PAN absorbed the orders
    for got, want, want_fused in zip(_outputs(folded, x), reference, fused):
        # folding only reorders weights (and so the float summation order)
        torch.testing.assert_close(got, want_fused, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)  # BatchNorm fusion rounds too
    # each stage reads every piece once: a stride-1 unit reads half its stage's width, and a
    # stride-2 one the whole input
    stages = [m for m in folded.modules() if isinstance(m, FoldedShuffleStage)]
    assert len(stages) == 3
    for stage in stages:
        sizes = list(stage.input_sizes) + [s for unit in stage.makes for branch in unit for s in branch]
        read = sorted(i for r in stage.reads for i in r) + sorted(stage.output)
        assert sorted(read) == list(range(len(sizes)))
        for stride, reads in zip(stage.strides, stage.reads):
            width = sum(sizes[i] for i in reads)
            assert width == (stage.in_channels if stride == 2 else stage.out_channels // 2)
        assert sum(sizes[i] for i in stage.output) == stage.out_channels


@pytest.mark.parametrize("name", ["shufflenetv2_x0_5", "shufflenetv2_se_x1_0"])
def test_fold_classifier_absorbs_order_into_conv5(name: str) -> None:
    from litedet.models import create_model

    model = _random_bn(create_model(name, num_classes=10))
    x = torch.rand(2, 3, 64, 64)
    reference = _outputs(model, x)
    folded, removed = _folded(model)
    assert removed == 16
    torch.testing.assert_close(_outputs(folded, x)[0], reference[0], rtol=1e-4, atol=1e-4)


def test_fold_feature_extractor_without_known_reader_restores_order() -> None:
    from litedet.models import create_model

    model = _random_bn(create_model("shufflenetv2_x0_5", features_only=True, num_classes=0, with_conv5=False))
    x = torch.rand(1, 3, 64, 64)
    reference = _outputs(model, x)
    folded, _ = _folded(model)
    # no neck reads these maps, so each returned map is put back in true channel order
    assert sum(isinstance(m, RestoreChannelOrder) for m in folded.modules()) == 3
    for got, want in zip(_outputs(folded, x), reference):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_fold_megvii_routing_and_random_input_order() -> None:
    torch.manual_seed(0)
    units = nn.Sequential(ShuffleV2Block(24, 48, 2, channel_order="megvii"),
                          *[ShuffleV2Block(48, 48, 1, channel_order="megvii") for _ in range(5)])
    _random_bn(units)
    x = torch.rand(1, 24, 16, 16)
    reference = _outputs(units, x)[0]
    order = torch.randperm(24).tolist()  # the stage input arrives permuted
    folded, out_order = fold_shuffle_stage(list(copy.deepcopy(units)), order)
    got = folded(x[:, order])
    inverse = torch.empty(48, dtype=torch.long)
    inverse[torch.as_tensor(out_order)] = torch.arange(48)
    torch.testing.assert_close(got[:, inverse], reference, rtol=0, atol=1e-5)


def test_fold_stage_of_stride_one_units_splits_its_input_by_reader() -> None:
    torch.manual_seed(1)
    units = nn.Sequential(*[ShuffleV2Block(32, 32, 1) for _ in range(4)])
    _random_bn(units)
    x = torch.rand(1, 32, 8, 8)
    reference = _outputs(units, x)[0]
    order = torch.randperm(32).tolist()
    folded, out_order = fold_shuffle_stage(list(copy.deepcopy(units)), order)
    assert len(folded.input_sizes) > 1  # the permuted input arrives in runs for several readers
    got = folded(x[:, order])
    inverse = torch.empty(32, dtype=torch.long)
    inverse[torch.as_tensor(out_order)] = torch.arange(32)
    torch.testing.assert_close(got[:, inverse], reference, rtol=0, atol=1e-5)


def test_fold_twice_is_refused() -> None:
    folded, _ = _folded(random_bn_detector("v5lite-e", SIZE))
    with pytest.raises(ValueError, match="already folded"):
        fold_channel_shuffles(folded)


def test_models_without_shuffles_are_untouched() -> None:
    model = random_bn_detector("yolo-mobilenetv2_x1_0", SIZE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert fold_channel_shuffles(model) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _ops(path: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("name", DETECTORS)
def test_onnx_export_has_no_shuffle_and_equals_torch(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import litedet.export.api as export_api
    from litedet.runtime import open_backend

    model = random_bn_detector(name, SIZE)
    result = export_api.export_model(model, "onnx", tmp_path / "folded")
    assert result.config.extra["export"]["channel_shuffles_folded"] > 0
    ops = _ops(result.path)
    assert not {"Transpose", "Reshape", "Gather"} & ops and "Split" in ops
    monkeypatch.setattr(export_api, "fold_channel_shuffles", lambda network: 0)
    plain = export_api.export_model(model, "onnx", tmp_path / "plain")
    assert "Transpose" in _ops(plain.path)
    x = structured_images(1, SIZE, seed=2).numpy()
    fused = fuse_model(copy.deepcopy(model))  # what the export starts from
    folded_out = open_backend(result.path, threads=1).run(x)
    for got, want, want_plain in zip(folded_out, _outputs(fused, torch.from_numpy(x)), open_backend(plain.path, threads=1).run(x)):
        np.testing.assert_allclose(got, want_plain, rtol=1e-4, atol=1e-4)  # the same engine, with and without shuffles
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-3, atol=1e-3)  # ORT's kernels round differently


@pytest.mark.parametrize("fmt", ["openvino", "ncnn"])
def test_openvino_and_ncnn_exports_have_no_shuffle(fmt: str, tmp_path: Path) -> None:
    from litedet.export.api import export_model
    from litedet.runtime import open_backend

    pytest.importorskip("openvino" if fmt == "openvino" else "pnnx")
    model = random_bn_detector("v5lite-e", SIZE)
    result = export_model(model, fmt, tmp_path)
    text = result.path.read_text()
    if fmt == "openvino":
        assert 'type="Transpose"' not in text and 'type="Reshape"' not in text and 'type="ShuffleChannels"' not in text
    else:
        assert "Permute" not in text and "ShuffleChannel" not in text and "Reshape" not in text
    x = structured_images(1, SIZE, seed=3)
    for got, want in zip(open_backend(result.path, threads=1).run(x.numpy()), _outputs(model, x)):
        np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("name, size", [("v5lite-e", 320), ("v5lite-s", 416)])
def test_published_weights_on_real_images(name: str, size: int, tmp_path: Path) -> None:
    """The imported published weights, folded and exported to ONNX, give torch's head maps on
    COCO val images within 1e-4."""
    import cv2

    from litedet.data.transforms import letterbox
    from litedet.export.api import export_model
    from litedet.models.checkpoint import load_detector
    from litedet.models.ncnn_import import import_ncnn_weights
    from litedet.runtime import open_backend

    param = require_shared("weights", "yolov5-lite", f"{name}.ncnn.param")
    images = sorted(require_shared("data", "coco256", "images", "val2017").glob("*.jpg"))[:3]
    weights, _ = import_ncnn_weights(param, name, tmp_path / f"{name}.safetensors")
    model, _ = load_detector(weights)
    model.eval()
    backend = open_backend(export_model(model, "onnx", tmp_path / "onnx").path, threads=1)
    for path in images:
        image = letterbox(cv2.imread(str(path)), (size, size))[0]
        x = torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1))).float()[None] / 255
        for got, want in zip(backend.run(x.numpy()), _outputs(model, x)):
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)
