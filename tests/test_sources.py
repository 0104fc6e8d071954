"""Frame sources: files, folders with bad images, videos (also broken ones), an HTTP MJPEG stream
and a camera stub, with stale-frame dropping on live sources."""

from __future__ import annotations

import http.server
import logging
import socketserver
import threading
import time
import urllib.parse
from pathlib import Path

import cv2
import numpy as np
import pytest

from litedet.data.sources import FileSource, LiveSource, decode_threads_beside, open_source, open_video


def _frame(i: int, shape=(48, 64)) -> np.ndarray:
    """A frame whose brightness encodes its number (JPEG-safe: steps of 8)."""
    return np.full((*shape, 3), (i * 8) % 256, np.uint8)


def _write_video(path: Path, frames: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(_frame(i))
    writer.release()
    return path


def test_video_decode_threads_give_the_same_frames(tmp_path):
    video = _write_video(tmp_path / "clip.mp4", 6)
    default = [f.image for f in open_source(video)]
    capped = open_source(video, decode_threads=1)
    assert capped.decode_threads == 1
    frames = [f.image for f in capped]
    assert len(frames) == 6 and all(np.array_equal(a, b) for a, b in zip(default, frames))
    if hasattr(cv2, "CAP_PROP_N_THREADS"):  # OpenCV >= 4.6 takes it at open
        capture = open_video(video, 1)
        assert capture.isOpened() and capture.get(cv2.CAP_PROP_N_THREADS) == 1
        capture.release()
    assert not open_video(tmp_path / "missing.mp4", 1).isOpened()  # falls back, then fails like a plain open
    with pytest.raises(ValueError, match="^decode_threads must be >= 1, got 0$"):
        open_source(video, decode_threads=0)


def test_decode_threads_beside_take_the_cores_inference_leaves(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert [decode_threads_beside(n) for n in (None, 0, 1, 2, 7, 8, 16)] == [1, 1, 7, 6, 1, 1, 1]


def test_video_file_gives_every_frame_in_order(tmp_path):
    video = _write_video(tmp_path / "clip.mp4", 12)
    with open_source(video) as source:
        frames = list(source)
        assert source.total == 12
    assert [f.index for f in frames] == list(range(12))
    assert all(f.is_video and f.stream == str(video) for f in frames)
    assert frames[3].source == f"{video}:3"
    brightness = [int(round(f.image.mean() / 8)) for f in frames]
    assert brightness == list(range(12))


def test_broken_video_keeps_frames_and_ends_cleanly(tmp_path):
    video = _write_video(tmp_path / "clip.mp4", 40)
    data = video.read_bytes()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(data[: len(data) // 2])
    source = open_source(broken)
    try:
        frames = list(source)  # the frames before the break, no error
    except ValueError as err:  # mp4 with its index at the end may not open at all: one line naming it
        assert "broken.mp4" in str(err)
    else:
        assert 0 < len(frames) < 40
    # in a folder the same file is skipped and counted
    folder = tmp_path / "videos"
    folder.mkdir()
    broken.rename(folder / "broken.mp4")
    source = open_source(folder)
    assert len(list(source)) < 40


def test_one_named_unreadable_file_is_an_error_in_a_folder_it_is_skipped(tmp_path):
    bad = tmp_path / "empty.jpg"
    bad.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.jpg: not a readable image"):
        list(open_source(bad))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="junk.mp4: not a readable video"):
        list(open_source(junk))
    source = open_source(tmp_path)
    assert list(source) == [] and sorted(Path(p).name for p, _ in source.stats.skipped) == ["empty.jpg", "junk.mp4"]


def test_folder_skips_unreadable_and_truncated_images(tmp_path, caplog):
    good = _frame(3, (40, 30))
    cv2.imwrite(str(tmp_path / "a.jpg"), good)
    cv2.imwrite(str(tmp_path / "c.png"), good)
    (tmp_path / "b.jpg").write_bytes(np.random.default_rng(0).bytes(2000))
    full = cv2.imencode(".jpg", np.random.default_rng(1).integers(0, 255, (200, 200, 3), dtype=np.uint8))[1].tobytes()
    (tmp_path / "d.jpg").write_bytes(full[: len(full) // 2])
    (tmp_path / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING, logger="litedet.data.sources"):
        source = open_source(tmp_path)
        frames = list(source)
    assert [Path(f.source).name for f in frames] == ["a.jpg", "c.png"]
    assert frames[0].image.shape == (40, 30, 3)
    assert [Path(p).name for p, _ in source.stats.skipped] == ["b.jpg", "d.jpg"]
    assert "b.jpg" in caplog.text and "d.jpg" in caplog.text


def test_glob_and_missing_paths(tmp_path):
    for name in ("x1.png", "x2.png", "y.png"):
        cv2.imwrite(str(tmp_path / name), _frame(1))
    assert [Path(f.source).name for f in open_source(str(tmp_path / "x*.png"))] == ["x1.png", "x2.png"]
    with pytest.raises(FileNotFoundError, match="nothing_here.jpg"):
        open_source(tmp_path / "nothing_here.jpg")
    with pytest.raises(FileNotFoundError, match=r"z\*\.png"):
        open_source(str(tmp_path / "z*.png"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        open_source(empty)


class _MJPEGHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``frames`` JPEG frames as multipart/x-mixed-replace at ``period`` seconds each, or
    a single JPEG at /still.jpg. A stream's query changes it: ``frames=N`` per connection,
    ``stall=1`` keeps the connection open without sending after them (until the server stops),
    ``once=1`` answers 404 to every stream request after the first one to this server."""

    frames = 50
    period = 0.02

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path.endswith(("endless.jpg", "trickle.jpg", "cut.jpg")):
            self._bad_image()
            return
        if self.path.endswith(".jpg"):
            data = cv2.imencode(".jpg", _frame(5))[1].tobytes()
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        self.server.streams_served += 1
        if query.get("once") and self.server.streams_served > 1:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        for i in range(int(query.get("frames", self.frames))):
            data = cv2.imencode(".jpg", _frame(i))[1].tobytes()
            try:
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data))
                self.wfile.write(data + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                return
            time.sleep(self.period)
        if query.get("stall"):
            self.wfile.flush()
            self.server.stopped.wait(30)  # a stream that stalls: the connection stays open, silent


@pytest.fixture
def mjpeg_server():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _MJPEGHandler)
    server.daemon_threads = True
    server.streams_served = 0
    server.stopped = threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.stopped.set()
    server.shutdown()
    server.server_close()


def test_http_mjpeg_stream_drops_stale_frames(mjpeg_server):
    source = open_source(f"{mjpeg_server}/stream.mjpg", reconnect=0)
    assert isinstance(source, LiveSource)
    seen, lags = [], []
    try:
        for frame in source:
            # the frame handed out is the newest the reader had: at most a frame or two behind
            lags.append(source.frames_read - 1 - frame.index)
            assert int(round(frame.image.mean() / 8)) == frame.index % 32
            seen.append(frame.index)
            time.sleep(0.08)  # a consumer 4x slower than the stream
    finally:
        source.close()
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert source.stats.dropped > 0
    assert source.stats.frames + source.stats.dropped == source.frames_read
    assert max(lags) <= 2
    assert seen[-1] >= 45  # kept up with the stream to its end
    assert source.stats.ended == f"stream {mjpeg_server}/stream.mjpg lost after 50 frames; no reconnect"


def test_http_image_url(mjpeg_server):
    frames = list(open_source(f"{mjpeg_server}/still.jpg"))
    assert len(frames) == 1 and frames[0].image.shape == (48, 64, 3)


def _bad_image(self):
    """/endless.jpg: a body that never ends; /trickle.jpg: a byte every 0.2 s; /cut.jpg: the
    connection closes before Content-Length bytes."""
    self.send_response(200)
    self.send_header("Content-Type", "image/jpeg")
    if self.path.endswith("cut.jpg"):
        data = cv2.imencode(".jpg", _frame(5))[1].tobytes()
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True
        return
    self.end_headers()
    try:
        for _ in range(10_000):
            if self.path.endswith("endless.jpg"):
                self.wfile.write(b"\xff" * 65536)
            else:
                self.wfile.write(b"\xff")
                self.wfile.flush()
                time.sleep(0.2)
    except (BrokenPipeError, ConnectionResetError):
        return


_MJPEGHandler._bad_image = _bad_image


@pytest.mark.parametrize("name, message", [
    ("endless.jpg", "byte limit"), ("trickle.jpg", "not received within 1 s"), ("cut.jpg", "connection closed after"),
])
def test_http_image_url_limits_are_one_line(mjpeg_server, caplog, name, message):
    from litedet.data.sources import URLImageSource

    url = f"{mjpeg_server}/{name}"
    source = URLImageSource(url, max_bytes=1 << 20, deadline_s=1.0)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert list(source) == []
    assert time.monotonic() - started < 10
    (path, reason), = source.stats.skipped
    assert path == url and message in reason and "\n" not in reason
    assert any(message in record.getMessage() for record in caplog.records)


class CameraStub:
    """A camera that produces a new frame every ``period`` seconds, like a real device."""

    def __init__(self, frames: int = 40, period: float = 0.01) -> None:
        self.frames, self.period, self.count, self.released = frames, period, 0, False

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return True

    def read(self):
        if self.count >= self.frames or self.released:
            return False, None
        time.sleep(self.period)
        self.count += 1
        return True, _frame(self.count - 1)

    def get(self, prop_id: int) -> float:
        return 100.0 if prop_id == cv2.CAP_PROP_FPS else 0.0

    def release(self) -> None:
        self.released = True


def test_camera_index_with_stub_drops_stale_frames():
    stubs = []

    def factory(index):
        assert index == 0
        stubs.append(CameraStub())
        return stubs[-1]

    source = open_source("0", capture_factory=factory)
    assert source.fps == 100.0
    indices = []
    for frame in source:
        indices.append(frame.index)
        time.sleep(0.04)
    source.close()
    assert stubs[0].released
    assert source.stats.dropped > 0 and len(indices) < 40
    assert indices[-1] >= 37


def test_live_source_max_frames_and_unopenable_camera():
    source = open_source(0, capture_factory=lambda i: CameraStub(frames=1000), max_frames=3)
    assert len(list(source)) == 3
    source.close()

    class Closed(CameraStub):
        def isOpened(self):  # noqa: N802
            return False

    with pytest.raises(ValueError, match="camera3"):
        open_source(3, capture_factory=lambda i: Closed())


def test_file_source_fps_from_video(tmp_path):
    source = FileSource([_write_video(tmp_path / "v.mp4", 3)])
    assert source.fps == pytest.approx(10.0)


# ------------------------------------------------------------------ lost streams: reconnects, stalls, stopping


class FailingCamera(CameraStub):
    """A camera that does not open (an unplugged device, a stream that refuses)."""

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return False


def _attempt_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "reconnecting in" in r.getMessage()]


@pytest.mark.parametrize("query", ["frames=5", "frames=5&stall=1"], ids=["closed", "stalled"])
def test_lost_stream_reconnects_and_indices_go_on(mjpeg_server, caplog, query):
    """A server that closes (or goes silent) after 5 frames on every connection: each loss is
    one warning line, the stream is re-opened and frame indices keep increasing."""
    from litedet.data.sources import open_stream

    url = f"{mjpeg_server}/live.mjpg?{query}"
    source = LiveSource(url, max_frames=12, open_capture=lambda: open_stream(url, stall_timeout=0.5), reconnect=2,
                        backoff_s=(0.01, 0.05))
    with caplog.at_level(logging.WARNING, logger="litedet.data.sources"):
        try:
            indices = [frame.index for frame in source]
        finally:
            source.close()
    assert len(indices) == 12 and indices == sorted(set(indices)) and indices[-1] >= 11
    lines = _attempt_lines(caplog)
    assert len(lines) >= 2  # two losses, each reconnected on the first attempt (the count starts anew)
    assert all(line.startswith(f"{url}: stream lost") and line.endswith("(attempt 1 of 2)") for line in lines)
    assert "after 5 frames" in lines[0] and "after 10 frames" in lines[1]
    assert source.stats.ended is None  # ended by max_frames, not lost


def test_gives_up_after_n_attempts_through_the_same_factory(caplog):
    opened: list = []

    def factory(index):
        opened.append(CameraStub(frames=3, period=0.001) if not opened else FailingCamera())
        return opened[-1]

    with caplog.at_level(logging.WARNING, logger="litedet.data.sources"):
        source = open_source(0, capture_factory=factory, reconnect=1)  # one attempt, after 1 s
        indices = [frame.index for frame in source]
        source.close()
    assert indices and indices[-1] == 2 and len(opened) == 2 and opened[0].released
    assert source.stats.ended == "stream camera0 lost after 3 frames; 1 reconnect(s) failed"
    assert _attempt_lines(caplog) == [
        "camera0: stream lost (closed, or no frame within the stall timeout) after 3 frames; reconnecting in 1 s (attempt 1 of 1)"]


def test_backoff_doubles_up_to_its_cap_and_each_failed_reopen_is_one_line(caplog):
    opened: list = []

    def reopen():
        opened.append(CameraStub(frames=2, period=0.001) if not opened else FailingCamera())
        return opened[-1]

    with caplog.at_level(logging.WARNING, logger="litedet.data.sources"):
        source = LiveSource("cam", open_capture=reopen, reconnect=4, backoff_s=(0.01, 0.03))
        list(source)
        source.close()
    lines = _attempt_lines(caplog)
    assert [line.split("; ", 1)[1] for line in lines] == [
        "reconnecting in 0.01 s (attempt 1 of 4)", "reconnecting in 0.02 s (attempt 2 of 4)",
        "reconnecting in 0.03 s (attempt 3 of 4)", "reconnecting in 0.03 s (attempt 4 of 4)"]
    assert lines[1].startswith("cam: re-open failed after 2 frames")
    assert len(opened) == 5 and source.stats.ended == "stream cam lost after 2 frames; 4 reconnect(s) failed"


def test_reconnect_0_ends_at_the_first_failure(caplog):
    opened: list = []

    def factory(spec):
        opened.append(CameraStub(frames=4, period=0.001))
        return opened[-1]

    with caplog.at_level(logging.WARNING, logger="litedet.data.sources"):
        source = open_source("/dev/video7", capture_factory=factory, reconnect=0)
        assert len(list(source)) >= 1
        source.close()
    assert len(opened) == 1 and _attempt_lines(caplog) == []
    assert source.stats.ended == "stream /dev/video7 lost after 4 frames; no reconnect"
    # a capture_factory (a stub, a replay) re-opens only when asked to; OpenCV's captures do by default
    with open_source(0, capture_factory=factory) as default:
        assert default.reconnect == 0
    with open_source(0, capture_factory=factory, reconnect=3) as asked:
        assert asked.reconnect == 3
    with pytest.raises(ValueError, match="^reconnect must be >= 0, got -1$"):
        open_source(0, capture_factory=factory, reconnect=-1)
    with pytest.raises(ValueError, match="stall_timeout must be > 0"):
        open_source("rtsp://127.0.0.1:9/live", stall_timeout=0)


def test_close_during_the_backoff_returns_at_once():
    failed = threading.Event()
    opened: list = []

    class Ending(CameraStub):
        def read(self):
            ok, image = super().read()
            if not ok:
                failed.set()
            return ok, image

    def reopen():
        opened.append(Ending(frames=2, period=0.001))
        return opened[-1]

    source = LiveSource("cam", open_capture=reopen, reconnect=3, backoff_s=(60.0, 60.0))
    consumer = threading.Thread(target=lambda: list(source), daemon=True)
    consumer.start()
    assert failed.wait(10)
    started = time.monotonic()
    source.close()
    consumer.join(5)
    assert time.monotonic() - started < 2 and not consumer.is_alive() and not source._thread.is_alive()
    assert len(opened) == 1 and opened[0].released and source.stats.ended is None  # stopped, not lost


@pytest.fixture
def black_hole():
    """A TCP server that accepts connections and never sends a byte."""
    import socket

    server = socket.create_server(("127.0.0.1", 0))
    accepted: list = []

    def accept():
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()
    for connection in accepted:  # ends FFmpeg's open that was left waiting
        connection.close()


def test_the_open_of_a_silent_server_can_be_interrupted(black_hole):
    """The open blocks in native code until FFmpeg gives up; it runs on a helper thread, so
    Ctrl-C (here simulated) ends the wait at once instead of after the stall timeout."""
    import _thread

    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        open_source(f"tcp://127.0.0.1:{black_hole}", stall_timeout=30)
    assert time.monotonic() - started < 10
    timer.join()


def test_the_stall_timeout_ends_the_open_of_a_silent_server(black_hole):
    with pytest.raises(ValueError, match=rf"^cannot open rtsp://127.0.0.1:{black_hole}/live: no answer within "
                                         r"0.3 s \(--stall-timeout\), refused, or a wrong URL"):
        open_source(f"rtsp://127.0.0.1:{black_hole}/live", stall_timeout=0.3)
