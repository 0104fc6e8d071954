"""Detection over any backend: letterbox -> backend.run -> decode -> NMS -> ``Detections``.

Torch-free: works with every ``litedet.runtime.base.Backend``. ``detect_source`` runs a
``Predictor`` over a ``litedet.data.sources`` source as a bounded pipeline (read + pre-process,
inference, post-process + drawing + writing overlap on three threads, frames stay in order) and
streams every result to JSON Lines as it comes; ``litedet detect`` is a thin wrapper around it.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

import cv2
import numpy as np

from litedet.config import ModelConfig, usable_cores, write_text_atomic
from litedet.data.sources import (
    DEFAULT_RECONNECT, STALL_TIMEOUT_S, FileSource, Frame, LiveSource, Source, decode_threads_beside, open_source,
)
from litedet.data.transforms import LetterboxInfo, Preprocessor
from litedet.engine.results import Detections, Reservoir
from litedet.engine.sinks import OutputWriter, ResultsLog
from litedet.ops.boxes import scale_boxes
from litedet.ops.decode import SSD_VARIANCES, decode_ssdlite, decode_yolo
from litedet.ops import native
from litedet.ops.nms import non_max_suppression
from litedet.runtime.base import Backend

LOGGER = logging.getLogger(__name__)

STAGES = ("pre", "infer", "post")

# The annotated-output writer, under the name ``litedet.distributed.stream`` imports.
_Writers = OutputWriter


class StageTimes:
    """Per-image milliseconds of each stage (pre-process, inference, post-process) in bounded
    memory: the medians come from one ``Reservoir`` sample of at most ``capacity`` frames (the
    same frames for every stage), so a run of any length keeps a fixed few kilobytes."""

    def __init__(self, capacity: int = 4096, seed: int = 0) -> None:
        self._frames = Reservoir(capacity, seed)
        self.pre: list[float] = []
        self.infer: list[float] = []
        self.post: list[float] = []

    def add(self, pre: float, infer: float, post: float) -> None:
        slot = self._frames.slot()
        if slot is None:
            return
        for values, value in ((self.pre, pre), (self.infer, infer), (self.post, post)):
            if slot == len(values):
                values.append(value)
            else:
                values[slot] = value

    def __len__(self) -> int:
        return len(self._frames)

    def medians(self) -> dict[str, float]:
        """Median ms per stage (NaN before the first image)."""
        return {name: float(np.median(getattr(self, name))) if len(self) else float("nan") for name in STAGES}


def decode_outputs(
    outputs: Sequence[np.ndarray],
    config: ModelConfig,
    input_size: tuple[int, int] | None = None,
    min_objectness: float | None = None,
) -> np.ndarray:
    """Raw backend outputs -> [B, N, 5 + nc] candidates (cx, cy, w, h, obj, class probs) in
    input pixels, by ``config.head``; ``input_size`` (h, w) is the batch's size (SSD priors scale
    with it; default ``config.input_size``); rows with objectness (SSD: best class probability)
    at most ``min_objectness`` may be left out (NMS drops them anyway)."""
    if config.head == "yolo":
        return decode_yolo(outputs, config.anchors, config.strides, config.num_classes, min_objectness,
                           config.quantized_outputs or None)
    if config.head == "ssdlite":
        variances = tuple(config.extra.get("variances", SSD_VARIANCES))
        return decode_ssdlite(outputs, config.anchors, config.num_classes, config.input_size, input_size, variances,
                              min_score=min_objectness)
    raise ValueError(f"no decoder for head {config.head!r} (model {config.model!r}); known: 'yolo', 'ssdlite'")


class Predictor:
    """Detect objects in BGR images with ``backend``.

    ``conf``: minimum score; ``iou``: NMS IoU threshold; ``max_det``: most boxes per image;
    ``classes``: keep only these class ids; ``agnostic``: one NMS over all classes;
    ``multi_label``: a box may yield several classes (COCO evaluation). The input is letterboxed
    to ``backend.input_size``: padded only to a stride multiple when the backend takes dynamic
    shapes (YOLOv5 ``detect.py``), else to the fixed square a static engine needs.
    """

    def __init__(
        self,
        backend: Backend,
        conf: float = 0.25,
        iou: float = 0.45,
        max_det: int = 300,
        classes: Sequence[int] | None = None,
        agnostic: bool = False,
        multi_label: bool = False,
        auto: bool | None = None,
        interpolation: int = cv2.INTER_LINEAR,
    ) -> None:
        if not 0.0 <= conf <= 1.0:
            raise ValueError(f"conf must be in [0, 1], got {conf}")
        if not 0.0 <= iou <= 1.0:
            raise ValueError(f"iou must be in [0, 1], got {iou}")
        if max_det < 1:
            raise ValueError(f"max_det must be >= 1, got {max_det}")
        config = backend.config
        if config.nms_in_graph:
            # Such a graph already ends in NMS with its thresholds baked in; decoding it again is wrong.
            raise ValueError(
                f"this model ({config.model}) was exported with --nms: its outputs are final detections "
                "(`detections` [B, max_det, 6], `num_detections` [B]); read them directly, or export "
                "without --nms for litedet detect/val/bench"
            )
        if classes is not None:
            bad = [c for c in classes if not 0 <= int(c) < config.num_classes]
            if bad:
                raise ValueError(f"class ids {bad} out of range for {config.num_classes} classes (0..{config.num_classes - 1})")
        self.backend = backend
        self.config = config
        self.conf, self.iou, self.max_det = conf, iou, max_det
        self.classes = None if classes is None else [int(c) for c in classes]
        self.agnostic, self.multi_label = agnostic, multi_label
        self.auto = backend.dynamic if auto is None else auto
        self.interpolation = interpolation
        self.timings = StageTimes()
        self.preprocessor = Preprocessor(config, backend.input_size, auto=self.auto, interpolation=interpolation)
        # compiled decode + NMS where litedet's C extension is built (the numpy path otherwise)
        self._native = None
        if native.available() and config.head == "yolo":
            self._native = native.YoloPostprocess(config.anchors, config.strides, config.num_classes,
                                                  config.quantized_outputs or None)

    @property
    def names(self) -> list[str]:
        return list(self.config.names)

    def predict(self, images: Sequence[np.ndarray] | np.ndarray, sources: Sequence[str] | None = None) -> list[Detections]:
        """Detections for each BGR image (one backend call per image)."""
        if isinstance(images, (str, Path)) or (isinstance(images, (list, tuple)) and images and isinstance(images[0], (str, Path))):
            raise ValueError("Predictor.predict takes BGR image arrays; for paths, folders, videos and URLs "
                             "use litedet.load(weights)(source)")
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        if sources is not None and len(sources) != len(images):
            raise ValueError(f"{len(sources)} source names for {len(images)} images")
        return [self._predict_one(image, "" if sources is None else sources[i]) for i, image in enumerate(images)]

    def __call__(self, images: Sequence[np.ndarray] | np.ndarray, sources: Sequence[str] | None = None) -> list[Detections]:
        return self.predict(images, sources)

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, LetterboxInfo]:
        """BGR image -> (float32 [1, 3, H, W], ``LetterboxInfo``). The array is a buffer reused
        after ``self.preprocessor.buffers`` calls on the same thread (see ``Preprocessor``)."""
        return self.preprocessor(image)

    def input_hw(self, batch: np.ndarray) -> tuple[int, int]:
        """(height, width) of a pre-processed batch: [B, 3, H, W] float32, or [B, H, W, 3] uint8 for
        an engine that takes the letterboxed image itself."""
        return (int(batch.shape[1]), int(batch.shape[2])) if self.preprocessor.uint8 else (int(batch.shape[2]), int(batch.shape[3]))

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """The backend's raw outputs for a pre-processed batch."""
        return self.backend.run(batch)

    def _predict_one(self, image: np.ndarray, source: str) -> Detections:
        start = time.perf_counter()
        batch, info = self.preprocess(image)
        after_pre = time.perf_counter()
        outputs = self.infer(batch)
        after_infer = time.perf_counter()
        detections = self.postprocess(outputs, [info], [source], input_size=self.input_hw(batch))[0]
        end = time.perf_counter()
        stage_ms = ((after_pre - start) * 1e3, (after_infer - after_pre) * 1e3, (end - after_infer) * 1e3)
        self.timings.add(*stage_ms)
        detections.timings = dict(zip(STAGES, stage_ms))
        return detections

    def postprocess(
        self,
        outputs: Sequence[np.ndarray],
        infos: Sequence[LetterboxInfo],
        sources: Sequence[str],
        input_size: tuple[int, int] | None = None,
    ) -> list[Detections]:
        """Raw outputs of a batch -> ``Detections`` per image, boxes in original pixels."""
        if self._native is not None:
            # the same detections, boxes already in original pixels, from one compiled call per image
            found = self._native(outputs, self.conf, self.iou, self.classes, self.agnostic, self.max_det,
                                 letterboxes=infos, multi_label=self.multi_label)
            if found is not None:
                return [Detections(rows[:, :4], rows[:, 4], rows[:, 5].astype(np.int64), self.names, source,
                                   info.original_shape) for rows, info, source in zip(found, infos, sources)]
        size = tuple(input_size) if input_size is not None else None
        candidates = decode_outputs(outputs, self.config, size, min_objectness=self.conf)
        kept = non_max_suppression(
            candidates, self.conf, self.iou, classes=self.classes, agnostic=self.agnostic,
            multi_label=self.multi_label, max_det=self.max_det,
        )
        results = []
        for rows, info, source in zip(kept, infos, sources):
            boxes = scale_boxes(rows[:, :4], info.ratio, info.pad, info.original_shape)
            results.append(Detections(boxes, rows[:, 4], rows[:, 5].astype(np.int64), self.names, source, info.original_shape))
        return results


@dataclass
class DetectReport:
    """What ``detect_source`` did: frames, skipped inputs, dropped live frames, stage medians (ms),
    end-to-end FPS (the seconds spent on the reference left out), the network-only reference
    (``network_ms``, median ms of the backend alone on the first frame's input, timed at the first
    frame and, for a source that ended on its own, again after the last: ``reference_points``;
    None when not measured), files written, the last ``keep_results`` results (``results``; every
    result is in ``detections.jsonl``) and, for a live stream that was lost (its reconnects
    failed), why (``lost``; None otherwise)."""

    frames: int
    skipped: list[tuple[str, str]]
    dropped: int
    stage_ms: dict[str, float]
    fps: float
    wall_s: float
    saved: list[Path]
    results: list[dict[str, Any]]
    interrupted: bool = False
    network_ms: float | None = None
    pipelined: bool = False
    reference_points: int = 0  # 1: timed at the first frame; 2: also after the last
    streams: int = 1  # engine copies inferring side by side
    stream_threads: int | None = None  # threads of each (None: the engine's default)
    lost: str | None = None  # a live source's ``stats.ended``: "stream ... lost after N frames; ..."

    @property
    def network_ratio(self) -> float | None:
        """End-to-end FPS over the network-only rate ``1000 / network_ms`` (1.0: nothing but the
        network costs time)."""
        if not self.network_ms or not self.fps:
            return None
        return self.fps * self.network_ms / 1e3

    def summary_lines(self) -> list[str]:
        """The human summary printed at the end of a run."""
        ms = self.stage_ms
        if not self.frames:
            lines = [f"no frame could be read ({len(self.skipped)} input(s) skipped)" if self.skipped else "no frame"]
            if self.skipped:
                lines += [f"  {path}: {why}" for path, why in self.skipped[:5]]
            if self.interrupted:
                lines.append("interrupted before the first frame")
            if self.lost:
                lines.append(self.lost)
            return lines
        lines = [
            f"{self.frames} frame(s) in {self.wall_s:.2f} s: pre-process {ms['pre']:.1f} ms, inference "
            f"{ms['infer']:.1f} ms, post-process {ms['post']:.1f} ms (median per frame"
            f"{', overlapped' if self.pipelined else ''}), {self.fps:.1f} FPS end to end",
        ]
        if self.streams > 1:
            threads = f"{self.stream_threads} thread(s)" if self.stream_threads else "the engine's threads"
            lines[0] += f", {self.streams} inference streams of {threads} each"
        if self.network_ratio is not None:
            lines.append(
                f"{self.fps:.1f} FPS = {self.network_ratio:.2f} x the network-only rate "
                f"(1000 / {self.network_ms:.2f} ms, one call of the backend alone on this input, timed "
                f"{'at the start and the end of' if self.reference_points > 1 else 'in'} this run)"
            )
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable input(s): " + ", ".join(p for p, _ in self.skipped[:5]) + (" ..." if len(self.skipped) > 5 else ""))
        if self.dropped:
            lines.append(f"dropped {self.dropped} stale live frame(s) to stay real-time")
        if self.interrupted:
            lines.append("interrupted: every finished frame is kept")
        if self.lost:
            lines.append(self.lost)
        if self.saved:
            lines.append(f"saved {len(self.saved)} file(s) to {self.saved[0].parent}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames, "skipped": [p for p, _ in self.skipped], "dropped": self.dropped,
            "stage_ms_median": self.stage_ms, "fps": self.fps, "wall_s": self.wall_s,
            "network_ms": self.network_ms, "network_ratio": self.network_ratio, "pipelined": self.pipelined,
            "streams": self.streams, "stream_threads": self.stream_threads,
            "interrupted": self.interrupted, "lost": self.lost, "saved": [str(p) for p in self.saved],
        }


def time_network(predictor: Predictor, batch: np.ndarray, runs: int = 20, warmup: int = 3, budget_s: float = 1.0) -> list[float]:
    """ms of each of up to ``runs`` calls of ``predictor.infer(batch)`` alone (at least 3, within
    ``budget_s`` seconds after the warm-up): samples of the network-only reference of a run."""
    for _ in range(warmup):
        predictor.infer(batch)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < runs and (len(times) < 3 or time.perf_counter() - started < budget_s):
        start = time.perf_counter()
        predictor.infer(batch)
        times.append((time.perf_counter() - start) * 1e3)
    return times


_END = object()
# The longest the clean-up waits for a file source's reader thread to finish its frame.
READER_WAIT_S = 10.0


@dataclass
class _Inferred:
    frame: Frame
    outputs: list[np.ndarray]
    info: LetterboxInfo
    input_size: tuple[int, int]
    pre_ms: float
    infer_ms: float


class _Sink:
    """Post-process, draw, write the video frame, then the JSON Lines record (in that order: a
    frame in the results file is always in the video too), then ``on_result``."""

    def __init__(
        self,
        predictor: Predictor,
        writers: OutputWriter | None,
        log: ResultsLog | None,
        stream: TextIO | None,
        keep_results: int,
        on_result: Callable[[Frame, Detections], None] | None,
        bar: Any,
    ) -> None:
        self.predictor, self.writers, self.log, self.stream = predictor, writers, log, stream
        self.results: deque[dict[str, Any]] = deque(maxlen=max(0, keep_results))
        self.on_result, self.bar = on_result, bar

    def __call__(self, item: _Inferred) -> None:
        start = time.perf_counter()
        detections = self.predictor.postprocess(item.outputs, [item.info], [item.frame.source], input_size=item.input_size)[0]
        post_ms = (time.perf_counter() - start) * 1e3
        self.predictor.timings.add(item.pre_ms, item.infer_ms, post_ms)
        detections.timings = dict(zip(STAGES, (item.pre_ms, item.infer_ms, post_ms)))
        if self.writers is not None:
            self.writers.write(item.frame, detections.draw(item.frame.image))
        if self.log is not None or self.stream is not None or self.results.maxlen:
            result = detections.to_json()
            if self.log is not None:
                self.log.write(result)
            if self.stream is not None:
                self.stream.write(json.dumps(result, separators=(",", ":")) + "\n")
                self.stream.flush()
            if self.results.maxlen:
                self.results.append(result)
        if self.on_result is not None:
            self.on_result(item.frame, detections)
        self.bar.update(1)


class _Pipeline:
    """Read + pre-process on one thread, inference on one thread per engine (the caller's thread
    runs the first), the ``_Sink`` on another, joined by FIFO queues. Frames are numbered as an
    engine takes them and reach the sink in that order, so several engines (inference streams)
    keep the order too; at most ``depth + len(engines)`` frames are taken and not yet handled by
    the sink (memory bounded). A live source keeps only the newest pre-processed frame waiting:
    an older one still queued is dropped and counted."""

    def __init__(
        self,
        predictor: Predictor,
        source: Source,
        sink: _Sink,
        max_frames: int | None,
        depth: int = 2,
        engines: Sequence[Backend] = (),
    ) -> None:
        self.predictor, self.source, self.sink, self.max_frames = predictor, source, sink, max_frames
        self.engines = list(engines) or [predictor.backend]
        self.live = source.live
        self.to_infer: queue.Queue = queue.Queue(maxsize=1 if self.live else depth)
        self.to_sink: queue.Queue = queue.Queue()  # bounded by ``in_flight``
        self.in_flight = threading.Semaphore(depth + len(self.engines))
        self._take_lock = threading.Lock()
        self._taken = 0
        # A batch stays in use until its engine returns. Up to depth + engines frames are taken
        # and not yet sunk, the queue holds depth more and the reader fills one: a frame in an
        # engine is at most 2 * depth + engines calls behind the reader.
        predictor.preprocessor.buffers = max(predictor.preprocessor.buffers, 2 * depth + len(self.engines) + 1)
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.network_ms: float | None = None
        self.reference_ms: list[float] = []  # network-only samples: at the first frame and after the last
        self.reference_s = 0.0  # wall time spent on them (not part of the stream's FPS)
        self.reference_points = 0
        self._reference_batch: np.ndarray | None = None
        self._reader: threading.Thread | None = None
        self.interrupted = False
        self.hurry = threading.Event()  # a second signal: stop waiting for the reader
        self._cleaning = False  # in the clean-up after the run (see ``_on_signal``)

    def _time_reference(self, batch: np.ndarray | None, runs: int) -> None:
        """Add network-only samples on ``batch`` (a copy of the first frame's input) with the
        predictor's own backend, nothing else inferring: the reference of the FPS ratio, taken at
        the start and, for a source that ended on its own, again at the end, so drift of the
        machine during the run moves both figures alike."""
        if batch is None or runs <= 0:
            return
        started = time.perf_counter()
        self.reference_ms += time_network(self.predictor, batch, runs=runs)
        self.reference_s += time.perf_counter() - started
        self.reference_points += 1
        self.network_ms = float(np.median(self.reference_ms))

    def _first_reference(self, batch: np.ndarray, runs: int) -> None:
        if self.reference_points == 0 and runs > 0:
            self._reference_batch = batch.copy()
            self._time_reference(self._reference_batch, runs)

    def _last_reference(self, runs: int) -> None:
        if not self.interrupted and not self.live and not self.errors and self.reference_points == 1:
            self._time_reference(self._reference_batch, runs)

    def _put(self, target: queue.Queue, item: Any) -> None:
        while not self.stop.is_set():
            try:
                target.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _read(self) -> None:
        given = 0
        try:
            for frame in self.source:
                if self.stop.is_set() or (self.max_frames is not None and given >= self.max_frames):
                    break
                start = time.perf_counter()
                batch, info = self.predictor.preprocess(frame.image)
                item = (frame, batch, info, (time.perf_counter() - start) * 1e3)
                given += 1
                if self.live:
                    while True:
                        try:
                            self.to_infer.put_nowait(item)
                            break
                        except queue.Full:
                            try:
                                self.to_infer.get_nowait()
                                self.source.stats.dropped += 1
                            except queue.Empty:
                                pass
                else:
                    self._put(self.to_infer, item)
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            self.errors.append(err)
        finally:
            self._put(self.to_infer, _END)

    def _take(self) -> tuple[int, Any] | None:
        """The next pre-processed frame and its number, or None at the end or on stop."""
        while not self.stop.is_set():
            if not self.in_flight.acquire(timeout=0.1):
                continue
            with self._take_lock:
                try:
                    item = self.to_infer.get(timeout=0.1)
                except queue.Empty:
                    self.in_flight.release()
                    if self._reader is not None and not self._reader.is_alive() and self.to_infer.empty():
                        return None
                    continue
                if item is _END:
                    self.in_flight.release()
                    self.to_infer.put(_END)  # for the other engines; nothing is put after it
                    return None
                number = self._taken
                self._taken += 1
            return number, item
        return None

    def _infer(self, engine: Backend, taken: tuple[int, Any] | None) -> None:
        """Infer with ``engine`` the frame ``taken`` and every next one it takes."""
        while taken is not None:
            number, (frame, batch, info, pre_ms) = taken
            start = time.perf_counter()
            outputs = engine.run(batch)
            infer_ms = (time.perf_counter() - start) * 1e3
            self.to_sink.put((number, _Inferred(frame, outputs, info, self.predictor.input_hw(batch), pre_ms, infer_ms)))
            taken = self._take()

    def _infer_beside(self, engine: Backend) -> None:
        try:
            self._infer(engine, self._take())
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            self.errors.append(err)
            self.stop.set()

    def _drain_sink(self) -> None:
        """Hand inferred frames to the sink in their order (an engine may finish a later frame
        first); after a sink error, only release them."""
        waiting: dict[int, _Inferred] = {}
        following = 0
        failed = False
        while True:
            got = self.to_sink.get()
            if got is _END:
                return
            waiting[got[0]] = got[1]
            while following in waiting:
                item = waiting.pop(following)
                following += 1
                self.in_flight.release()
                if failed:
                    continue
                try:
                    self.sink(item)
                except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
                    self.errors.append(err)
                    self.stop.set()
                    failed = True

    def _on_signal(self, signum: int, _frame: Any) -> None:
        """The first signal stops the run (and wakes a reader waiting on a stalled live stream).
        A second one stops waiting for the reader (a stalled stream's native read is never
        waited for) and, while the run still infers, raises KeyboardInterrupt at once; in the
        clean-up it lets the frames already inferred be written, and a third raises."""
        if not self.interrupted:
            self.interrupted = True
            self.stop.set()
            if isinstance(self.source, LiveSource) and not self._cleaning:  # the clean-up closes it itself
                self.source.stop()  # sets an event, returns at once
            return
        repeated = self.hurry.is_set()
        self.hurry.set()
        if repeated or not self._cleaning:
            raise KeyboardInterrupt

    def _trap(self, signals: Sequence[int]) -> dict[int, Any]:
        """While the run lasts, ``signals`` only ask it to stop: a KeyboardInterrupt raised inside
        a queue operation could leave a thread waiting for ever."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {signum: signal.signal(signum, self._on_signal) for signum in signals}

    def run(self, reference_runs: int, stop_signals: Sequence[int] = ()) -> None:
        self._reader = threading.Thread(target=self._read, name="litedet-read", daemon=True)
        sink = threading.Thread(target=self._drain_sink, name="litedet-sink", daemon=True)
        beside: list[threading.Thread] = []
        previous = self._trap(stop_signals)
        self._reader.start()
        sink.start()
        try:
            first = self._take()
            if first is not None:
                # the reference first, while no engine infers; then every engine takes frames
                self._first_reference(first[1][1], reference_runs)
                beside = [
                    threading.Thread(target=self._infer_beside, args=(engine,), name=f"litedet-infer-{i}", daemon=True)
                    for i, engine in enumerate(self.engines[1:], start=1)
                ]
                for thread in beside:
                    thread.start()
                self._infer(self.engines[0], first)
        finally:
            self._cleaning = True
            self.stop.set()
            self._stop_reader()
            for thread in beside:
                thread.join()
            # every inferred frame reaches the sink before it stops: a kill loses nothing finished
            self.to_sink.put(_END)
            sink.join()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if self.errors:
            raise self.errors[0]
        self._last_reference(reference_runs)

    def _stop_reader(self) -> None:
        """Wait for the reader thread to end (the pipeline is stopped). A live source is closed
        first: that wakes a reader waiting for a stalled stream's next frame and waits at most
        ``CLOSE_WAIT_S`` for its capture, here where a signal only sets ``hurry``. A file's reader
        ends within a frame; a second signal stops the wait for it too."""
        if self.live:
            self.source.close()
        deadline = time.monotonic() + READER_WAIT_S
        while self._reader is not None and self._reader.is_alive() and not self.hurry.is_set():
            if time.monotonic() > deadline:
                break
            self._reader.join(timeout=0.1)

    def run_sequential(self, reference_runs: int, stop_signals: Sequence[int] = ()) -> None:
        """The same stages one after another on the caller's thread (for comparison)."""
        previous = self._trap(stop_signals)
        try:
            given = 0
            for frame in self.source:
                if self.stop.is_set() or (self.max_frames is not None and given >= self.max_frames):
                    break
                start = time.perf_counter()
                batch, info = self.predictor.preprocess(frame.image)
                pre_ms = (time.perf_counter() - start) * 1e3
                self._first_reference(batch, reference_runs)
                start = time.perf_counter()
                outputs = self.predictor.infer(batch)
                infer_ms = (time.perf_counter() - start) * 1e3
                self.sink(_Inferred(frame, outputs, info, self.predictor.input_hw(batch), pre_ms, infer_ms))
                given += 1
        finally:
            self._cleaning = True
            if self.live:
                self.source.close()  # while a signal only sets ``hurry`` (see ``_stop_reader``)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        self._last_reference(reference_runs)


RESULTS_FILE = "detections.jsonl"
# A file source longer than this is a throughput job: two inference streams, a network-only reference.
LONG_SOURCE_FRAMES = 20


def engine_threads(backend: Backend) -> int:
    """The CPU threads ``backend`` infers on: its ``threads``, or every core it may use."""
    return int(backend.threads) if backend.threads else usable_cores()


def open_streams(backend: Backend, streams: int | None, pipeline: bool = True, auto: bool = True) -> list[Backend]:
    """The engine copies of ``streams`` inference streams (see ``detect_source``), each opened
    with ``backend.reopen`` on ``threads // streams`` threads (at least one); [] for one stream,
    which ``backend`` itself runs. ``streams`` None: 2 when ``auto`` and the backend can run
    copies side by side on two or more threads, else 1."""
    possible = pipeline and backend.reopen is not None and backend.concurrent_copies
    if streams is None:
        streams = 2 if auto and possible and engine_threads(backend) >= 2 else 1
    if streams < 1:
        raise ValueError(f"streams must be >= 1, got {streams}")
    if streams == 1:
        return []
    if not pipeline:
        raise ValueError(f"{streams} inference streams need the pipeline (leave out --no-pipeline)")
    if not backend.concurrent_copies:
        raise ValueError(f"the {backend.name} engine cannot run {streams} streams in one process (its thread count is "
                         "the process's); export the model (litedet export) and run the .onnx, .xml or .param file")
    if backend.reopen is None:
        raise ValueError(f"{streams} inference streams need an engine opened from a file (litedet.runtime.open_backend)")
    threads = max(1, engine_threads(backend) // streams)
    if streams > engine_threads(backend):
        LOGGER.warning("%d inference streams on %d thread(s): each gets 1 thread, %d threads in all, more than asked "
                       "(streams no more than --threads keep them apart)", streams, engine_threads(backend), streams)
    engines: list[Backend] = []
    try:
        for _ in range(streams):
            engines.append(backend.reopen(threads=threads))
    except BaseException:
        for engine in engines:
            engine.close()
        raise
    return engines


def detect_source(
    predictor: Predictor,
    source: str | int | Path | Source,
    save_dir: str | Path | None = None,
    progress: bool = True,
    on_result: Callable[[Frame, Detections], None] | None = None,
    max_frames: int | None = None,
    keep_results: int = 1000,
    results_stream: TextIO | None = None,
    pipeline: bool = True,
    reference_runs: int | None = None,
    stop_signals: Sequence[int] = (signal.SIGINT,),
    streams: int | None = None,
) -> DetectReport:
    """Run ``predictor`` over every frame of ``source`` (anything ``open_source`` takes).

    Memory stays bounded for a source of any length: results are streamed, not collected.
    With ``save_dir``: annotated images keep their file names, videos and streams become
    ``<name>.avi`` (Motion-JPEG, playable up to the last frame after any kill), every result goes
    to ``detections.jsonl`` as it comes (one JSON object per line, handed to the OS per frame)
    and ``summary.json`` is written at the end. ``results_stream`` (e.g. ``sys.stdout``) gets the
    same lines. ``report.results`` keeps the last ``keep_results`` results (0: none).

    With ``pipeline`` (default), reading + pre-processing, inference and post-processing +
    drawing + writing overlap on three threads with bounded queues; frames stay in order and
    ``on_result(frame, detections)`` is called in order on the writing thread. ``streams``: how
    many copies of the engine infer side by side, each on its share of the backend's threads
    (``threads // streams``; throughput mode, as OpenVINO's THROUGHPUT hint): small models keep
    two cores busier with two one-thread streams than with one two-thread call. Default: 2 for
    a file source of more than 20 frames on an engine opened by ``open_backend`` (not torch) with
    two or more threads, else 1 (a live source: one stream, for latency). ``max_frames``
    stops after that many frames. ``reference_runs`` times the backend alone on the first
    frame's input that many times (the network-only reference of the FPS ratio; default: for
    videos, streams and more than 20 files). A progress bar is shown for files and videos
    (known length). ``stop_signals`` (default Ctrl-C; ``litedet detect`` adds SIGTERM) end the
    run cleanly when it runs on the main thread: every frame inferred before is written, files
    are closed and ``report.interrupted`` is set; a second one stops at once (a live stream's
    stalled read is not waited for). A live source that ends because its stream was lost sets
    ``report.lost``.
    """
    from litedet.progress import progress_bar

    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    opened = source if isinstance(source, Source) else open_source(source, max_frames=max_frames)
    if pipeline and isinstance(opened, FileSource) and opened.decode_threads is None:
        # the decoder runs beside inference: give it the cores the engine leaves, not one per core
        opened.decode_threads = decode_threads_beside(predictor.backend.threads)
    long_source = opened.total is None or opened.total > LONG_SOURCE_FRAMES
    if reference_runs is None:
        reference_runs = 20 if long_source else 0
    out_dir = Path(save_dir) if save_dir is not None else None
    writers = log = None
    predictor.timings = StageTimes()
    try:
        engines = open_streams(predictor.backend, streams, pipeline=pipeline, auto=long_source and not opened.live)
    except BaseException:
        if opened is not source:
            opened.close()
        raise
    interrupted = False
    total = opened.total if max_frames is None or opened.total is None else min(opened.total, max_frames)
    bar = progress_bar(enabled=progress and total is not None, total=total, unit="frame", leave=False, file=sys.stderr)
    start = time.perf_counter()
    runner: _Pipeline | None = None
    try:
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            if (out_dir / RESULTS_FILE).is_file():  # an earlier run's results: say so before they go
                LOGGER.warning("%s holds an earlier run's results: %s and files of the same names are replaced",
                               out_dir, RESULTS_FILE)
            writers = OutputWriter(out_dir, opened.fps)
            log = ResultsLog(out_dir / RESULTS_FILE)
        sink = _Sink(predictor, writers, log, results_stream, keep_results, on_result, bar)
        runner = _Pipeline(predictor, opened, sink, max_frames, engines=engines)
        if pipeline:
            runner.run(reference_runs, stop_signals)
        else:
            runner.run_sequential(reference_runs, stop_signals)
        interrupted = runner.interrupted
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        opened.close()
        if writers is not None:
            writers.close()
        if log is not None:
            log.close()
        for engine in engines:
            engine.close()
    # the network-only reference is timed inside the run; its seconds are not the stream's
    wall = time.perf_counter() - start - (runner.reference_s if runner is not None else 0.0)
    frames = len(predictor.timings)
    report = DetectReport(
        frames=frames,
        skipped=list(opened.stats.skipped),
        dropped=opened.stats.dropped,
        stage_ms=predictor.timings.medians(),
        fps=frames / wall if wall > 0 else 0.0,
        wall_s=wall,
        saved=list(writers.saved) if writers is not None else [],
        results=list(runner.sink.results) if runner is not None else [],
        interrupted=interrupted,
        lost=opened.stats.ended,
        network_ms=runner.network_ms if runner is not None else None,
        pipelined=pipeline,
        reference_points=runner.reference_points if runner is not None else 0,
        streams=max(1, len(engines)),
        stream_threads=engines[0].threads if engines else predictor.backend.threads,
    )
    if out_dir is not None:
        summary_path = out_dir / "summary.json"
        report.saved += [out_dir / RESULTS_FILE, summary_path]
        write_text_atomic(summary_path, json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def resolve_classes(classes: Sequence[int | str] | None, names: Sequence[str]) -> list[int] | None:
    """Class filter given as ids or names (``["person", 2]``) -> ids, checked against ``names``."""
    if not classes:
        return None
    ids = []
    for value in classes:
        text = str(value)
        if text.isdigit():
            ids.append(int(text))
        elif text in names:
            ids.append(list(names).index(text))
        else:
            raise ValueError(f"unknown class {text!r}: give an id 0..{len(names) - 1} or one of the model's names")
    return ids


def detect(
    source: str | int | Path,
    weights: str | Path,
    model: str | None = None,
    engine: str | None = None,
    save_dir: str | Path | None = None,
    conf: float = 0.25,
    iou: float = 0.45,
    max_det: int = 300,
    classes: Sequence[int | str] | None = None,
    agnostic: bool = False,
    imgsz: int | None = None,
    threads: int | None = None,
    precision: str = "fp32",
    progress: bool = True,
    max_frames: int | None = None,
    keep_results: int = 1000,
    results_stream: TextIO | None = None,
    pipeline: bool = True,
    reference_runs: int | None = None,
    stop_signals: Sequence[int] = (signal.SIGINT,),
    streams: int | None = None,
    reconnect: int = DEFAULT_RECONNECT,
    stall_timeout: float | None = STALL_TIMEOUT_S,
) -> DetectReport:
    """Open ``weights`` (``litedet.runtime.open_backend``) and detect on every frame of ``source``
    (``detect_source`` says what is written and kept); what ``litedet detect`` runs. ``reconnect``
    and ``stall_timeout`` go to ``open_source`` (a lost live stream: ``report.lost``)."""
    from litedet.runtime import open_backend

    # a missing source fails before a model is loaded
    opened = open_source(source, max_frames=max_frames, reconnect=reconnect, stall_timeout=stall_timeout)
    try:
        backend = open_backend(weights, engine=engine, threads=threads, precision=precision, model=model, imgsz=imgsz)
    except BaseException:
        opened.close()
        raise
    try:
        class_ids = resolve_classes(classes, backend.config.names)
        predictor = Predictor(backend, conf=conf, iou=iou, max_det=max_det, classes=class_ids, agnostic=agnostic)
        return detect_source(
            predictor, opened, save_dir=save_dir, progress=progress, max_frames=max_frames, keep_results=keep_results,
            results_stream=results_stream, pipeline=pipeline, reference_runs=reference_runs, stop_signals=stop_signals,
            streams=streams,
        )
    finally:
        opened.close()
        backend.close()
