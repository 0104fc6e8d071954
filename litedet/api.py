"""The Python API: ``litedet.load`` opens any model file litedet runs, calling the model detects.

    import litedet

    model = litedet.load("v5lite-s.onnx")            # .safetensors, .onnx, .xml or .param
    result = model("street.jpg")[0]                  # one ``Detections`` per image or frame
    print(result.boxes, result.scores, result.class_names)
    result.save("out/")                              # the image with the boxes drawn on it
    for frame in model.stream("clip.mp4"):           # one frame at a time, in constant memory
        print(frame.source, len(frame))

Imports no torch: only the engine a file needs is imported when it is opened (a
``.safetensors`` checkpoint needs the ``torch`` extra, an ``.onnx`` file only ``runtime``).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from litedet.config import ModelConfig
from litedet.data.sources import IMAGE_SUFFIXES, STREAM_SCHEMES, Source, open_source
from litedet.data.transforms import ensure_bgr
from litedet.engine.predictor import LONG_SOURCE_FRAMES, DetectReport, Predictor, detect_source, resolve_classes
from litedet.engine.results import Detections
from litedet.runtime import open_backend
from litedet.runtime.base import Backend

LOGGER = logging.getLogger(__name__)

__all__ = ["Detections", "Model", "SourceLike", "load"]

# What ``Model.__call__`` takes: a path, folder, glob, video, URL or camera index; a BGR image
# array ([H, W, 3] uint8, as ``cv2.imread`` gives; [N, H, W, 3] for several); a PIL image (not
# named here, so the API imports no PIL); or a list of any of these.
SourceLike = Union[str, os.PathLike, int, np.ndarray, Sequence[Any]]

# Above this many results (each keeps its image), a call that collects them all says that
# ``stream`` would keep memory constant.
_COLLECT_WARNING_FRAMES = 300


def load(
    weights: str | os.PathLike,
    *,
    engine: str | None = None,
    device: str | None = None,
    threads: int | None = None,
    precision: str = "fp32",
    imgsz: int | tuple[int, int] | None = None,
    conf: float = 0.25,
    iou: float = 0.45,
    classes: Sequence[int | str] | None = None,
    max_det: int = 300,
    agnostic: bool = False,
    model: str | None = None,
) -> "Model":
    """Open a detector from any weights file litedet runs and return a callable ``Model``.

    Args:
        weights: a litedet ``.safetensors`` checkpoint (torch), an ``.onnx`` (ONNX Runtime), an
            OpenVINO ``.xml`` or an ncnn ``.param`` file. Its ``.json`` sidecar gives the model,
            class names, input size and pre-processing (``litedet export`` and ``litedet import``
            write it). Pruned, decomposed and INT8 files open the same way.
        engine: ``torch``, ``onnxruntime``, ``openvino`` or ``ncnn``; default from the suffix.
        device: where the engine runs: ``cpu``, ``cuda``, ``cuda:1`` (torch, onnxruntime),
            ``CPU``/``GPU``/``NPU``/``AUTO`` (OpenVINO); default the engine's choice (CUDA when
            torch or onnxruntime-gpu see one, else the CPU).
        threads: CPU threads of the engine; default the engine's.
        precision: ``fp32``; ``bf16`` (torch, OpenVINO) or ``fp16`` (OpenVINO, ncnn, torch on CUDA).
        imgsz: input size (an int for a square, or (height, width)); default the sidecar's.
        conf: minimum score of a detection.
        iou: IoU above which non-maximum suppression drops the lower-scored box.
        classes: keep only these classes (ids or names, e.g. ``["person", "car"]``).
        max_det: most detections per image.
        agnostic: one suppression over all classes instead of one per class.
        model: the architecture (``litedet models``); needed only for a ``.safetensors`` file
            without its sidecar, and must agree with the sidecar otherwise.

    Raises:
        FileNotFoundError: the file, its sidecar or its ``.bin`` is missing.
        ValueError: the file is not a model litedet can run, or an option is out of range.
        litedet.extras.MissingExtraError: (an ``ImportError``) the engine's package is not
            installed; the message says which pip extra installs it.
    """
    path = Path(weights).expanduser()
    if not path.exists() and not path.suffix:
        raise FileNotFoundError(
            f"weights not found: {path} (load opens a weights file; litedet.create_model({str(weights)!r}) "
            "builds an untrained registry model)"
        )
    backend = open_backend(path, engine=engine, threads=threads, precision=precision, model=model, imgsz=imgsz, device=device)
    try:
        return Model(backend, weights=path, conf=conf, iou=iou, classes=classes, max_det=max_det, agnostic=agnostic)
    except BaseException:
        backend.close()
        raise


class Model:
    """A detector opened by ``litedet.load``: call it on images, folders, videos or streams.

    ``model(source)`` returns a list with one ``Detections`` per image or video frame (boxes in
    original pixels, scores, class ids, names, the image itself for ``draw()`` / ``save()``).
    ``model.stream(source)`` (or ``model(source, stream=True)``) yields them one at a time, for
    videos, cameras and long folders. ``model.detect(source, save_dir=...)`` runs the same
    pipelined loop as ``litedet detect`` and writes annotated files and JSON Lines.

    Detection options (``conf``, ``iou``, ``classes``, ``max_det``, ``agnostic``) set at
    ``load`` are the defaults; each call may override them. Close the model (or use it in a
    ``with`` block) to free the engine.
    """

    def __init__(
        self,
        backend: Backend,
        weights: str | os.PathLike | None = None,
        conf: float = 0.25,
        iou: float = 0.45,
        classes: Sequence[int | str] | None = None,
        max_det: int = 300,
        agnostic: bool = False,
    ) -> None:
        self.backend = backend
        self.weights = Path(weights) if weights is not None else None
        self._defaults: dict[str, Any] = dict(conf=conf, iou=iou, classes=classes, max_det=max_det, agnostic=agnostic)
        self._options: dict[str, Any] | None = None
        self._predictor = self._predictor_for()  # checks the defaults now

    # -------------------------------------------------------------------------------- properties

    @property
    def config(self) -> ModelConfig:
        """The model's config (architecture, classes, input size, pre-processing)."""
        return self.backend.config

    @property
    def names(self) -> list[str]:
        """Class names, indexed by class id."""
        return list(self.config.names)

    @property
    def engine(self) -> str:
        """The inference engine running the model (``torch``, ``onnxruntime``, ...)."""
        return self.backend.name

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the network takes; images are letterboxed to it."""
        return tuple(self.backend.input_size)  # type: ignore[return-value]

    # --------------------------------------------------------------------------------- detection

    def __call__(
        self,
        source: SourceLike,
        *,
        stream: bool = False,
        conf: float | None = None,
        iou: float | None = None,
        classes: Sequence[int | str] | None = None,
        max_det: int | None = None,
        agnostic: bool | None = None,
        max_frames: int | None = None,
    ) -> list[Detections] | Iterator[Detections]:
        """Detect objects in ``source``; see ``predict`` (``stream=True``: see ``stream``)."""
        options = dict(conf=conf, iou=iou, classes=classes, max_det=max_det, agnostic=agnostic, max_frames=max_frames)
        if stream:
            return self.stream(source, **options)
        return self.predict(source, **options)

    def predict(
        self,
        source: SourceLike,
        *,
        conf: float | None = None,
        iou: float | None = None,
        classes: Sequence[int | str] | None = None,
        max_det: int | None = None,
        agnostic: bool | None = None,
        max_frames: int | None = None,
    ) -> list[Detections]:
        """Detections for every image or frame of ``source``, in order, as a list.

        ``source``: an image path, a folder, a glob (``"imgs/*.jpg"``), a video file, an
        ``http(s)://`` image URL, a BGR image array ([H, W, 3] uint8 as ``cv2.imread`` gives, or
        [N, H, W, 3]), a PIL image, or a list of these. Unreadable images in a folder are
        skipped with a warning. Cameras and network streams never end by themselves: give
        ``max_frames`` or use ``stream``. Other options override those given to ``load`` for
        this call; ``max_frames`` stops after that many frames.
        """
        if max_frames is None and _is_live(source):
            raise ValueError(f"{source!r} is a camera or stream: give max_frames, or use model.stream(...) to read it frame by frame")
        results = []
        warned = False
        for result in self.stream(source, conf=conf, iou=iou, classes=classes, max_det=max_det, agnostic=agnostic,
                                  max_frames=max_frames):
            results.append(result)
            if not warned and len(results) > _COLLECT_WARNING_FRAMES:
                LOGGER.warning("keeping %d+ results and their images in memory; model.stream(...) handles one at a time",
                               _COLLECT_WARNING_FRAMES)
                warned = True
        return results

    def stream(
        self,
        source: SourceLike,
        *,
        conf: float | None = None,
        iou: float | None = None,
        classes: Sequence[int | str] | None = None,
        max_det: int | None = None,
        agnostic: bool | None = None,
        max_frames: int | None = None,
    ) -> Iterator[Detections]:
        """Yield one ``Detections`` per image or frame of ``source`` as it is read (the same
        sources as ``predict``), holding only a few frames: videos, cameras, streams and long
        folders in constant memory. A video or a folder of more than 20 images runs through
        ``detect_source``'s pipeline on background threads (inference streams included; the same
        results in the same order); closing the generator stops it. The source is opened now (a
        missing file fails here) and closed when the generator ends or is closed."""
        predictor = self._predictor_for(conf=conf, iou=iou, classes=classes, max_det=max_det, agnostic=agnostic)
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        parts = _open_parts(source, max_frames)
        return self._generate(predictor, parts, max_frames)

    def detect(
        self,
        source: str | os.PathLike | int,
        save_dir: str | os.PathLike | None = None,
        *,
        progress: bool = False,
        max_frames: int | None = None,
        keep_results: int = 1000,
        streams: int | None = None,
    ) -> DetectReport:
        """Run ``litedet detect``'s pipelined loop over ``source`` (reading, inference and
        writing overlap on three threads): with ``save_dir``, annotated images and videos,
        ``detections.jsonl`` and ``summary.json`` are written there. Returns the report (frames,
        per-stage milliseconds, FPS, files written, the last ``keep_results`` results as JSON).
        ``streams``: engine copies inferring side by side (default 2 for videos and long folders
        when the engine can, 1 otherwise; see ``litedet.engine.predictor.detect_source``)."""
        return detect_source(self._predictor_for(), source, save_dir=save_dir, progress=progress, max_frames=max_frames,
                             keep_results=keep_results, streams=streams)

    def _generate(self, predictor: Predictor, parts: list[Any], max_frames: int | None) -> Iterator[Detections]:
        given = 0
        try:
            for part in parts:
                if max_frames is not None and given >= max_frames:
                    return
                if _throughput_job(part):
                    left = None if max_frames is None else max_frames - given
                    pipelined = _pipelined(predictor, part, left)
                    try:
                        for result in pipelined:
                            given += 1
                            yield result
                    finally:
                        pipelined.close()  # stops its threads before the source is closed below
                    continue
                for image, name in _images(part):
                    if max_frames is not None and given >= max_frames:
                        return
                    result = predictor.predict([image], [name])[0]
                    result.image = image
                    given += 1
                    yield result
        finally:
            for part in parts:
                if isinstance(part, Source):
                    part.close()

    def _predictor_for(self, **options: Any) -> Predictor:
        """The predictor for these options (None or absent: the defaults from ``load``), rebuilt
        only when they change (it keeps pre-processing buffers)."""
        chosen = {key: default if options.get(key) is None else options[key] for key, default in self._defaults.items()}
        if self._options is not None and chosen == self._options:
            return self._predictor
        class_ids = resolve_classes(chosen["classes"], self.config.names)
        predictor = Predictor(self.backend, conf=chosen["conf"], iou=chosen["iou"], max_det=chosen["max_det"],
                              classes=class_ids, agnostic=chosen["agnostic"])
        self._predictor, self._options = predictor, chosen
        return predictor

    # ---------------------------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Free the engine (sessions, compiled models, threads)."""
        self.backend.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        height, width = self.input_size
        name = self.weights.name if self.weights is not None else self.config.model
        return (f"Model({name}: {self.config.model}, {len(self.names)} classes, input {height}x{width}, "
                f"engine {self.engine})")


class _Closed(Exception):
    """The consumer of ``Model.stream`` closed it before the end."""


_DONE = object()


def _throughput_job(part: Any) -> bool:
    """A video or a long folder: what ``detect_source`` pipelines with several inference streams
    (a camera or network stream keeps its frame-by-frame loop: its consumer sets the pace)."""
    return isinstance(part, Source) and not part.live and (part.total is None or part.total > LONG_SOURCE_FRAMES)


def _pipelined(predictor: Predictor, source: Source, max_frames: int | None) -> Iterator[Detections]:
    """``detect_source``'s pipeline over ``source`` on a background thread, its results handed
    over in order through a small queue (back-pressure: the pipeline waits for the consumer).
    Closing the generator stops the pipeline; an error in it is raised here."""
    results: queue.Queue = queue.Queue(maxsize=4)
    closed = threading.Event()
    failure: list[BaseException] = []

    def hand_over(item: Any) -> bool:
        while not closed.is_set():
            try:
                results.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def on_result(frame: Any, detections: Detections) -> None:
        detections.image = frame.image
        if not hand_over(detections):
            raise _Closed

    def run() -> None:
        try:
            detect_source(predictor, source, progress=False, on_result=on_result, max_frames=max_frames, keep_results=0,
                          reference_runs=0, stop_signals=())
        except _Closed:
            pass
        except BaseException as err:  # noqa: BLE001 - raised on the consumer's thread
            failure.append(err)
        finally:
            hand_over(_DONE)

    thread = threading.Thread(target=run, name="litedet-stream", daemon=True)
    thread.start()
    try:
        while (item := results.get()) is not _DONE:
            yield item
    finally:
        closed.set()
        thread.join()
    if failure:
        raise failure[0]


def _is_live(source: Any) -> bool:
    """A camera index or a network stream (not an image URL): never ends by itself."""
    if isinstance(source, (list, tuple)):
        return any(_is_live(item) for item in source)
    if isinstance(source, bool) or isinstance(source, np.ndarray):
        return False
    if isinstance(source, int) or (isinstance(source, str) and source.isdigit()):
        return True
    if isinstance(source, str) and source.lower().startswith(STREAM_SCHEMES):  # as open_source decides
        return not source.split("?", 1)[0].lower().endswith(IMAGE_SUFFIXES)
    return False


def _images(part: Any) -> Iterator[tuple[np.ndarray, str]]:
    """(BGR image, name) pairs of a part made by ``_open_parts``."""
    if isinstance(part, Source):
        for frame in part:
            yield frame.image, frame.source
    else:
        yield from part


def _as_bgr(image: Any, name: str) -> np.ndarray:
    """A BGR uint8 [H, W, 3] array from a numpy image (grey and BGRA converted) or a PIL image."""
    if type(image).__module__.startswith("PIL."):
        array = np.asarray(image.convert("RGB"))[:, :, ::-1]
        return np.ascontiguousarray(array)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"{name}: expected a uint8 image (0-255, as cv2.imread gives), got dtype {array.dtype}")
    return ensure_bgr(array)


def _open_parts(source: SourceLike, max_frames: int | None) -> list[Any]:
    """``source`` as a list of parts, each a ``Source`` (files, videos, streams) or a list of
    (BGR image, name) pairs (arrays given directly). Paths are opened now, so a missing one
    fails before any detection."""
    items = list(source) if isinstance(source, (list, tuple)) else [source]
    if not items:
        raise ValueError("no source given (an empty list)")
    parts: list[Any] = []
    try:
        for index, item in enumerate(items):
            if isinstance(item, np.ndarray) and item.ndim == 4:
                parts.append([(_as_bgr(image, f"image {index}[{i}]"), "") for i, image in enumerate(item)])
            elif isinstance(item, np.ndarray) or type(item).__module__.startswith("PIL."):
                parts.append([(_as_bgr(item, f"image {index}"), "")])
            elif isinstance(item, (str, os.PathLike, int)) and not isinstance(item, bool):
                parts.append(open_source(item, max_frames=max_frames))
            else:
                raise ValueError(
                    f"cannot detect on a {type(item).__name__}: give a path, folder, glob, video, URL, camera index, "
                    "a BGR image array [H, W, 3] or a list of these"
                )
    except BaseException:
        for part in parts:
            if isinstance(part, Source):
                part.close()
        raise
    return parts
