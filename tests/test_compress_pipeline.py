"""A compression recipe end to end (distill -> prune -> fine-tune -> INT8) on real images with its
report, and its INT8 output opened by `litedet val`, `litedet detect` and `litedet bench` like any
other model (tiny 64 px models, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import REPO, require_shared
from litedet.cli import main
from litedet.compress.checkpoint import save_compressed
from litedet.compress.recipe import parse_recipe, run_recipe
from litedet.models.registry import create_model

SIZE = 64


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    """distill (v5lite-s teacher) -> prune 30 % -> 1 fine-tune step -> ort-static INT8, reported."""
    images = require_shared("data", "tiny_coco50", "train2017")
    annotations = require_shared("data", "tiny_coco50", "annotations", "instances_train2017.json")
    tmp = tmp_path_factory.mktemp("recipe")
    torch.manual_seed(0)
    student = save_compressed(create_model("v5lite-e", input_size=SIZE).eval(), tmp / "student.safetensors")
    teacher = save_compressed(create_model("v5lite-s", input_size=SIZE).eval(), tmp / "teacher.safetensors")
    recipe = parse_recipe({
        "model": str(student),
        "data": str(REPO / "configs" / "data" / "tiny_coco50.yaml"),
        "out": str(tmp / "out"),
        "steps": [
            {"distill": {"teacher": str(teacher), "steps": 1, "batch": 2}},
            {"prune": {"ratio": 0.3, "calib_images": 4}},
            {"finetune": {"steps": 1, "batch": 2}},
            {"quantize": {"method": "ort-static", "calib": str(images), "images": 4}},
        ],
        "report": {"threads": 1, "runs": 3, "budget_s": 5, "val_images": str(images), "val_annotations": str(annotations)},
    }, source="test")
    result = run_recipe(recipe, measure=True, progress=False)
    return result, images, annotations


def test_recipe_chains_steps_and_reports_every_stage(recipe_run):
    result, _, _ = recipe_run
    assert result.exported.name == "model_int8.onnx" and result.exported.is_file()
    table = result.report.to_markdown()
    for stage in ("original", "distill", "prune", "finetune", "quantize ort-static"):
        assert stage in table, table
    report = json.loads(result.report_paths[1].read_text())
    rows = report["rows"]
    assert len(rows) >= 4
    for row in rows:  # every stage measured: size, latency and mAP in one run
        assert row["file_bytes"] > 0 and row["median_ms"] > 0 and row["map50_95"] is not None
    params = [row["params"] for row in rows if row.get("params")]
    assert params[-1] < params[0]  # pruning removed weights


def test_int8_output_opens_in_val_detect_and_bench(recipe_run, tmp_path, capsys):
    result, images, annotations = recipe_run
    int8 = str(result.exported)
    assert main(["val", "--weights", int8, "--images", str(images), "--annotations", str(annotations),
                 "--json", "--threads", "1"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scores["images"] > 0 and 0 <= scores["map50_95"] <= 1
    image = sorted(Path(images).glob("*.jpg"))[0]
    assert main(["detect", "--weights", int8, "--source", str(image), "--json", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()  # JSON Lines: one object per image
    assert len(lines) == 1 and json.loads(lines[0])["source"].endswith(image.name)
    code = main(["bench", "--models", f"v5lite-e@{SIZE}", "--engines", "onnxruntime", "--threads", "1",
                 "--weights", f"v5lite-e={int8}", "--runs", "3", "--warmup", "1", "--out", str(tmp_path / "bench"),
                 "--json"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rows and all(r["variant"] == "model_int8.onnx" and r["engine"] == "onnxruntime" for r in rows)
    assert rows[0]["params"] > 0 and rows[0]["median_ms"] > 0


def test_openvino_int8_with_accuracy_control_runs_the_coco_metric(tmp_path):
    """`quantize --method openvino --accuracy-control`: NNCF's accuracy-aware loop with COCO
    mAP50-95 (pycocotools) as its metric, on a tiny model and 50 real images."""
    pytest.importorskip("nncf")
    from litedet.compress.quantize import quantize
    from litedet.config import find_config
    from litedet.export.api import export_model

    images = require_shared("data", "tiny_coco50", "train2017")
    annotations = require_shared("data", "tiny_coco50", "annotations", "instances_train2017.json")
    torch.manual_seed(0)
    xml = export_model(create_model("v5lite-e", input_size=SIZE).eval(), "openvino", tmp_path / "ov", stem="model").path
    result = quantize(xml, tmp_path / "int8" / "model.xml", "openvino", images, num_images=4, accuracy_control=True,
                      max_drop=0.01, val_images=images, val_annotations=annotations)
    assert result.output.is_file() and result.settings["accuracy_control"] is True
    config = find_config(result.output)
    assert config is not None
    assert main(["val", "--weights", str(result.output), "--images", str(images), "--annotations", str(annotations),
                 "--json", "--threads", "1", "--no-progress"]) == 0
