"""`litedet detect` end to end: every source kind, saved outputs, JSON, bad input; with the imported
published model on real images when ../shared is present."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from litedet.cli import main
from litedet.data.sources import LiveSource
from litedet.engine.predictor import Predictor, detect_source
from litedet.runtime import open_backend

from conftest import require_shared
from test_sources import CameraStub, _write_video, black_hole, mjpeg_server  # noqa: F401 - fixtures


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


def test_detect_video_saves_annotated_video_and_json(tmp_path, tiny_weights, capsys, caplog):
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
    # the same folder again: the earlier results are replaced, and the run says so first
    with caplog.at_level(logging.WARNING, logger="litedet.engine.predictor"):
        code, _, _ = _run(capsys, "--weights", str(tiny_weights), "--source", str(video), "--save", str(out_dir),
                          "--max-frames", "2")
    assert code == 0 and len((out_dir / "detections.jsonl").read_text().splitlines()) == 2
    assert "holds an earlier run's results" in caplog.text


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
    url = f"{mjpeg_server}/live.mjpg"
    code, out, err = _run(capsys, "--weights", str(tiny_weights), "--source", url, "--json", "--reconnect", "0")
    results = [json.loads(line) for line in out.splitlines()]
    indices = [int(r["source"].rsplit(":", 1)[1]) for r in results]
    assert results and indices == sorted(indices) and indices[-1] >= 45
    # a live stream that ends was lost: one summary line and exit 1 (a finished file run is 0)
    assert code == 1 and f"stream {url} lost after 50 frames; no reconnect" in err.splitlines()


def test_detect_gives_up_on_a_lost_stream_exits_1_and_says_why(tmp_path, tiny_weights, mjpeg_server, capsys, caplog):  # noqa: F811
    url = f"{mjpeg_server}/live.mjpg?frames=5&once=1"  # 5 frames, then 404 to every re-open
    out_dir = tmp_path / "out"
    code, out, _ = _run(capsys, "--weights", str(tiny_weights), "--source", url, "--reconnect", "1", "--save", str(out_dir))
    lost = f"stream {url} lost after 5 frames; 1 reconnect(s) failed"
    assert code == 1 and lost in out.splitlines()
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith(url)] == [
        f"{url}: stream lost (closed, or no frame within the stall timeout) after 5 frames; reconnecting in 1 s (attempt 1 of 1)"]
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["lost"] == lost and not summary["interrupted"] and summary["frames"] >= 1


def test_detect_can_be_interrupted_while_a_silent_stream_opens(tiny_weights, black_hole, capsys):  # noqa: F811
    import _thread
    import threading
    import time

    timer = threading.Timer(0.5, _thread.interrupt_main)  # Ctrl-C, as the signal handler raises it
    timer.start()
    started = time.monotonic()
    code, _, err = _run(capsys, "--weights", str(tiny_weights), "--source", f"rtsp://127.0.0.1:{black_hole}/live",
                        "--stall-timeout", "30")
    timer.join()
    assert code == 130 and "interrupted before the first frame" in err
    assert time.monotonic() - started < 10  # not the 30 s the open would block


class StalledCamera(CameraStub):
    """Gives ``frames`` frames, then blocks in ``read`` as a native read of a stalled stream does
    (until ``unblock`` is set)."""

    def __init__(self, frames: int) -> None:
        import threading

        super().__init__(frames=frames, period=0.001)
        self.stalled, self.unblock = threading.Event(), threading.Event()

    def read(self):
        if self.count >= self.frames:
            self.stalled.set()
            self.unblock.wait()
            return False, None
        return super().read()


@pytest.mark.parametrize("signals", [1, 2])
def test_ctrl_c_on_a_stalled_stream_keeps_the_frames_and_does_not_wait_for_the_read(tmp_path, tiny_weights, signals):
    import os
    import signal
    import threading
    import time

    camera = StalledCamera(frames=8)
    source = LiveSource("camera0", camera)
    sent: list[float] = []

    def press_ctrl_c():
        camera.stalled.wait(30)
        time.sleep(0.2)  # the frames read so far reach the sink
        for _ in range(signals):
            sent.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.3)

    # a signal that came late must not reach pytest: the run restores this handler
    previous = signal.signal(signal.SIGINT, lambda *_: None)
    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    try:
        presser.start()
        report = detect_source(Predictor(open_backend(tiny_weights)), source, save_dir=tmp_path / "out", progress=False)
        ended = time.monotonic()
        presser.join(30)
    finally:
        signal.signal(signal.SIGINT, previous)
        camera.unblock.set()
    assert report.interrupted and report.lost is None and 1 <= report.frames <= 8
    assert ended - sent[0] < 5  # the stuck read is not waited for (before: 10 s and more)
    lines = (tmp_path / "out" / "detections.jsonl").read_text().splitlines()
    assert len(lines) == report.frames  # every finished frame is written
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["interrupted"] and summary["lost"] is None


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
