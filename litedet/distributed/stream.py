"""Frame-parallel streaming: a reader, N model replicas and an in-order writer.

One edge device often cannot keep up with a camera; several can if each takes every N-th frame
(frame-level data parallelism, the simplest of the collaborative-inference schemes surveyed in
DeepThings, Zhao et al. 2018, §2). ``run_stream`` does this on Ray:

- the **reader** (the calling process) takes frames from any ``litedet.data.sources`` source;
- **N Ray actors** each hold a model replica opened with ``litedet.runtime.open_backend`` (any
  engine) and run a ``Predictor`` on the frames they are given;
- the **writer** (the calling process) emits results strictly in frame order through a reorder
  buffer, saves annotated frames and calls ``on_result``.

At most ``max_in_flight`` frames are between the reader and the writer at any time (read but not
yet emitted): the reader waits for the writer (back-pressure), so memory stays bounded. A file is
never dropped from; a live source (camera, RTSP) keeps reading on its own thread and keeps only its
newest frame, so while the workers are busy stale frames are dropped instead of queueing up
(``frames_dropped``).

Faults: when an actor dies mid-stream (``ray.exceptions.RayActorError``), every frame it still
held is sent again to a live actor and a replacement actor is started (up to ``max_restarts``);
each frame is emitted exactly once, in order.

With ``workers=1`` and no ``address`` the same loop runs in-process and Ray is never imported.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from litedet.config import write_text_atomic
from litedet.data.sources import Frame, Source, open_source
from litedet.distributed.cluster import connect_ray, shutdown_ray
from litedet.engine.results import Detections

LOGGER = logging.getLogger(__name__)

__all__ = ["StreamOptions", "StreamReport", "StreamWorker", "WorkerStats", "run_stream"]


@dataclass
class StreamOptions:
    """How each replica opens and runs the model (``open_backend`` and ``Predictor`` arguments)."""

    weights: str
    model: str | None = None
    engine: str | None = None
    threads: int | None = 1
    precision: str = "fp32"
    imgsz: int | None = None
    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 300


class StreamWorker:
    """One model replica: ``open_backend`` + ``Predictor``. Used in-process or as a Ray actor
    (``ray.remote(StreamWorker)``); ``predict`` returns the detections and the busy seconds."""

    def __init__(self, options: StreamOptions) -> None:
        from litedet.engine.predictor import Predictor
        from litedet.runtime import open_backend

        self.options = options
        self.backend = open_backend(
            options.weights, engine=options.engine, threads=options.threads, precision=options.precision,
            model=options.model, imgsz=options.imgsz,
        )
        self.predictor = Predictor(self.backend, conf=options.conf, iou=options.iou, max_det=options.max_det)

    def ready(self) -> dict[str, Any]:
        """Where this replica runs (host, pid, engine, threads); also a start-up barrier."""
        import socket

        return {"host": socket.gethostname(), "pid": os.getpid(), "engine": self.backend.name, "threads": self.options.threads}

    def predict(self, image: np.ndarray, source: str) -> tuple[Detections, float]:
        start = time.perf_counter()
        detections = self.predictor.predict([image], [source])[0]
        return detections, time.perf_counter() - start

    def close(self) -> None:
        self.backend.close()


@dataclass
class WorkerStats:
    """What one replica did: frames, busy seconds and where it ran."""

    worker: int
    frames: int = 0
    busy_s: float = 0.0
    host: str = ""
    pid: int = 0
    died: bool = False

    def utilisation(self, wall_s: float) -> float:
        """Busy time over the wall time of the run (0..1)."""
        return self.busy_s / wall_s if wall_s > 0 else 0.0


@dataclass
class StreamReport:
    """What ``run_stream`` did.

    ``frames_read`` = frames taken from the source plus stale live frames it dropped;
    ``frames_done`` = results emitted; ``in_order`` is True when results were emitted in frame
    order; ``latency_ms`` holds, per emitted frame, the time from reading it to emitting it
    (queueing, transfer, inference and reorder wait included).
    """

    frames_read: int = 0
    frames_done: int = 0
    frames_dropped: int = 0
    in_order: bool = True
    wall_s: float = 0.0
    workers: list[WorkerStats] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    redispatched: int = 0
    restarts: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    mode: str = "in-process"
    max_in_flight: int = 1
    saved: list[Path] = field(default_factory=list)
    interrupted: bool = False
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def fps(self) -> float:
        """Frames emitted per second of wall time."""
        return self.frames_done / self.wall_s if self.wall_s > 0 else 0.0

    def latency_summary(self) -> dict[str, float]:
        """Median, p90 and max of the per-frame latency (ms); NaN before any frame."""
        if not self.latency_ms:
            return {"p50": float("nan"), "p90": float("nan"), "max": float("nan")}
        values = np.asarray(self.latency_ms)
        return {"p50": float(np.median(values)), "p90": float(np.percentile(values, 90)), "max": float(values.max())}

    def to_dict(self) -> dict[str, Any]:
        """The JSON summary (``litedet stream --json``)."""
        return {
            "frames_read": self.frames_read,
            "frames_done": self.frames_done,
            "frames_dropped": self.frames_dropped,
            "in_order": self.in_order,
            "fps": round(self.fps, 3),
            "wall_s": round(self.wall_s, 3),
            "mode": self.mode,
            "max_in_flight": self.max_in_flight,
            "latency_ms": {k: round(v, 2) for k, v in self.latency_summary().items()},
            "workers": [
                {
                    "worker": w.worker, "frames": w.frames, "busy_s": round(w.busy_s, 3),
                    "utilisation": round(w.utilisation(self.wall_s), 3), "host": w.host, "pid": w.pid, "died": w.died,
                }
                for w in self.workers
            ],
            "redispatched": self.redispatched,
            "restarts": self.restarts,
            "skipped": [p for p, _ in self.skipped],
            "saved": [str(p) for p in self.saved],
            "interrupted": self.interrupted,
        }

    def summary_lines(self) -> list[str]:
        """The human summary ``litedet stream`` prints."""
        lat = self.latency_summary()
        lines = [
            f"{self.frames_done}/{self.frames_read} frame(s) in {self.wall_s:.2f} s = {self.fps:.1f} FPS "
            f"({self.mode}, {len(self.workers)} worker(s), at most {self.max_in_flight} in flight); "
            f"latency p50 {lat['p50']:.1f} ms, p90 {lat['p90']:.1f} ms; "
            f"{'in order' if self.in_order else 'OUT OF ORDER'}",
        ]
        for w in self.workers:
            where = f" on {w.host} pid {w.pid}" if w.host else ""
            lines.append(
                f"  worker {w.worker}{where}: {w.frames} frame(s), busy {w.busy_s:.2f} s, "
                f"utilisation {100 * w.utilisation(self.wall_s):.0f}%" + (" (died)" if w.died else "")
            )
        if self.frames_dropped:
            lines.append(f"dropped {self.frames_dropped} stale live frame(s) to stay real-time")
        if self.redispatched or self.restarts:
            lines.append(f"re-dispatched {self.redispatched} frame(s) of dead workers; started {self.restarts} replacement(s)")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable input(s)")
        if self.interrupted:
            lines.append("interrupted: results so far are kept")
        if self.saved:
            lines.append(f"saved {len(self.saved)} file(s) to {self.saved[0].parent}")
        return lines


@dataclass
class _Pending:
    """A frame read but not yet emitted."""

    frame: Frame
    read_at: float
    result: Detections | None = None


# ``StreamReport.results`` keeps at most this many of the last results (all are in detections.jsonl).
RESULTS_WINDOW = 1000


class _Writer:
    """Emits results in frame order: a reorder buffer keyed by sequence number; with a save
    folder, each result goes to ``detections.jsonl`` as it is emitted."""

    def __init__(
        self,
        report: StreamReport,
        save_dir: Path | None,
        fps: float,
        on_result: Callable[[Frame, Detections], None] | None,
        keep_results: bool,
    ) -> None:
        from litedet.engine.results import Reservoir
        from litedet.engine.sinks import OutputWriter, ResultsLog  # the sinks of `litedet detect`

        self.report = report
        self.on_result = on_result
        # bounded for a stream of any length: the last RESULTS_WINDOW results, a latency sample
        self.results: deque[dict[str, Any]] = deque(maxlen=RESULTS_WINDOW if keep_results else 0)
        self.latency = Reservoir()
        report.latency_ms = self.latency.values
        self.next_seq = 0
        self.last_emitted = -1
        self.writers = self.log = None
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
            self.writers = OutputWriter(save_dir, fps)
            self.log = ResultsLog(save_dir / "detections.jsonl")

    def emit_ready(self, pending: dict[int, _Pending]) -> None:
        """Emit every result from ``next_seq`` on that is complete, in order."""
        while self.next_seq in pending and pending[self.next_seq].result is not None:
            item = pending.pop(self.next_seq)
            detections = item.result
            assert detections is not None
            if self.next_seq <= self.last_emitted:
                self.report.in_order = False
            self.last_emitted = self.next_seq
            self.report.frames_done += 1
            self.latency.add((time.perf_counter() - item.read_at) * 1e3)
            if self.writers is not None:  # the video frame first: a frame in the results file is in the video
                self.writers.write(item.frame, detections.draw(item.frame.image))
            if self.log is not None or self.results.maxlen:
                result = detections.to_json()
                if self.log is not None:
                    self.log.write(result)
                self.results.append(result)
            if self.on_result is not None:
                self.on_result(item.frame, detections)
            self.next_seq += 1

    def close(self) -> list[Path]:
        self.report.results = list(self.results)
        if self.writers is None or self.log is None:
            return []
        self.writers.close()
        self.log.close()
        return [*self.writers.saved, self.log.path]


def run_stream(
    source: str | int | os.PathLike | Source,
    weights: str | os.PathLike,
    model: str | None = None,
    workers: int = 1,
    address: str | None = None,
    engine: str | None = None,
    threads_per_worker: int | None = 1,
    precision: str = "fp32",
    imgsz: int | None = None,
    conf: float = 0.25,
    iou: float = 0.45,
    max_det: int = 300,
    max_in_flight: int | None = None,
    max_frames: int | None = None,
    save_dir: str | os.PathLike | None = None,
    on_result: Callable[[Frame, Detections], None] | None = None,
    keep_results: bool = True,
    worker_resources: dict[str, float] | None = None,
    max_restarts: int = 3,
    start_timeout_s: float = 120.0,
    progress: bool = False,
    on_start: Callable[["_RayPool"], None] | None = None,
    ray_dashboard: bool = False,
) -> StreamReport:
    """Detect on every frame of ``source`` with ``workers`` model replicas; results in frame order.

    ``workers=1`` and ``address=None`` run in-process without Ray. Otherwise the replicas are Ray
    actors: ``address=None`` starts a local Ray instance (and stops it at the end), ``"auto"`` or
    ``"HOST:PORT"`` joins a running cluster (``ray start --head`` / ``ray start --address``);
    ``weights`` must then exist at the same path on every node. Each actor reserves
    ``threads_per_worker`` CPUs plus ``worker_resources`` (Ray custom resources, e.g.
    ``{"camera_node": 1}``).

    ``max_in_flight`` bounds frames read but not yet emitted (default ``2 * workers``);
    ``max_frames`` stops after that many frames. With ``save_dir``: annotated images/videos,
    ``detections.jsonl`` (one line per frame, written as it is emitted) and ``summary.json``.
    ``keep_results`` keeps the last ``RESULTS_WINDOW`` results in ``report.results`` (memory
    stays bounded). ``on_result(frame, detections)`` is called in frame order. ``on_start(pool)``
    is called once the actors are up (tests use it to reach them).
    A local Ray listens on 127.0.0.1 only, with the dashboard and metrics export off unless
    ``ray_dashboard`` (see ``litedet.distributed.cluster``).
    """
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if threads_per_worker is not None and threads_per_worker < 1:
        raise ValueError(f"--threads-per-worker must be >= 1, got {threads_per_worker}")
    in_flight = max_in_flight if max_in_flight is not None else 2 * workers
    if in_flight < 1:
        raise ValueError(f"--max-in-flight must be >= 1, got {max_in_flight}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    weights_path = Path(weights).expanduser()
    if address is None and not weights_path.exists():
        raise FileNotFoundError(f"weights not found: {weights_path}")
    options = StreamOptions(
        weights=str(weights_path), model=model, engine=engine, threads=threads_per_worker, precision=precision,
        imgsz=imgsz, conf=conf, iou=iou, max_det=max_det,
    )
    opened = source if isinstance(source, Source) else open_source(source, max_frames=max_frames)
    out_dir = Path(save_dir) if save_dir is not None else None
    report = StreamReport(max_in_flight=in_flight)
    try:
        if workers == 1 and address is None:
            _run_in_process(opened, options, report, out_dir, on_result, keep_results, max_frames, progress)
        else:
            _run_on_ray(
                opened, options, report, out_dir, on_result, keep_results, max_frames, progress, workers, address,
                in_flight, worker_resources or {}, max_restarts, start_timeout_s, on_start, ray_dashboard,
            )
    finally:
        opened.close()
    report.skipped = list(opened.stats.skipped)
    report.frames_dropped = opened.stats.dropped
    report.frames_read += report.frames_dropped
    if out_dir is not None:
        summary_path = out_dir / "summary.json"
        report.saved += [summary_path]
        write_text_atomic(summary_path, json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def _frames(opened: Source, max_frames: int | None):
    for count, frame in enumerate(opened):
        if max_frames is not None and count >= max_frames:
            return
        yield frame


def _progress_bar(opened: Source, max_frames: int | None, enabled: bool):
    from litedet.progress import progress_bar

    total = opened.total if max_frames is None or opened.total is None else min(opened.total, max_frames)
    return progress_bar(enabled=enabled, total=total, unit="frame", leave=False)


def _run_in_process(
    opened: Source,
    options: StreamOptions,
    report: StreamReport,
    out_dir: Path | None,
    on_result: Callable[[Frame, Detections], None] | None,
    keep_results: bool,
    max_frames: int | None,
    progress: bool,
) -> None:
    """One replica in this process: read, detect, emit; no Ray."""
    worker = StreamWorker(options)
    info = worker.ready()
    stats = WorkerStats(0, host=info["host"], pid=info["pid"])
    report.workers = [stats]
    report.mode = "in-process"
    report.max_in_flight = 1
    writer = _Writer(report, out_dir, opened.fps, on_result, keep_results)
    bar = _progress_bar(opened, max_frames, progress)
    start = time.perf_counter()
    try:
        for seq, frame in enumerate(_frames(opened, max_frames)):
            read_at = time.perf_counter()
            report.frames_read += 1
            detections, busy = worker.predict(frame.image, frame.source)
            stats.frames += 1
            stats.busy_s += busy
            writer.emit_ready({seq: _Pending(frame, read_at, detections)})
            bar.update(1)
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        report.wall_s = time.perf_counter() - start
        bar.close()
        report.saved = writer.close()
        worker.close()


class _RayPool:
    """The Ray actors of one run, with their stats; replaces dead actors."""

    def __init__(self, ray: Any, options: StreamOptions, count: int, resources: dict[str, float], max_restarts: int) -> None:
        self.ray = ray
        self.options = options
        self.max_restarts = max_restarts
        self.restarts = 0
        cpus = float(options.threads or 1)
        self.actor_class = ray.remote(StreamWorker).options(num_cpus=cpus, resources=resources or None)
        self.actors: dict[int, Any] = {}
        self.stats: dict[int, WorkerStats] = {}
        self.load: dict[int, int] = {}
        self.starting: dict[int, Any] = {}  # worker id -> ObjectRef of its ready() call
        for _ in range(count):
            self._start()

    def _start(self) -> int:
        worker_id = len(self.stats)
        actor = self.actor_class.remote(self.options)
        self.actors[worker_id] = actor
        self.stats[worker_id] = WorkerStats(worker_id)
        self.load[worker_id] = 0
        self.starting[worker_id] = actor.ready.remote()
        return worker_id

    def _refresh_starting(self) -> None:
        """Move actors whose model has loaded from ``starting`` to ready."""
        if not self.starting:
            return
        refs = {ref: worker_id for worker_id, ref in self.starting.items()}
        done, _ = self.ray.wait(list(refs), num_returns=len(refs), timeout=0)
        for ref in done:
            worker_id = refs[ref]
            del self.starting[worker_id]
            try:
                info = self.ray.get(ref)
            except self.ray.exceptions.RayActorError:
                continue  # its tasks fail too and are re-dispatched there
            self.stats[worker_id].host = info["host"]
            self.stats[worker_id].pid = info["pid"]

    def wait_ready(self, timeout_s: float) -> None:
        """Block until every actor has loaded its model; clear errors when it cannot."""
        ray = self.ray
        ids = list(self.starting)
        refs = [self.starting[i] for i in ids]
        try:
            infos = ray.get(refs, timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            resources = ray.cluster_resources()
            raise RuntimeError(
                f"{len(ids)} stream worker(s) did not start within {timeout_s:.0f} s: each needs "
                f"{self.options.threads or 1} CPU(s); the cluster has {resources}. Use fewer --workers or "
                f"--threads-per-worker, or add nodes"
            ) from None
        except ray.exceptions.RayActorError as err:
            raise RuntimeError(f"a stream worker failed to load {self.options.weights}: {err}") from None
        for worker_id, info in zip(ids, infos):
            self.stats[worker_id].host = info["host"]
            self.stats[worker_id].pid = info["pid"]
        self.starting.clear()

    def pick(self) -> int:
        """The live actor with the fewest frames in flight, preferring actors whose model has
        loaded (a replacement still starting would hold up the frames given to it)."""
        if not self.actors:
            raise RuntimeError(f"every stream worker died and the {self.max_restarts} allowed restart(s) are used up")
        self._refresh_starting()
        ready = [i for i in self.actors if i not in self.starting] or list(self.actors)
        return min(ready, key=lambda i: (self.load[i], i))

    def mark_dead(self, worker_id: int) -> None:
        """Forget a dead actor and start a replacement while restarts remain."""
        if worker_id not in self.actors:
            return
        LOGGER.warning("stream worker %d died; re-dispatching its frames", worker_id)
        self.stats[worker_id].died = True
        del self.actors[worker_id]
        self.starting.pop(worker_id, None)
        if self.restarts < self.max_restarts:
            self.restarts += 1
            new_id = self._start()
            LOGGER.warning("started replacement stream worker %d", new_id)

    def shutdown(self) -> None:
        for actor in self.actors.values():
            try:
                self.ray.kill(actor)
            except Exception:  # noqa: BLE001 - an actor already gone needs no kill
                LOGGER.debug("actor already gone", exc_info=True)
        self.actors.clear()


def _connect_ray(address: str | None, workers: int, threads: int, dashboard: bool = False) -> tuple[Any, bool]:
    """Connect to Ray (see ``litedet.distributed.cluster``); returns (ray, started_here)."""
    # Logical CPUs are a scheduling count: reserve enough for every replica on this machine.
    return connect_ray(address, num_cpus=max(os.cpu_count() or 1, workers * threads), dashboard=dashboard)


def _run_on_ray(
    opened: Source,
    options: StreamOptions,
    report: StreamReport,
    out_dir: Path | None,
    on_result: Callable[[Frame, Detections], None] | None,
    keep_results: bool,
    max_frames: int | None,
    progress: bool,
    workers: int,
    address: str | None,
    max_in_flight: int,
    resources: dict[str, float],
    max_restarts: int,
    start_timeout_s: float,
    on_start: Callable[[_RayPool], None] | None,
    dashboard: bool = False,
) -> None:
    """Reader -> N actors -> in-order writer, with back-pressure and re-dispatch on actor death."""
    ray, started = _connect_ray(address, workers, options.threads or 1, dashboard)
    report.mode = f"ray ({'local' if address is None else address})"
    pool: _RayPool | None = None
    writer = _Writer(report, out_dir, opened.fps, on_result, keep_results)
    bar = _progress_bar(opened, max_frames, progress)
    try:
        pool = _RayPool(ray, options, workers, resources, max_restarts)
        pool.wait_ready(start_timeout_s)
        if on_start is not None:
            on_start(pool)
        pending: dict[int, _Pending] = {}  # seq -> frame read, not yet emitted
        tasks: dict[Any, tuple[int, int]] = {}  # ObjectRef -> (seq, worker id)
        retry: deque[int] = deque()  # frames of dead actors, to send again first
        frames = iter(_frames(opened, max_frames))
        exhausted = False
        seq = 0
        start = time.perf_counter()

        def dispatch(frame_seq: int) -> None:
            worker_id = pool.pick()
            item = pending[frame_seq]
            ref = pool.actors[worker_id].predict.remote(item.frame.image, item.frame.source)
            tasks[ref] = (frame_seq, worker_id)
            pool.load[worker_id] += 1

        try:
            while True:
                while retry:
                    dispatch(retry.popleft())
                # Back-pressure: read only while fewer than max_in_flight frames are unemitted.
                while not exhausted and len(pending) < max_in_flight:
                    frame = next(frames, None)
                    if frame is None:
                        exhausted = True
                        break
                    pending[seq] = _Pending(frame, time.perf_counter())
                    report.frames_read += 1
                    dispatch(seq)
                    seq += 1
                if not tasks:
                    if exhausted:
                        break
                    continue
                done, _ = ray.wait(list(tasks), num_returns=1)
                for ref in done:
                    frame_seq, worker_id = tasks.pop(ref)
                    pool.load[worker_id] = max(0, pool.load.get(worker_id, 1) - 1)
                    try:
                        detections, busy = ray.get(ref)
                    except ray.exceptions.RayActorError:
                        # The actor (or its node) is gone: its frames go to a live actor.
                        pool.mark_dead(worker_id)
                        report.redispatched += 1
                        retry.append(frame_seq)
                        continue
                    except ray.exceptions.RayTaskError as err:
                        raise RuntimeError(f"detection failed on {pending[frame_seq].frame.source}: {err}") from None
                    stats = pool.stats[worker_id]
                    stats.frames += 1
                    stats.busy_s += busy
                    pending[frame_seq].result = detections
                    bar.update(1)
                writer.emit_ready(pending)
        except KeyboardInterrupt:
            report.interrupted = True
        report.wall_s = time.perf_counter() - start
        report.restarts = pool.restarts
    finally:
        bar.close()
        report.saved = writer.close()
        if pool is not None:
            report.workers = [pool.stats[i] for i in sorted(pool.stats)]
            pool.shutdown()
        if started:
            shutdown_ray(ray)
