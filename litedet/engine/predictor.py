"""Detection over any backend: letterbox -> backend.run -> decode -> NMS -> ``Detections``.

Torch-free: works with every ``litedet.runtime.base.Backend``. ``detect_source`` runs a
``Predictor`` over a ``litedet.data.sources`` source and saves annotated images/videos and JSON;
``litedet detect`` is a thin wrapper around it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from litedet.config import ModelConfig, write_text_atomic
from litedet.data.sources import Frame, Source, open_source
from litedet.data.transforms import LetterboxInfo, preprocess
from litedet.engine.results import Detections
from litedet.ops.boxes import scale_boxes
from litedet.ops.decode import SSD_VARIANCES, decode_ssdlite, decode_yolo
from litedet.ops.nms import non_max_suppression
from litedet.runtime.base import Backend

LOGGER = logging.getLogger(__name__)

STAGES = ("pre", "infer", "post")


@dataclass
class StageTimes:
    """Per-image milliseconds of each stage (pre-process, inference, post-process)."""

    pre: list[float] = field(default_factory=list)
    infer: list[float] = field(default_factory=list)
    post: list[float] = field(default_factory=list)

    def add(self, pre: float, infer: float, post: float) -> None:
        self.pre.append(pre)
        self.infer.append(infer)
        self.post.append(post)

    def __len__(self) -> int:
        return len(self.infer)

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
    with it; default ``config.input_size``); rows with objectness at most ``min_objectness`` may
    be left out (NMS drops them anyway)."""
    if config.head == "yolo":
        return decode_yolo(outputs, config.anchors, config.strides, config.num_classes, min_objectness)
    if config.head == "ssdlite":
        variances = tuple(config.extra.get("variances", SSD_VARIANCES))
        return decode_ssdlite(outputs, config.anchors, config.num_classes, config.input_size, input_size, variances)
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

    @property
    def names(self) -> list[str]:
        return list(self.config.names)

    def predict(self, images: Sequence[np.ndarray] | np.ndarray, sources: Sequence[str] | None = None) -> list[Detections]:
        """Detections for each BGR image (one backend call per image)."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        if sources is not None and len(sources) != len(images):
            raise ValueError(f"{len(sources)} source names for {len(images)} images")
        return [self._predict_one(image, "" if sources is None else sources[i]) for i, image in enumerate(images)]

    def __call__(self, images: Sequence[np.ndarray] | np.ndarray, sources: Sequence[str] | None = None) -> list[Detections]:
        return self.predict(images, sources)

    def _predict_one(self, image: np.ndarray, source: str) -> Detections:
        start = time.perf_counter()
        batch, infos = preprocess([image], self.config, auto=self.auto, new_shape=self.backend.input_size, interpolation=self.interpolation)
        after_pre = time.perf_counter()
        outputs = self.backend.run(batch)
        after_infer = time.perf_counter()
        detections = self.postprocess(outputs, infos, [source], input_size=batch.shape[2:])[0]
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
    end-to-end FPS, files written and the JSON of every frame."""

    frames: int
    skipped: list[tuple[str, str]]
    dropped: int
    stage_ms: dict[str, float]
    fps: float
    wall_s: float
    saved: list[Path]
    results: list[dict[str, Any]]
    interrupted: bool = False

    def summary_lines(self) -> list[str]:
        """The human summary printed at the end of a run."""
        ms = self.stage_ms
        lines = [
            f"{self.frames} frame(s) in {self.wall_s:.2f} s: pre-process {ms['pre']:.1f} ms, inference "
            f"{ms['infer']:.1f} ms, post-process {ms['post']:.1f} ms (median per frame), {self.fps:.1f} FPS end to end",
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable input(s): " + ", ".join(p for p, _ in self.skipped[:5]) + (" ..." if len(self.skipped) > 5 else ""))
        if self.dropped:
            lines.append(f"dropped {self.dropped} stale live frame(s) to stay real-time")
        if self.interrupted:
            lines.append("interrupted: results so far are kept")
        if self.saved:
            lines.append(f"saved {len(self.saved)} file(s) to {self.saved[0].parent}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames, "skipped": [p for p, _ in self.skipped], "dropped": self.dropped,
            "stage_ms_median": self.stage_ms, "fps": self.fps, "wall_s": self.wall_s,
            "saved": [str(p) for p in self.saved],
        }


class _Writers:
    """Annotated outputs under ``save_dir``: one image per image file, one .mp4 per video/stream."""

    def __init__(self, save_dir: Path, fps: float) -> None:
        self.save_dir = save_dir
        self.fps = fps
        self.videos: dict[str, cv2.VideoWriter] = {}
        self.saved: list[Path] = []
        self._used: set[str] = set()

    def _unique(self, name: str) -> Path:
        path = self.save_dir / name
        stem, suffix, n = path.stem, path.suffix, 1
        while path.name in self._used:
            path = self.save_dir / f"{stem}_{n}{suffix}"
            n += 1
        self._used.add(path.name)
        return path

    def write(self, frame: Frame, annotated: np.ndarray) -> None:
        if not frame.is_video:
            path = self._unique(Path(frame.stream).name or "image.jpg")
            if not cv2.imwrite(str(path), annotated):
                raise ValueError(f"could not write {path}")
            self.saved.append(path)
            return
        writer = self.videos.get(frame.stream)
        if writer is None:
            stem = Path(frame.stream.split("?")[0].rstrip("/")).stem or "stream"
            path = self._unique(f"{stem}.mp4")
            height, width = annotated.shape[:2]
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width, height))
            if not writer.isOpened():
                raise ValueError(f"could not open a video writer for {path}")
            self.videos[frame.stream] = writer
            self.saved.append(path)
        writer.write(annotated)

    def close(self) -> None:
        for writer in self.videos.values():
            writer.release()
        self.videos.clear()


def detect_source(
    predictor: Predictor,
    source: str | int | Path | Source,
    save_dir: str | Path | None = None,
    progress: bool = True,
    on_result: Callable[[Frame, Detections], None] | None = None,
) -> DetectReport:
    """Run ``predictor`` over every frame of ``source`` (anything ``open_source`` takes).

    With ``save_dir``, annotated images keep their file names, videos and streams become
    ``<name>.mp4`` and all results go to ``detections.json`` (a list with one object per frame)
    plus ``summary.json``. A progress bar is shown for files and videos (known length). Ctrl-C
    ends the run cleanly with the results so far.
    """
    from tqdm import tqdm

    opened = source if isinstance(source, Source) else open_source(source)
    out_dir = Path(save_dir) if save_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    writers = _Writers(out_dir, opened.fps) if out_dir is not None else None
    results: list[dict[str, Any]] = []
    predictor.timings = StageTimes()
    interrupted = False
    start = time.perf_counter()
    bar = tqdm(total=opened.total, unit="frame", disable=not progress or opened.total is None, leave=False)
    try:
        for frame in opened:
            detections = predictor.predict([frame.image], [frame.source])[0]
            results.append(detections.to_json())
            if writers is not None:
                writers.write(frame, detections.draw(frame.image))
            if on_result is not None:
                on_result(frame, detections)
            bar.update(1)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        opened.close()
        if writers is not None:
            writers.close()
    wall = time.perf_counter() - start
    frames = len(predictor.timings)
    report = DetectReport(
        frames=frames,
        skipped=list(opened.stats.skipped),
        dropped=opened.stats.dropped,
        stage_ms=predictor.timings.medians(),
        fps=frames / wall if wall > 0 else 0.0,
        wall_s=wall,
        saved=list(writers.saved) if writers is not None else [],
        results=results,
        interrupted=interrupted,
    )
    if out_dir is not None:
        json_path = out_dir / "detections.json"
        write_text_atomic(json_path, json.dumps(results) + "\n")
        summary_path = out_dir / "summary.json"
        report.saved += [json_path, summary_path]
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
) -> DetectReport:
    """Open ``weights`` (``litedet.runtime.open_backend``) and detect on every frame of ``source``;
    what ``litedet detect`` runs."""
    from litedet.runtime import open_backend

    opened = open_source(source)  # a missing source fails before a model is loaded
    try:
        backend = open_backend(weights, engine=engine, threads=threads, precision=precision, model=model, imgsz=imgsz)
    except BaseException:
        opened.close()
        raise
    try:
        class_ids = resolve_classes(classes, backend.config.names)
        predictor = Predictor(backend, conf=conf, iou=iou, max_det=max_det, classes=class_ids, agnostic=agnostic)
        return detect_source(predictor, opened, save_dir=save_dir, progress=progress)
    finally:
        opened.close()
        backend.close()
