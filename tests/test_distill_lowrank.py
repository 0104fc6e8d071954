"""Distillation, low-rank and quantization verbs: bad input rejected before any work, and the
folded-BatchNorm restore that fine-tuning imported students needs (tiny inputs, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from litedet.cli import main
from litedet.compress.checkpoint import save_compressed
from conftest import folded_detector, require_shared

SIZE = 64


def _folded_detector(num_classes: int = 80, seed: int = 0) -> nn.Module:
    """A detector whose BatchNorms are identities, as an import from a deployed model leaves them."""
    return folded_detector("v5lite-e", SIZE, seed, num_classes=num_classes)

@pytest.mark.parametrize("flag, value", [("--energy", "1.5"), ("--energy", "0"), ("--rank", "-2"), ("--rank", "1.5")])
def test_decompose_rejects_bad_rank_or_energy_before_work(flag, value, capsys):
    # The weights file does not exist: the error must be about the value, raised before loading.
    assert main(["decompose", "--weights", "missing.safetensors", flag, value, "--no-report"]) == 2
    err = capsys.readouterr().err
    assert value in err and ("decompose.rank" in err or "decompose.energy" in err)


def test_decompose_cli_data_aware_svd_from_a_calibration_folder(tmp_path, capsys):
    import cv2
    import numpy as np

    weights = save_compressed(_folded_detector(), tmp_path / "model.safetensors")
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):
        cv2.imwrite(str(calib / f"img{index}.jpg"), cv2.GaussianBlur(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8), (0, 0), 2))
    (calib / "broken.jpg").write_text("not an image")  # skipped, not fatal
    code = main(["decompose", "--weights", str(weights), "--rank", "0.5", "--calib", str(calib), "--no-report",
                 "--no-progress", "-o", str(tmp_path / "out")])
    assert code == 0
    out = capsys.readouterr().out
    assert "SVD data-aware on 4 images" in out
    assert (tmp_path / "out" / "stage1-decompose" / "model.onnx").exists()
    code = main(["decompose", "--weights", str(weights), "--rank", "0.5", "--calib", str(tmp_path / "missing"),
                 "--no-report", "-o", str(tmp_path / "out2")])
    assert code == 2 and "missing" in capsys.readouterr().err


def test_distill_rejects_teacher_with_other_classes_before_training(tmp_path, capsys):
    student = save_compressed(_folded_detector(80), tmp_path / "student.safetensors")
    teacher = save_compressed(_folded_detector(1), tmp_path / "teacher.safetensors")
    data = tmp_path / "data.yaml"
    data.write_text("format: voc\n")  # never read: the class check comes first
    code = main(["distill", "--teacher", str(teacher), "--student", str(student), "--data", str(data),
                 "--no-report", "-o", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "teacher" in err and "1 classes" in err and "80" in err
    assert not (tmp_path / "out").exists()


def test_quantize_rejects_calibration_folder_without_images(tmp_path, capsys):
    from litedet.export.api import export_model

    onnx_path = export_model(_folded_detector(), "onnx", tmp_path, stem="model").path
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "broken.jpg").write_text("not an image")
    code = main(["quantize", "--weights", str(onnx_path), "--calib", str(calib), "--no-report",
                 "-o", str(tmp_path / "q")])
    assert code == 2
    assert "no readable image" in capsys.readouterr().err




def test_distillation_with_zero_weight_trains_exactly_like_fine_tuning_alone():
    """The "trained alone" baseline and the distilled student go through one training loop: with
    the distillation loss weighted 0 they end with the same weights (folded BN restored alike)."""
    from litedet.compress.distill import distill_detector
    from litedet.compress.finetune import FinetuneConfig, finetune

    require_shared("data", "raccoon")
    data = str(Path(__file__).resolve().parents[1] / "configs" / "data" / "raccoon.yaml")
    config = dict(steps=2, batch=2, imgsz=SIZE, lr=0.01, warmup_steps=1, progress=False, restore_images=4)
    alone, distilled = _folded_detector(1), _folded_detector(1)
    teacher = _folded_detector(1, seed=1)
    finetune(alone, data, FinetuneConfig(**config))
    distill_detector(distilled, teacher, data, {"response": 0.0}, config=FinetuneConfig(**config))
    for (name, a), b in zip(alone.state_dict().items(), distilled.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_response_distillation_refuses_heads_it_does_not_model():
    from litedet.compress.distill import create_strategy
    from litedet.models import create_model

    student = create_model("ssdlite-mobilenetv3_small", num_classes=2)
    teacher = create_model("ssdlite-mobilenetv3_small", num_classes=2)
    with pytest.raises(ValueError, match="'response' strategy imitates YOLO heads.*'ssdlite' head"):
        create_strategy("response", student, teacher)
    assert create_strategy("attention", student, teacher) is not None
