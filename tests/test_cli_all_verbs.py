"""Every verb and sub-verb run as a user runs it (``litedet.cli.main(argv)``, the console script's
entry), on tiny inputs, checking what the user gets: files that open and compute the model's
function, settings recorded as asked, one-line errors. Options that change results are checked
by their effect (``--per-tensor`` in the quantized graph, ``--optimizer`` in the checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import random_bn_detector, structured_images
from litedet.cli import main
from litedet.models.checkpoint import save_checkpoint_weights

SIZE = 64


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A v5lite-e checkpoint at 64 px whose outputs depend on the input, and 4 images."""
    root = tmp_path_factory.mktemp("cli")
    model = random_bn_detector("v5lite-e", SIZE)
    weights = save_checkpoint_weights(model, root / "model.safetensors")
    images = root / "images"
    images.mkdir()
    for index, image in enumerate(structured_images(4, 96, seed=0)):
        cv2.imwrite(str(images / f"{index}.jpg"), (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    return {"root": root, "model": model, "weights": weights, "images": images}


@pytest.fixture(scope="module")
def tiny_onnx(tiny):
    out = tiny["root"] / "onnx"
    assert main(["export", "--weights", str(tiny["weights"]), "--format", "onnx", "--imgsz", str(SIZE),
                 "-o", str(out), "--no-progress"]) == 0
    return out / "model.onnx"


def _onnx_outputs(path: Path, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


# ------------------------------------------------------------------------------------ export


def test_export_onnx_computes_the_checkpoint_function(tiny, tiny_onnx):
    x = structured_images(1, SIZE, seed=11)
    with torch.no_grad():
        expected = [t.numpy() for t in tiny["model"](x)]
    got = _onnx_outputs(tiny_onnx, x.numpy())
    assert [g.shape for g in got] == [e.shape for e in expected]
    for g, e in zip(got, expected):
        assert np.abs(g - e).max() <= 1e-4 * np.abs(e).max()  # float32 rounding of the same graph
    sidecar = json.loads(tiny_onnx.with_suffix(".json").read_text())
    assert sidecar["model"] == "v5lite-e"


def test_export_rejects_an_unknown_format_in_one_line(tiny, tmp_path, capsys):
    assert main(["export", "--weights", str(tiny["weights"]), "--format", "tflite", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "tflite" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------- quantize


def _quantized_weight_scales(path: Path) -> list[int]:
    """Sizes of the scale initializers of the quantized conv weights (1: per tensor)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    sizes = []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and inits[node.input[0]].data_type == onnx.TensorProto.INT8:
            sizes.append(numpy_helper.to_array(inits[node.input[1]]).size)
    return sizes


def test_quantize_per_tensor_entropy_and_exclude_are_applied(tiny, tiny_onnx, tmp_path):
    import onnx

    first_conv = next(n.name for n in onnx.load(str(tiny_onnx)).graph.node if n.op_type == "Conv")
    out = tmp_path / "q"
    assert main(["quantize", "--weights", str(tiny_onnx), "--calib", str(tiny["images"]), "--num-images", "2",
                 "--calibrate-method", "entropy", "--per-tensor", "--exclude", first_conv, "--no-rewrite",
                 "--no-report", "-o", str(out), "--no-progress"]) == 0
    int8 = next(out.rglob("*int8*.onnx"))
    settings = json.loads(int8.with_suffix(".json").read_text())["extra"]["quantization"]
    assert settings["calibrate_method"] == "entropy" and settings["per_channel"] is False
    assert settings["excluded_nodes"] == [first_conv]
    scales = _quantized_weight_scales(int8)
    assert scales and set(scales) == {1}  # one scale per weight tensor
    # the excluded conv reads float weights: no DequantizeLinear feeds it a weight
    graph = onnx.load(str(int8)).graph
    conv = next(n for n in graph.node if n.name == first_conv)
    produced_by_dq = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    assert conv.input[1] not in produced_by_dq


# ------------------------------------------------------------------------------------- prune


def test_prune_to_a_target_latency_reports_the_measured_latency(tiny, tmp_path, capsys):
    """``--target-latency`` far above the model's latency: no step is needed, and the run
    says which latency it measured."""
    out = tmp_path / "p"
    code = main(["prune", "--weights", str(tiny["weights"]), "--method", "l1", "--target-latency", "10000",
                 "--threads", "1", "--runs", "3", "--no-report", "-o", str(out), "--no-progress", "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["exported"] or payload["out"]
    assert any("ms" in line for line in payload["log"]), payload["log"]


# ----------------------------------------------------------------------------------- distill


@pytest.fixture(scope="module")
def tiny_data(tiny):
    """YOLO labels for the 4 images (one box each), classes [a]; as train and val."""
    root = tiny["root"] / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir(parents=True)
    for index, image in enumerate(sorted(tiny["images"].iterdir())):
        (root / "images" / image.name).write_bytes(image.read_bytes())
        (root / "labels" / f"{image.stem}.txt").write_text(f"0 0.5 0.5 {0.2 + 0.1 * index:.2f} 0.3\n")
    data = root / "data.yaml"
    data.write_text("path: .\ntrain: images\nval: images\nnames: [a]\n")
    return data


def test_distill_with_a_temperature_records_it(tiny, tiny_data, tmp_path, capsys):
    student = save_checkpoint_weights(random_bn_detector("v5lite-e", SIZE, seed=1, num_classes=1), tmp_path / "s.safetensors")
    teacher = save_checkpoint_weights(random_bn_detector("v5lite-e", SIZE, seed=2, num_classes=1), tmp_path / "t.safetensors")
    code = main(["distill", "--teacher", str(teacher), "--student", str(student), "--data", str(tiny_data),
                 "--steps", "1", "--batch", "2", "--temperature", "4", "--no-report", "-o", str(tmp_path / "d"),
                 "--no-progress", "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert "T=4" in " ".join(payload["log"]) or "temperature 4" in " ".join(payload["log"]), payload["log"]


def test_distill_rejects_a_non_positive_temperature(tiny, tiny_data, tmp_path, capsys):
    code = main(["distill", "--teacher", str(tiny["weights"]), "--student", str(tiny["weights"]), "--data",
                 str(tiny_data), "--steps", "1", "--temperature", "0", "--no-report", "-o", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "temperature" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------- train


def test_train_with_adamw_and_close_mosaic(tiny_data, tmp_path):
    from litedet.engine.trainer import load_training_state

    code = main(["train", "--data", str(tiny_data), "--model", "v5lite-e", "--epochs", "2", "--batch", "2",
                 "--imgsz", str(SIZE), "--workers", "0", "--optimizer", "adamw", "--close-mosaic", "1",
                 "--project", str(tmp_path), "--name", "run", "--no-progress"])
    assert code == 0
    state = load_training_state(next(tmp_path.rglob("last.pt")))
    assert state["config"]["optimizer"] == "adamw" and state["config"]["close_mosaic"] == 1
    # AdamW keeps first and second moments per parameter (SGD keeps a momentum buffer only)
    assert all({"exp_avg", "exp_avg_sq"} <= set(s) for s in state["optimizer"]["state"].values())


# ------------------------------------------------------------------------------------ compress


def test_compress_recipe_check_and_run(tiny, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {tiny['weights']}\nout: {tmp_path / 'out'}\n"
                      f"steps:\n  - prune: {{ratio: 0.25, method: l1}}\n")
    assert main(["compress", "--recipe", str(recipe), "--check"]) == 0
    assert "1 steps OK: prune" in capsys.readouterr().out
    assert main(["compress", "--recipe", str(recipe), "--no-report", "--no-progress", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    exported = Path(payload["exported"])
    assert exported.is_file()
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"model: {tiny['weights']}\nsteps:\n  - squash: {{}}\n")
    assert main(["compress", "--recipe", str(bad), "--check"]) == 2
    err = capsys.readouterr().err
    assert "squash" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------- split


def test_split_profile_then_plan(tiny, tmp_path, capsys):
    profile = tmp_path / "a.json"
    assert main(["split", "profile", "--weights", str(tiny["weights"]), "--imgsz", str(SIZE), "--repeats", "2",
                 "--warmup", "0", "--threads", "1", "-o", str(profile), "--device", "cam", "--no-progress"]) == 0
    data = json.loads(profile.read_text())
    assert data["device"] == "cam"
    blocks = data["blocks"]
    assert len(blocks) > 3 and all(b["latency_ms"] > 0 for b in blocks)
    capsys.readouterr()
    plan = tmp_path / "plan.json"
    assert main(["split", "plan", "--devices", f"{profile},{profile}", "--bandwidth", "10MB/s", "-o", str(plan),
                 "--json"]) == 0
    assert "cut" in json.loads(plan.read_text())


@pytest.mark.slow
def test_split_run_simulated_link(tiny, tmp_path, capsys):
    """Starts a local Ray (slow)."""
    assert main(["split", "run", "--weights", str(tiny["weights"]), "--imgsz", str(SIZE), "--source",
                 str(tiny["images"]), "--cut", "3", "--bandwidth", "100MB/s", "--latency", "1ms", "--simulate",
                 "--max-frames", "2", "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames"] == 2


# ------------------------------------------------------------------------------------ stream


def test_stream_one_worker_over_a_folder(tiny, tiny_onnx, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["stream", "--source", str(tiny["images"]), "--weights", str(tiny_onnx), "--workers", "1",
                 "--engine", "onnxruntime", "--max-frames", "3", "--save", str(out), "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames_read"] == summary["frames_done"] == 3 and summary["in_order"]
    assert summary["frames_dropped"] == 0 and summary["workers"][0]["frames"] == 3
    lines = (out / "detections.jsonl").read_text().splitlines()  # one line per frame, in order
    assert len(lines) == 3 and all(isinstance(json.loads(line), dict) for line in lines)
    assert sorted(p.name for p in out.glob("*.jpg")) == ["0.jpg", "1.jpg", "2.jpg"]  # annotated frames


# ------------------------------------------------------------------------------------- bench


@pytest.mark.slow
def test_bench_guidelines_quick(tmp_path, capsys):
    assert main(["bench", "guidelines", "--quick", "--threads", "1", "--project", str(tmp_path), "--no-progress"]) == 0
    assert "G1" in capsys.readouterr().out
