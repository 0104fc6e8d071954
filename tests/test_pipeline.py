"""The pipelined `litedet detect`: same results as the sequential loop, bounded memory, nothing
lost on SIGTERM / SIGINT / SIGKILL (JSON Lines + a Motion-JPEG AVI that plays when cut short),
one line for a full disk; the exact fast pre-processing and the size-safe class offset."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from litedet.cli import main
from litedet.data.sources import LiveSource, decode_threads_beside, open_source
from litedet.engine import sinks
from litedet.engine.predictor import Predictor, StageTimes, detect_source
from litedet.engine.sinks import MJPEGAVIWriter, OutputError, ResultsLog
from litedet.runtime import open_backend
from litedet.runtime.base import Backend

from conftest import REPO, require_shared
from test_sources import CameraStub, _frame, _write_video


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    """A random v5lite-e at 64 px exported to ONNX (a child process opens it without torch)."""
    torch = pytest.importorskip("torch")
    from litedet.export.api import export_model
    from litedet.models import create_model

    torch.manual_seed(0)
    model = create_model("v5lite-e", input_size=64).eval()
    return Path(export_model(model, "onnx", tmp_path_factory.mktemp("onnx"), imgsz=64).path)


def _count_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"{path} does not open"
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def _json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------ the pipeline


def test_pipelined_equals_sequential_and_keeps_order(tmp_path, tiny_onnx):
    video = _write_video(tmp_path / "clip.mp4", 30)
    backend = open_backend(tiny_onnx, threads=1)
    seen: list[int] = []
    piped = detect_source(Predictor(backend, conf=0.01), video, progress=False, on_result=lambda f, d: seen.append(f.index))
    sequential = detect_source(Predictor(backend, conf=0.01), video, progress=False, pipeline=False)
    assert seen == list(range(30)) and piped.frames == sequential.frames == 30
    assert piped.results == sequential.results
    assert piped.pipelined and not sequential.pipelined
    assert piped.network_ms is not None and piped.network_ms > 0  # the reference of the FPS ratio
    # timed at the first frame and again after the last (the video ended on its own), in both modes
    assert piped.reference_points == sequential.reference_points == 2
    assert "timed at the start and the end of this run" in "\n".join(piped.summary_lines())


def test_pipelined_video_decodes_on_the_cores_inference_leaves(tmp_path, tiny_onnx):
    video = _write_video(tmp_path / "clip.mp4", 3)
    backend = open_backend(tiny_onnx, threads=1)
    piped, sequential, given = open_source(video), open_source(video), open_source(video, decode_threads=3)
    detect_source(Predictor(backend), piped, progress=False)
    detect_source(Predictor(backend), sequential, progress=False, pipeline=False)
    detect_source(Predictor(backend), given, progress=False)
    assert piped.decode_threads == decode_threads_beside(1)
    assert sequential.decode_threads is None  # alone on the machine: the decoder's own choice
    assert given.decode_threads == 3


class _Jittery(Backend):
    """Delegates to an engine after a pause that varies by frame, so that side-by-side copies
    finish frames out of order; counts the copies it opened and closed."""

    def __init__(self, inner: Backend, opened: list, closed: list, threads: int | None = None) -> None:
        super().__init__(inner.config, threads=threads)
        self.inner, self.opened, self.closed = inner, opened, closed
        self.calls = 0
        self.reopen = lambda threads: self._copy(threads)

    def _copy(self, threads: int) -> "_Jittery":
        copy = _Jittery(self.inner, self.opened, self.closed, threads)
        self.opened.append(copy)
        return copy

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        self.calls += 1
        time.sleep(0.004 * (self.calls % 3) * (len(self.opened) - self.opened.index(self) if self in self.opened else 0))
        return self.inner.run(batch)

    def close(self) -> None:
        self.closed.append(self)


def test_streams_infer_side_by_side_and_keep_the_order(tmp_path, tiny_onnx):
    video = _write_video(tmp_path / "clip.mp4", 30)
    opened: list = []
    closed: list = []
    backend = _Jittery(open_backend(tiny_onnx, threads=1), opened, closed, threads=4)
    seen: list[int] = []
    report = detect_source(Predictor(backend, conf=0.01), video, progress=False, streams=3,
                           on_result=lambda f, d: seen.append(f.index))
    sequential = detect_source(Predictor(backend, conf=0.01), video, progress=False, pipeline=False)
    assert seen == list(range(30)) and report.results == sequential.results
    assert report.streams == 3 and report.stream_threads == 1  # 4 threads // 3 streams
    assert len(opened) == 3 and sorted(map(id, closed)) == sorted(map(id, opened))  # every copy closed
    assert all(copy.calls > 0 for copy in opened)  # each copy took frames
    assert "3 inference streams of 1 thread(s) each" in report.summary_lines()[0]
    assert report.to_dict()["streams"] == 3


def test_more_streams_than_threads_say_they_take_more_threads(tmp_path, tiny_onnx, caplog):
    from litedet.engine.predictor import open_streams

    backend = open_backend(tiny_onnx, threads=2)
    with caplog.at_level(logging.WARNING, logger="litedet.engine.predictor"):
        engines = open_streams(backend, 3)
    for engine in engines:
        engine.close()
    backend.close()
    assert len(engines) == 3 and "3 inference streams on 2 thread(s): each gets 1 thread, 3 threads in all" in caplog.text


def test_a_slow_stream_keeps_its_input_while_the_others_run_ahead(tmp_path, tiny_onnx):
    # The first copy holds frame 0 for a long time; the reader must not reuse its input buffer
    # for the frames the other copy races through meanwhile.
    video = _write_video(tmp_path / "clip.mp4", 30)
    changed: list[int] = []

    class SlowFirst(_Jittery):
        def run(self, batch):
            self.calls += 1
            given = batch.copy()
            if self is self.opened[0] and self.calls == 1:
                time.sleep(0.5)
            if not np.array_equal(batch, given):
                changed.append(self.calls)
            return self.inner.run(batch)

    opened: list = []
    backend = SlowFirst(open_backend(tiny_onnx, threads=1), opened, [], threads=2)
    backend.reopen = lambda threads: opened.append(SlowFirst(backend.inner, opened, [], threads)) or opened[-1]
    report = detect_source(Predictor(backend, conf=0.01), video, progress=False, streams=2)
    assert report.frames == 30 and opened[1].calls >= 3  # the fast copy ran ahead
    assert changed == []


def test_default_streams_two_for_long_files_one_for_short_and_live(tmp_path, tiny_onnx):
    long_video, short_video = _write_video(tmp_path / "long.mp4", 25), _write_video(tmp_path / "short.mp4", 5)
    backend = open_backend(tiny_onnx, threads=2)
    assert detect_source(Predictor(backend), long_video, progress=False).streams == 2
    assert detect_source(Predictor(backend), short_video, progress=False).streams == 1
    assert detect_source(Predictor(backend), long_video, progress=False, pipeline=False).streams == 1
    live = LiveSource("camera0", CameraStub(frames=30, period=0.001))
    assert detect_source(Predictor(backend), live, progress=False).streams == 1
    single = open_backend(tiny_onnx, threads=1)  # one thread: nothing to share out
    assert detect_source(Predictor(single), long_video, progress=False).streams == 1


def test_streams_are_refused_where_they_cannot_run(tmp_path, tiny_onnx):
    video = _write_video(tmp_path / "clip.mp4", 3)
    backend = open_backend(tiny_onnx, threads=2)
    with pytest.raises(ValueError, match="streams must be >= 1"):
        detect_source(Predictor(backend), video, progress=False, streams=0)
    with pytest.raises(ValueError, match="need the pipeline"):
        detect_source(Predictor(backend), video, progress=False, streams=2, pipeline=False)
    backend.reopen = None
    with pytest.raises(ValueError, match="opened from a file"):
        detect_source(Predictor(backend), video, progress=False, streams=2)
    backend.concurrent_copies = False
    with pytest.raises(ValueError, match="cannot run 2 streams"):
        detect_source(Predictor(backend), video, progress=False, streams=2)


def test_an_engine_error_in_a_stream_reaches_the_caller(tmp_path, tiny_onnx):
    video = _write_video(tmp_path / "clip.mp4", 30)

    class Failing(_Jittery):
        def run(self, batch):
            if self is self.opened[-1] and self.calls >= 2:
                raise RuntimeError("engine failed")
            return super().run(batch)

    opened: list = []
    closed: list = []
    backend = Failing(open_backend(tiny_onnx, threads=1), opened, closed, threads=2)
    backend.reopen = lambda threads: opened.append(Failing(backend.inner, opened, closed, threads)) or opened[-1]
    with pytest.raises(RuntimeError, match="engine failed"):
        detect_source(Predictor(backend), video, progress=False, streams=2)
    assert len(closed) == 2


def test_results_window_and_max_frames_bound_memory(tmp_path, tiny_onnx):
    video = _write_video(tmp_path / "clip.mp4", 40)
    backend = open_backend(tiny_onnx, threads=1)
    report = detect_source(Predictor(backend), video, progress=False, keep_results=5, max_frames=25)
    assert report.frames == 25
    assert [r["source"] for r in report.results] == [f"{video}:{i}" for i in range(20, 25)]
    assert detect_source(Predictor(backend), video, progress=False, keep_results=0, max_frames=3).results == []


def test_stage_times_are_a_bounded_sample():
    times = StageTimes(capacity=50)
    for i in range(10_000):
        times.add(i, 2 * i, 3 * i)
    assert len(times) == 10_000 and len(times.pre) == len(times.infer) == len(times.post) == 50
    assert [2 * p for p in times.pre] == times.infer  # one sample: the same frames for every stage
    assert 2_000 < times.medians()["pre"] < 8_000


def test_live_source_in_the_pipeline_drops_stale_frames(tiny_onnx):
    backend = open_backend(tiny_onnx, threads=1)
    source = LiveSource("camera0", CameraStub(frames=80, period=0.001))
    report = detect_source(Predictor(backend), source, progress=False)
    indices = [int(r["source"].rsplit(":", 1)[1]) for r in report.results]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)
    assert report.frames + report.dropped == 80


# ------------------------------------------------------------------ output files


def test_mjpeg_avi_plays_when_cut_anywhere(tmp_path):
    path = tmp_path / "clip.avi"
    writer = MJPEGAVIWriter(path, fps=10)
    for i in range(12):
        writer.write(_frame(i))
    writer.close()
    assert _count_frames(path) == 12
    capture = cv2.VideoCapture(str(path))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(10) and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    capture.release()
    # a file cut anywhere (a kill before close: no index, sizes unset) plays its whole frames
    writer = MJPEGAVIWriter(tmp_path / "killed.avi", fps=10)
    for i in range(12):
        writer.write(_frame(i))
    data = (tmp_path / "killed.avi").read_bytes()
    writer._file.close()  # simulate the process dying: close() never runs
    writer._file = None
    for cut, whole in ((len(data), 12), (len(data) - 10, 11)):
        (tmp_path / "cut.avi").write_bytes(data[:cut])
        assert _count_frames(tmp_path / "cut.avi") == whole


def test_avi_segments_each_play(tmp_path):
    writer = MJPEGAVIWriter(tmp_path / "clip.avi", fps=10, segment_bytes=4000)
    for i in range(20):
        writer.write(_frame(i))
    writer.close()
    assert len(writer.paths) > 1 and writer.paths[1].name == "clip_001.avi"
    assert sum(_count_frames(p) for p in writer.paths) == 20


class _FullDisk:
    """``open`` for the sinks module whose files accept ``budget`` bytes in all, then ENOSPC;
    with ``suffix``, only files of that suffix count and fail (the others write freely)."""

    def __init__(self, budget: int, suffix: str | None = None) -> None:
        self.budget = budget
        self.suffix = suffix

    def __call__(self, path, mode="r", *args, **kwargs):
        real = open(path, mode, *args, **kwargs)
        if self.suffix is not None and not str(path).endswith(self.suffix):
            return real
        disk = self

        class Limited:
            def write(self, data):
                size = len(data)
                if size > disk.budget:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                disk.budget -= size
                return real.write(data)

            def __getattr__(self, name):
                return getattr(real, name)

        return Limited()


def test_full_disk_is_one_line_and_keeps_what_was_written(tmp_path, tiny_onnx, monkeypatch, capsys):
    video = _write_video(tmp_path / "clip.mp4", 40)
    out_dir = tmp_path / "out"
    # only the video fills the disk: which of two files meets a shared budget first depends on how
    # many boxes the random model finds and on the JPEG encoder (test_results_log_names_the_path_on_error
    # covers the results log); a 64x48 JPEG frame is at least ~600 bytes, so 40 of them overflow 12 kB
    monkeypatch.setattr(sinks, "open", _FullDisk(12_000, suffix=".avi"), raising=False)
    code = main(["detect", "--no-progress", "--weights", str(tiny_onnx), "--source", str(video), "--save", str(out_dir)])
    out, err = capsys.readouterr()
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "no space left on device" in line and str(out_dir / "clip.avi") in line and "kept" in line
    monkeypatch.undo()
    lines = _json_lines(out_dir / "detections.jsonl")
    assert 0 < len(lines) < 40
    assert _count_frames(out_dir / "clip.avi") >= len(lines)


def test_results_log_names_the_path_on_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sinks, "open", _FullDisk(100), raising=False)
    log = ResultsLog(tmp_path / "r.jsonl")
    log.write({"a": 1})
    with pytest.raises(OutputError, match=r"r\.jsonl: no space left on device; the 1 line\(s\) before are kept"):
        log.write({"b": "x" * 200})
    log.close()


# ------------------------------------------------------------------ signals


@pytest.mark.parametrize(
    ("signum", "streams"),
    [(signal.SIGTERM, 1), (signal.SIGINT, 1), (signal.SIGINT, 2), (signal.SIGKILL, 2)],
    ids=["SIGTERM", "SIGINT", "SIGINT-2-streams", "SIGKILL-2-streams"],
)
def test_a_kill_loses_no_finished_frame(tmp_path, tiny_onnx, signum, streams):
    video = _write_video(tmp_path / "long.mp4", 1500)
    out_dir = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-m", "litedet", "detect", "--weights", str(tiny_onnx), "--source", str(video), "--save",
         str(out_dir), "--no-progress", "--threads", "1", "--conf", "0.01", "--streams", str(streams)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    results = out_dir / "detections.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not results.is_file() or results.read_text().count("\n") < 20):
        assert child.poll() is None, child.stderr.read()[-2000:]
        time.sleep(0.05)
    assert child.poll() is None, "the run ended before the signal"
    child.send_signal(signum)
    out, err = child.communicate(timeout=60)
    lines = _json_lines(results)  # every line whole: nothing half-written
    assert 20 <= len(lines) < 1500
    assert [r["source"] for r in lines] == [f"{video}:{i}" for i in range(len(lines))]
    frames = _count_frames(out_dir / "long.avi")
    if signum == signal.SIGKILL:
        assert child.returncode == -signal.SIGKILL
        assert frames >= len(lines)  # each frame is in the video before its line is written
    else:
        assert child.returncode == 0, err[-2000:]
        assert "interrupted: every finished frame is kept" in out
        summary = json.loads((out_dir / "summary.json").read_text())
        assert summary["interrupted"] and summary["frames"] == len(lines) == frames


# ------------------------------------------------------------------ exactness on real images


def _reference_tensor(image: np.ndarray, config) -> tuple[np.ndarray, object]:
    """The pre-processing as it was: letterbox, transpose, flip, astype, subtract, divide."""
    from litedet.data.transforms import letterbox

    spec = config.preprocess
    boxed, info = letterbox(image, config.input_size, stride=max(config.strides), pad_value=spec.pad_value, center=spec.center)
    chw = boxed.transpose(2, 0, 1)
    if spec.rgb:
        chw = chw[::-1]
    out = chw.astype(np.float32)
    out -= np.asarray(spec.mean, np.float32).reshape(3, 1, 1)
    out /= np.asarray(spec.std, np.float32).reshape(3, 1, 1)
    return out[None], info


def test_fast_preprocessing_is_exact_on_real_images(shared):
    from litedet.config import ModelConfig, Preprocess
    from litedet.data.transforms import Preprocessor, preprocess

    folder = require_shared("data", "coco256", "images", "val2017")
    images = [cv2.imread(str(p)) for p in sorted(folder.glob("*.jpg"))[:6]]
    specs = [
        Preprocess(),  # YOLOv5: RGB / 255, pad 114, centred
        Preprocess(rgb=False, mean=(103.53, 116.28, 123.675), std=(57.375, 57.12, 58.395), center=False),  # NanoDet
    ]
    for spec in specs:
        for size in (320, 416):
            config = ModelConfig(model="x", num_classes=1, names=["a"], input_size=(size, size), strides=(8, 16, 32), preprocess=spec)
            fast = Preprocessor(config, buffers=2)
            for image in images:
                expected, info = _reference_tensor(image, config)
                batch, got_info = fast(image)
                assert got_info == info
                np.testing.assert_array_equal(batch, expected)
            batch, _ = preprocess(images[:1], config)
            np.testing.assert_array_equal(batch, _reference_tensor(images[0], config)[0])
