"""`litedet detect` end to end: every source kind, saved outputs, JSON, bad input; with the imported
published model on real images when ../shared is present."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from litedet.cli import main
from litedet.data.sources import LiveSource
from litedet.engine.predictor import Predictor, detect_source
from litedet.runtime import open_backend

from conftest import require_shared
from test_sources import CameraStub, _write_video, mjpeg_server  # noqa: F401 - fixture


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """A randomly initialised v5lite-e saved as litedet weights + sidecar, input 64."""
    torch = pytest.importorskip("torch")
    from litedet.models import create_model
    from litedet.models.checkpoint import save_checkpoint_weights

    torch.manual_seed(0)
    model = create_model("v5lite-e", input_size=64).eval()
    return save_checkpoint_weights(model, tmp_path_factory.mktemp("weights") / "tiny.safetensors")


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["detect", "--no-progress", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _check_json_lines(text: str, sources: list[str]) -> list[dict]:
    """stdout with --json: JSON Lines only, one object per frame, in order."""
    results = [json.loads(line) for line in text.splitlines()]
    assert [r["source"] for r in results] == sources
    for result in results:
        for det in result["detections"]:
            assert set(det) == {"box", "score", "class_id", "class_name"} and len(det["box"]) == 4
    return results


def test_detect_video_saves_annotated_video_and_json(tmp_path, tiny_weights, capsys):
    video = _write_video(tmp_path / "clip.mp4", 6)
    out_dir = tmp_path / "out"
    code, out, err = _run(
        capsys, "--weights", str(tiny_weights), "--model", "v5lite-e", "--source", str(video), "--save", str(out_dir),
        "--json", "--conf", "0.01",
    )
    assert code == 0
    results = _check_json_lines(out, [f"{video}:{i}" for i in range(6)])
    assert "6 frame(s)" in err and "FPS" in err and "inference" in err
    saved = cv2.VideoCapture(str(out_dir / "clip.avi"))
    assert int(saved.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    ok, first = saved.read()
    saved.release()
    assert ok and first.shape == (48, 64, 3)
    assert _check_json_lines((out_dir / "detections.jsonl").read_text(), [r["source"] for r in results]) == results
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["frames"] == 6 and summary["pipelined"] and not summary["interrupted"]


def test_detect_max_frames_and_sequential_give_the_same_results(tmp_path, tiny_weights, capsys):
    video = _write_video(tmp_path / "clip.mp4", 8)
    args = ("--weights", str(tiny_weights), "--source", str(video), "--json", "--conf", "0.01", "--max-frames", "5")
    code, piped, err = _run(capsys, *args)
    assert code == 0 and "5 frame(s)" in err and "overlapped" in err
    code, sequential, err = _run(capsys, *args, "--no-pipeline")
    assert code == 0 and "5 frame(s)" in err and "overlapped" not in err
    assert _check_json_lines(piped, [f"{video}:{i}" for i in range(5)]) == _check_json_lines(sequential, [f"{video}:{i}" for i in range(5)])


def test_detect_folder_glob_and_image_with_a_corrupt_file(tmp_path, tiny_weights, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "a_portrait.jpg"), rng.integers(0, 255, (90, 40, 3), dtype=np.uint8))
    cv2.imwrite(str(folder / "b_landscape.png"), rng.integers(0, 255, (40, 90, 3), dtype=np.uint8))
    (folder / "c_corrupt.jpg").write_bytes(b"\x00not a jpeg")
    out_dir = tmp_path / "out"
    code, out, err = _run(capsys, "--weights", str(tiny_weights), "--source", str(folder), "--save", str(out_dir), "--json")
    assert code == 0
    _check_json_lines(out, [str(folder / "a_portrait.jpg"), str(folder / "b_landscape.png")])
    assert "skipped 1 unreadable input(s)" in err and "c_corrupt.jpg" in err
    assert cv2.imread(str(out_dir / "a_portrait.jpg")).shape == (90, 40, 3)
    assert cv2.imread(str(out_dir / "b_landscape.png")).shape == (40, 90, 3)

    code, out, _ = _run(capsys, "--weights", str(tiny_weights), "--source", str(folder / "*.png"), "--json")
    assert code == 0
    _check_json_lines(out, [str(folder / "b_landscape.png")])

    code, out, _ = _run(capsys, "--weights", str(tiny_weights), "--source", str(folder / "a_portrait.jpg"))
    assert code == 0 and "a_portrait.jpg" in out and "FPS" in out


def test_detect_http_stream(tiny_weights, mjpeg_server, capsys):  # noqa: F811 - fixture
    code, out, err = _run(capsys, "--weights", str(tiny_weights), "--source", f"{mjpeg_server}/live.mjpg", "--json")
    assert code == 0
    results = [json.loads(line) for line in out.splitlines()]
    indices = [int(r["source"].rsplit(":", 1)[1]) for r in results]
    assert results and indices == sorted(indices) and indices[-1] >= 45


def test_detect_camera_stub_keeps_up(tiny_weights):
    backend = open_backend(tiny_weights)
    source = LiveSource("camera0", CameraStub(frames=60, period=0.002))
    report = detect_source(Predictor(backend), source, progress=False)
    assert report.frames + report.dropped == 60
    assert report.results[-1]["source"].startswith("camera0:")


def test_detect_bad_inputs_name_the_path(tmp_path, tiny_weights, capsys):
    code, _, err = _run(capsys, "--weights", str(tiny_weights), "--source", str(tmp_path / "missing.jpg"))
    assert code == 2 and "missing.jpg" in err
    image = tmp_path / "x.jpg"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    code, _, err = _run(capsys, "--weights", str(tmp_path / "nope.safetensors"), "--source", str(image))
    assert code == 2 and "nope.safetensors" in err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(np.random.default_rng(0).bytes(1000))
    code, _, err = _run(capsys, "--weights", str(junk), "--model", "v5lite-e", "--source", str(image))
    assert code == 2 and "not a litedet/ncnn model" in err
    code, _, err = _run(capsys, "--weights", str(tiny_weights), "--model", "v5lite-s", "--source", str(image))
    assert code == 2 and "v5lite-e" in err
    code, _, err = _run(capsys, "--weights", str(tiny_weights), "--source", str(image), "--classes", "unicorn")
    assert code == 2 and "unicorn" in err
    empty = tmp_path / "empty" / "e.jpg"
    empty.parent.mkdir()
    empty.write_bytes(b"")
    code, _, err = _run(capsys, "--weights", str(tiny_weights), "--source", str(empty))
    assert code == 2 and f"{empty}: not a readable image" in err
    code, out, _ = _run(capsys, "--weights", str(tiny_weights), "--source", str(empty.parent))
    assert code == 1 and out.startswith("no frame could be read (1 input(s) skipped)") and "nan" not in out


@pytest.fixture(scope="module")
def imported_v5lite_s(tmp_path_factory) -> Path:
    param = require_shared("weights", "yolov5-lite", "v5lite-s.ncnn.param")
    pytest.importorskip("torch")
    from litedet.models.ncnn_import import import_ncnn_weights

    path, _ = import_ncnn_weights(param, "v5lite-s", tmp_path_factory.mktemp("v5lite") / "v5lite-s.safetensors")
    return path


def _ground_truth(shared: Path, file_name: str) -> tuple[list[list[float]], list[int]]:
    data = json.loads((shared / "data/coco256/annotations/instances_val2017.json").read_text())
    image_id = next(img["id"] for img in data["images"] if img["file_name"] == file_name)
    anns = [a for a in data["annotations"] if a["image_id"] == image_id]
    return [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns], [
        a["category_id"] for a in anns
    ]


@pytest.mark.parametrize("file_name", ["000000000139.jpg", "000000001296.jpg"])
def test_imported_model_finds_the_people(tmp_path, imported_v5lite_s, capsys, file_name):
    """Real images (a landscape living room; a portrait image): each person box in the ground
    truth larger than 32x32 px is found with IoU > 0.5, in original-image pixels."""
    from litedet.ops import box_iou

    image = require_shared("data", "coco256", "images", "val2017", file_name)
    code, out, _ = _run(capsys, "--weights", str(imported_v5lite_s), "--model", "v5lite-s", "--source", str(image), "--json")
    assert code == 0
    detections = json.loads(out.strip())["detections"]
    people = np.array([d["box"] for d in detections if d["class_name"] == "person"]).reshape(-1, 4)
    boxes, categories = _ground_truth(image.parents[4], file_name)
    truth = np.array([b for b, c in zip(boxes, categories) if c == 1 and (b[2] - b[0]) * (b[3] - b[1]) > 32 * 32])
    assert len(truth)
    assert (box_iou(truth, people).max(axis=1) > 0.5).all()


def test_demo_without_shared_says_what_to_pass(tmp_path, monkeypatch, capsys):
    from litedet import demo

    monkeypatch.setenv("LITEDET_SHARED", str(tmp_path / "no_shared_here"))
    assert demo.main(["--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "no_shared_here" in out and "litedet detect --model v5lite-s" in out
    assert not (tmp_path / "demo").exists()
