"""Where frames come from: an image, a folder, a glob, a video file, a camera or a stream.

``open_source(spec)`` returns an iterable ``Source`` of ``Frame`` objects (BGR uint8 images).
Files are read in order; nothing is dropped. Live sources (a camera index, ``rtsp://``,
``rtmp://``, ``http(s)://`` streams) are read on their own thread into a one-frame slot: when a
new frame arrives before the previous one was taken, the old one is dropped and counted, so a
slow consumer always gets the newest frame and stays at most a frame or two behind real time.
A live source that stalls or closes is re-opened with a capped backoff (``LiveSource``).

Bad input never stops a run: an unreadable or truncated image is skipped with a warning naming
it (and counted in ``stats.skipped``); a video that ends early or breaks keeps the frames read
and ends cleanly. A missing path raises ``FileNotFoundError`` naming it. Imports no torch.
"""

from __future__ import annotations

import functools
import glob
import http.client
import logging
import os
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

import cv2
import numpy as np

from litedet.config import usable_cores
from litedet.data.transforms import ensure_bgr

LOGGER = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm", ".gif", ".ts")
# tcp:// and udp:// carry e.g. a Raspberry Pi camera's H.264 from `rpicam-vid --listen -o tcp://0.0.0.0:8888`.
STREAM_SCHEMES = ("rtsp://", "rtmp://", "http://", "https://", "tcp://", "udp://")


@dataclass
class Frame:
    """One image to detect on. ``source`` names it (``clip.mp4:17`` for frame 17 of a video),
    ``stream`` is the file or URL it belongs to and ``index`` its position there."""

    image: np.ndarray
    source: str
    stream: str
    index: int = 0
    is_video: bool = False


@dataclass
class SourceStats:
    """What a source read: frames given out, images skipped (path, reason), live frames dropped,
    and why a live source ended on its own (``ended``: the stream was lost; None otherwise)."""

    frames: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    dropped: int = 0
    ended: str | None = None


class Capture(Protocol):
    """The part of ``cv2.VideoCapture`` a source uses (so tests can pass a camera stub)."""

    def isOpened(self) -> bool: ...  # noqa: N802 - OpenCV's name
    def read(self) -> tuple[bool, np.ndarray | None]: ...
    def get(self, prop_id: int) -> float: ...
    def release(self) -> None: ...


class Source:
    """Iterable of frames with ``stats``, ``total`` (frames expected, None when unknown or live),
    ``fps`` (for writing videos) and ``close()``."""

    live: bool = False

    def __init__(self) -> None:
        self.stats = SourceStats()
        self.total: int | None = None
        self.fps: float = 25.0

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        """Release files, captures and threads."""

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as BGR uint8; ``ValueError`` naming it when unreadable or truncated."""
    path = Path(path)
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ValueError(f"{path}: not a readable image")
    # libjpeg decodes a truncated JPEG with a grey tail and only a warning: check the end marker.
    if path.suffix.lower() in (".jpg", ".jpeg") and b"\xff\xd9" not in data[-4096:].tobytes():
        raise ValueError(f"{path}: truncated JPEG (no end-of-image marker)")
    if image.dtype != np.uint8:  # 16-bit PNG/TIFF
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(1, int(image.max())))
    return ensure_bgr(image)


# An image fetched over HTTP(S) must arrive whole within these limits (a 64 MiB JPEG is already
# far beyond any camera); an endless or trickling body is cut off instead of filling memory.
URL_IMAGE_MAX_BYTES = 64 << 20
URL_IMAGE_DEADLINE_S = 60.0
URL_READ_TIMEOUT_S = 30.0


def _read_url_image(
    url: str,
    timeout: float = URL_READ_TIMEOUT_S,
    max_bytes: int = URL_IMAGE_MAX_BYTES,
    deadline_s: float = URL_IMAGE_DEADLINE_S,
) -> np.ndarray:
    """Fetch and decode one image; ``ValueError`` naming the URL when it is too large, too slow
    (``deadline_s`` for the whole body; one read waits at most ``min(timeout, deadline_s)``),
    cut short or not an image."""
    started = time.monotonic()
    chunks: list[bytes] = []
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=min(timeout, deadline_s)) as response:  # noqa: S310 - user-given URL
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise ValueError(f"{url}: {int(length)} bytes is over the {max_bytes}-byte limit for an image")
            while True:
                if time.monotonic() - started > deadline_s:
                    raise ValueError(f"{url}: not received within {deadline_s:g} s ({received} bytes so far)")
                chunk = response.read1(1 << 16)  # what has arrived: a trickle cannot stall the deadline
                if not chunk:
                    break
                received += len(chunk)
                if received > max_bytes:
                    raise ValueError(f"{url}: more than the {max_bytes}-byte limit for an image")
                chunks.append(chunk)
            if length is not None and length.isdigit() and received < int(length):
                raise ValueError(f"{url}: connection closed after {received} of {int(length)} bytes, before the image ended")
    except http.client.IncompleteRead as err:
        raise ValueError(f"{url}: connection closed after {received + len(err.partial)} bytes, before the image ended") from None
    except http.client.HTTPException as err:  # a broken response is one line, not a traceback
        raise ValueError(f"{url}: bad HTTP response ({type(err).__name__}: {err})") from None
    except TimeoutError:
        raise ValueError(f"{url}: no data for {min(timeout, deadline_s):g} s ({received} bytes so far)") from None
    data = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ValueError(f"{url}: not a readable image")
    return image


class FileSource(Source):
    """Image and video files, in the given order; videos are read frame by frame. With
    ``max_frames`` the source ends after that many frames (images and video frames together).
    An unreadable file is skipped and counted in ``stats``; with ``strict`` (one file named by
    the user) it is a ``ValueError`` instead."""

    def __init__(self, paths: list[Path], max_frames: int | None = None, decode_threads: int | None = None,
                 strict: bool = False) -> None:
        super().__init__()
        self.strict = strict
        if decode_threads is not None and decode_threads < 1:
            raise ValueError(f"decode_threads must be >= 1, got {decode_threads}")
        self.paths = paths
        self.max_frames = max_frames
        self.decode_threads = decode_threads
        images = [p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES]
        self.total = len(images) + sum(_frame_count(p) for p in paths if p.suffix.lower() in VIDEO_SUFFIXES)
        if max_frames is not None:
            self.total = min(self.total, max_frames)
        self.total = self.total or None
        videos = [p for p in paths if p.suffix.lower() in VIDEO_SUFFIXES]
        if videos:
            self.fps = _video_fps(videos[0])
        self._capture: cv2.VideoCapture | None = None

    def __iter__(self) -> Iterator[Frame]:
        frames = self._frames()
        try:
            for given, frame in enumerate(frames, start=1):
                yield frame
                if self.max_frames is not None and given >= self.max_frames:
                    return
        finally:
            frames.close()  # releases an open video capture at once

    def _frames(self) -> Iterator[Frame]:
        for path in self.paths:
            if path.suffix.lower() in VIDEO_SUFFIXES:
                yield from self._video(path)
                continue
            try:
                image = read_image(path)
            except ValueError as err:
                self._skip(str(path), str(err), f"skipping {err}")
                continue
            self.stats.frames += 1
            yield Frame(image, str(path), str(path))

    def _skip(self, path: str, why: str, message: str) -> None:
        if self.strict:
            raise ValueError(message.removeprefix("skipping "))
        LOGGER.warning("%s", message)
        self.stats.skipped.append((path, why))

    def _video(self, path: Path) -> Iterator[Frame]:
        capture = open_video(path, self.decode_threads)
        self._capture = capture
        try:
            if not capture.isOpened():
                self._skip(str(path), "not a readable video", f"skipping {path}: not a readable video")
                return
            expected = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            index = 0
            while True:
                ok, image = capture.read()
                if not ok or image is None:
                    break
                self.stats.frames += 1
                yield Frame(image, f"{path}:{index}", str(path), index, is_video=True)
                index += 1
            if index == 0:
                self._skip(str(path), "no frame could be decoded", f"skipping {path}: no frame could be decoded")
            elif expected and index < expected - 1:
                # Frame counts from container headers can be off by one; more means the file broke.
                LOGGER.warning("%s ended after %d of %d frames; keeping the frames read", path, index, expected)
        finally:
            capture.release()
            self._capture = None

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()


def open_video(path: str | os.PathLike, decode_threads: int | None = None) -> cv2.VideoCapture:
    """``cv2.VideoCapture`` of a video file; ``decode_threads`` caps the decoder's threads (FFmpeg
    otherwise starts one per core, which on a small device take cores from inference). A backend
    or OpenCV that cannot set it opens the file with its defaults."""
    n_threads = getattr(cv2, "CAP_PROP_N_THREADS", None)  # OpenCV >= 4.6
    if decode_threads is not None and n_threads is not None:
        capture = cv2.VideoCapture(str(path), cv2.CAP_ANY, [n_threads, int(decode_threads)])
        if capture.isOpened():
            return capture
        capture.release()
    return cv2.VideoCapture(str(path))


def decode_threads_beside(inference_threads: int | None) -> int:
    """Threads to decode a video with while an engine infers on ``inference_threads`` threads
    (None: on every core): the cores it leaves free, at least one."""
    cores = usable_cores()
    return max(1, cores - inference_threads) if inference_threads else 1


def _frame_count(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    try:
        return max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)) if capture.isOpened() else 0
    finally:
        capture.release()


def _video_fps(path: Path) -> float:
    capture = cv2.VideoCapture(str(path))
    try:
        fps = capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else 0.0
    finally:
        capture.release()
    return float(fps) if fps and 0 < fps < 1000 else 25.0


class URLImageSource(Source):
    """One image fetched over HTTP(S), at most ``max_bytes`` within ``deadline_s`` seconds; a
    fetch that fails is skipped with one warning line and counted in ``stats.skipped``."""

    def __init__(self, url: str, max_bytes: int = URL_IMAGE_MAX_BYTES, deadline_s: float = URL_IMAGE_DEADLINE_S) -> None:
        super().__init__()
        self.url = url
        self.total = 1
        self.max_bytes, self.deadline_s = max_bytes, deadline_s

    def __iter__(self) -> Iterator[Frame]:
        try:
            image = _read_url_image(self.url, max_bytes=self.max_bytes, deadline_s=self.deadline_s)
        except ValueError as err:  # names the URL already
            LOGGER.warning("skipping %s", err)
            self.stats.skipped.append((self.url, str(err)))
            return
        except OSError as err:
            LOGGER.warning("skipping %s: %s", self.url, err)
            self.stats.skipped.append((self.url, str(err)))
            return
        self.stats.frames += 1
        yield Frame(image, self.url, self.url)


# Reconnects of a lost live source: waits of 1, 2, 4, 8, then 10 s (capped exponential backoff,
# as surveillance recorders do); ``open_source``'s ``reconnect`` attempts in a row, counted anew
# once a frame arrives again.
DEFAULT_RECONNECT = 5
RECONNECT_BACKOFF_S = (1.0, 10.0)
# A network stream that sends nothing for this long is stalled: its open or read gives up (OpenCV's
# FFmpeg backend, whose own default is 30 s) and the source reconnects.
STALL_TIMEOUT_S = 10.0
# ``LiveSource.close`` waits this long for the reader to release the capture; a read stuck in a
# stalled stream is not waited for (the reader releases the capture when the read gives up).
CLOSE_WAIT_S = 0.5


class LiveSource(Source):
    """A camera or network stream read on its own thread; stale frames are dropped; a lost stream
    is re-opened.

    The reader thread keeps only the newest frame. ``__iter__`` waits for a frame newer than the
    last one given out; if the reader stored another first, the older one was dropped
    (``stats.dropped``). ``Frame.index`` is the frame's position in the stream, counted on across
    reconnects, so gaps show the drops.

    ``capture`` is an opened capture; or ``open_capture()`` opens one on the reader thread while
    the constructor waits in short slices (Ctrl-C interrupts it at once, where an open blocks in
    native code for as long as the stream takes to answer). When a read fails, the reader
    re-opens the stream with ``open_capture``: ``reconnect`` attempts in a row, waiting
    ``min(backoff_s[1], backoff_s[0] * 2 ** (i - 1))`` seconds before attempt ``i``, one warning
    line per attempt; a frame read again starts the count anew. Without ``open_capture`` nothing
    can be re-opened: the source ends at the first failed read. A source that ends because the
    stream was lost says why in ``stats.ended``; ``close()`` (or ``stop()``) ends it at once, a
    wait between attempts included, and leaves ``stats.ended`` None.
    """

    live = True

    def __init__(
        self,
        name: str,
        capture: Capture | None = None,
        max_frames: int | None = None,
        open_capture: Callable[[], Capture] | None = None,
        reconnect: int = DEFAULT_RECONNECT,
        backoff_s: tuple[float, float] = RECONNECT_BACKOFF_S,
        open_hint: str = "check the camera index or stream URL",
    ) -> None:
        super().__init__()
        if capture is None and open_capture is None:
            raise ValueError(f"{name}: give LiveSource an opened capture or open_capture")
        if reconnect < 0:
            raise ValueError(f"reconnect must be >= 0, got {reconnect}")
        self.name = name
        self.max_frames = max_frames
        self.reconnect = reconnect if open_capture is not None else 0
        self.backoff_s = backoff_s
        self._open_capture = open_capture
        self._lock = threading.Condition()
        self._latest: tuple[int, np.ndarray] | None = None
        self._ended = False
        self._stop = threading.Event()
        self._closed = False
        self._read_count = 0
        self._first_open = threading.Event()
        self._first_error: str | None = None
        self._thread = threading.Thread(target=self._reader, args=(capture,), name=f"litedet-source-{name}", daemon=True)
        if capture is not None:
            if not capture.isOpened():
                capture.release()
                raise ValueError(f"cannot open {name}: check the camera index or stream URL")
            self.fps = _capture_fps(capture)
            self._first_open.set()
            self._thread.start()
            return
        self._thread.start()
        try:
            while not self._first_open.wait(0.1):  # short slices: a signal is handled between them
                pass
        except BaseException:
            self.stop()  # the reader releases the capture when its open returns
            raise
        if self._first_error is not None:
            raise ValueError(f"cannot open {name}: {self._first_error or open_hint}")

    def _open(self) -> tuple[Capture | None, str | None]:
        """A newly opened capture and None, or None and why not ("" when the backend does not say)."""
        try:
            capture = self._open_capture()
        except Exception as err:  # noqa: BLE001 - a backend's error is why the open failed, said in one line
            return None, f"{type(err).__name__}: {err}"
        if capture.isOpened():
            return capture, None
        capture.release()
        return None, ""

    def _reader(self, capture: Capture | None) -> None:
        try:
            if capture is None:
                capture, self._first_error = self._open()
                if capture is not None:
                    self.fps = _capture_fps(capture)
                self._first_open.set()
                if capture is None:
                    return
            self._read_frames(capture)
        finally:
            self._first_open.set()
            with self._lock:
                self._ended = True
                self._lock.notify_all()

    def _read_frames(self, capture: Capture | None) -> None:
        """Read into the one-frame slot until stopped; re-open a lost stream (see the class)."""
        index = 0
        attempt = 0
        what = ""
        try:
            while not self._stop.is_set():
                if capture is not None:
                    try:
                        ok, image = capture.read()
                    except Exception as err:  # noqa: BLE001 - a broken stream is a lost stream, not a dead process
                        ok, image, what = False, None, f"stream broke ({type(err).__name__}: {err})"
                    if ok and image is not None:
                        attempt = 0
                        self._publish(index, image)
                        index += 1
                        continue
                    # Released here, by the thread that reads: releasing while another thread is
                    # inside read() can crash some OpenCV backends.
                    capture.release()
                    capture = None
                    what = what or "stream lost (closed, or no frame within the stall timeout)"
                if self._stop.is_set():
                    return
                if attempt >= self.reconnect:
                    self.stats.ended = self._lost(index)
                    return
                attempt += 1
                delay = min(self.backoff_s[1], self.backoff_s[0] * 2 ** (attempt - 1))
                LOGGER.warning("%s: %s after %d frames; reconnecting in %g s (attempt %d of %d)",
                               self.name, what, index, delay, attempt, self.reconnect)
                if self._stop.wait(delay):
                    return
                capture, why = self._open()
                what = "" if capture is not None else f"re-open failed ({why})" if why else "re-open failed"
                if capture is not None:
                    LOGGER.info("%s: reconnected on attempt %d of %d", self.name, attempt, self.reconnect)
        finally:
            if capture is not None:
                capture.release()

    def _lost(self, frames: int) -> str:
        if self.reconnect:
            return f"stream {self.name} lost after {frames} frames; {self.reconnect} reconnect(s) failed"
        return f"stream {self.name} lost after {frames} frames; no reconnect"

    def _publish(self, index: int, image: np.ndarray) -> None:
        with self._lock:
            if self._latest is not None:
                self.stats.dropped += 1
            self._latest = (index, image)
            self._read_count = index + 1
            self._lock.notify_all()

    @property
    def frames_read(self) -> int:
        """Frames the reader thread has taken from the stream so far (across reconnects)."""
        with self._lock:
            return self._read_count

    def __iter__(self) -> Iterator[Frame]:
        given = 0
        while self.max_frames is None or given < self.max_frames:
            with self._lock:
                while self._latest is None and not self._ended and not self._stop.is_set():
                    self._lock.wait(timeout=0.1)
                if self._latest is None or self._stop.is_set():
                    return
                index, image = self._latest
                self._latest = None
            given += 1
            self.stats.frames += 1
            yield Frame(image, f"{self.name}:{index}", self.name, index, is_video=True)

    def stop(self) -> None:
        """Ask the reader to stop; returns at once (safe in a signal handler). A consumer waiting
        for a frame and a wait between reconnects end within 0.1 s; a read in progress ends when
        it returns."""
        self._stop.set()

    def close(self) -> None:
        """Stop the reader and wait up to ``CLOSE_WAIT_S`` (the first time) for it to release the
        capture; a read stuck in a stalled stream is left to give up on its own (the reader is a
        daemon thread and releases the capture then)."""
        self.stop()
        if self._closed:
            return
        self._closed = True
        self._thread.join(timeout=CLOSE_WAIT_S)
        if self._thread.is_alive():
            LOGGER.warning("%s: the stream is still blocked in a read or open; it is released when that gives up", self.name)


def _capture_fps(capture: Capture) -> float:
    fps = capture.get(cv2.CAP_PROP_FPS)
    return float(fps) if fps and 0 < fps < 1000 else 25.0


def open_stream(url: str, stall_timeout: float | None = STALL_TIMEOUT_S) -> cv2.VideoCapture:
    """``cv2.VideoCapture`` of a network stream whose open and each read give up after
    ``stall_timeout`` seconds without data (``CAP_PROP_OPEN_TIMEOUT_MSEC`` and
    ``CAP_PROP_READ_TIMEOUT_MSEC``, FFmpeg backend); with None, or an OpenCV without these
    properties, OpenCV's default of 30 s applies."""
    open_timeout = getattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC", None)  # OpenCV >= 4.5.2
    read_timeout = getattr(cv2, "CAP_PROP_READ_TIMEOUT_MSEC", None)
    if stall_timeout is None or open_timeout is None or read_timeout is None:
        return cv2.VideoCapture(url)
    milliseconds = max(1, int(stall_timeout * 1000))
    return cv2.VideoCapture(url, cv2.CAP_ANY, [open_timeout, milliseconds, read_timeout, milliseconds])


def _collect_dir(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)


def is_gstreamer_pipeline(spec: str) -> bool:
    """True for a GStreamer pipeline description that hands frames to OpenCV (``... ! appsink``)."""
    return " ! " in spec and "appsink" in spec


def _opencv_has_gstreamer() -> bool:
    return cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER)


def open_source(
    source: str | int | os.PathLike,
    max_frames: int | None = None,
    capture_factory: Callable[[str | int], Capture] | None = None,
    decode_threads: int | None = None,
    reconnect: int | None = None,
    stall_timeout: float | None = STALL_TIMEOUT_S,
) -> Source:
    """Open ``source``: an image or video file, a folder, a glob, a camera index (``0``), a V4L2
    device (``/dev/video0``), a GStreamer pipeline ending in ``appsink`` (needs an OpenCV built
    with GStreamer) or an ``rtsp://`` / ``rtmp://`` / ``http(s)://`` / ``tcp://`` / ``udp://`` URL
    (an http(s) URL ending in an image suffix is fetched as one image; any other URL is a stream).

    ``max_frames`` ends the source after that many frames (files, videos, cameras and streams
    alike). ``capture_factory`` opens cameras and streams (default ``cv2.VideoCapture``), e.g. a
    stub where no camera exists. ``decode_threads`` caps the threads that decode a video file
    (default: the decoder's own choice, one per core).

    Live sources (cameras, V4L2 devices, GStreamer pipelines, streams) are opened on a helper
    thread (Ctrl-C interrupts a slow open at once); one that cannot be opened at all is a
    ``ValueError``. A live source lost later is re-opened through the same factory up to
    ``reconnect`` times in a row (0: it ends at the first failed read; see ``LiveSource``).
    Default: ``DEFAULT_RECONNECT`` with OpenCV's captures, 0 with a ``capture_factory`` (a stub or
    a replay that runs out has ended; give ``reconnect`` to re-open through it too).
    ``stall_timeout``: seconds without data after which a network stream's open or read gives up
    (None: OpenCV's default, 30 s); it applies to the default factory only.
    """
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if reconnect is None:
        reconnect = DEFAULT_RECONNECT if capture_factory is None else 0
    if reconnect < 0:
        raise ValueError(f"reconnect must be >= 0, got {reconnect}")
    if stall_timeout is not None and not stall_timeout > 0:
        raise ValueError(f"stall_timeout must be > 0 seconds (or None for OpenCV's default, 30 s), got {stall_timeout}")

    def live(name: str, spec: str | int, stream: bool = False) -> LiveSource:
        """``spec`` opened, and re-opened when lost, by the factory (a stream by default with the
        stall timeout)."""
        if capture_factory is not None:
            opener = functools.partial(capture_factory, spec)
        elif stream:
            opener = functools.partial(open_stream, str(spec), stall_timeout)
        else:
            opener = functools.partial(cv2.VideoCapture, spec)
        hint = "check the camera index or stream URL"
        if stream and capture_factory is None:
            waited = f"{stall_timeout:g} s (--stall-timeout)" if stall_timeout is not None else "30 s"
            hint = f"no answer within {waited}, refused, or a wrong URL"
        return LiveSource(name, max_frames=max_frames, open_capture=opener, reconnect=reconnect, open_hint=hint)

    spec = str(source) if isinstance(source, os.PathLike) else source
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        index = int(spec)
        return live(f"camera{index}", index)
    if spec.startswith("/dev/video") or is_gstreamer_pipeline(spec):
        # A V4L2 device node (a character device, not a file) or a GStreamer pipeline ending in
        # appsink (e.g. libcamerasrc on a Raspberry Pi): both are live captures.
        if capture_factory is None and is_gstreamer_pipeline(spec) and not _opencv_has_gstreamer():
            raise ValueError(
                f"cannot open the GStreamer pipeline {spec!r}: this OpenCV ({cv2.__version__}) is built without "
                "GStreamer (as are the opencv-python wheels from PyPI); use an OpenCV with GStreamer (Debian's "
                "python3-opencv), a V4L2 device (/dev/video0) or a tcp:// / rtsp:// stream")
        return live(spec, spec)
    if spec.lower().startswith(STREAM_SCHEMES):
        path_part = spec.split("?", 1)[0].lower()
        if spec.lower().startswith(("http://", "https://")) and path_part.endswith(IMAGE_SUFFIXES):
            return URLImageSource(spec)
        return live(spec, spec, stream=True)
    path = Path(spec).expanduser()
    if path.is_dir():
        files = _collect_dir(path)
        if not files:
            raise FileNotFoundError(f"no images or videos in folder {path} (suffixes {', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})")
        return FileSource(files, max_frames, decode_threads)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
            raise ValueError(f"{path}: unknown image/video suffix {path.suffix!r}")
        return FileSource([path], max_frames, decode_threads, strict=True)
    if glob.has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True))
        files = [p for p in files if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES]
        if not files:
            raise FileNotFoundError(f"no images or videos match {spec}")
        return FileSource(files, max_frames, decode_threads)
    raise FileNotFoundError(f"source not found: {path}")
