"""``run_benchmark``: litedet models x engines x threads x sizes, beside peers, in one run.

For every litedet model and input size the model is built once (random weights unless a
checkpoint is given; speed does not depend on values), saved as a checkpoint and exported once
per engine into a cache folder (``litedet.export``); every (model, engine, threads) is opened
through ``litedet.runtime.open_backend``. Peers come from ``litedet.bench.peers``. Then all
configurations are timed *side by side* (``litedet.bench.harness.measure_interleaved``): first
network-only at each batch size, then, with ``end_to_end``, letterbox + inference + decode + NMS
on real COCO images (``litedet.engine.predictor.Predictor`` for litedet models, each peer's own
pre/post-processing for peers).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from litedet.bench.harness import (DEFAULT_LOAD_THRESHOLD, Candidate, LatencyStats, MeasurementInterrupted,
                                   measure_interleaved)
from litedet.bench.peers import ENGINES, Peer, PeerVariant, resolve_peers, shared_dir

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("runs/bench")
COCO_VAL_IMAGES = ("data", "coco256", "images", "val2017")


@dataclass
class Subject:
    """One thing to time: a model (or peer) build on one engine with one thread count."""

    model: str
    variant: str
    kind: str  # "litedet" or "peer"
    engine: str
    threads: int
    imgsz: int
    source: str
    network: Callable[[np.ndarray], Any]
    detect: Callable[[np.ndarray], Any] | None
    profile: dict[str, float | None]
    before: Callable[[], None] | None = None
    max_batch: int | None = None  # None: any batch; 1: a fixed-batch engine file
    precision: str = "fp32"
    notes: list[str] = field(default_factory=list)
    example: Callable[[int], np.ndarray] | None = None  # batch -> network input; None: random float32 NCHW
    stages: Callable[[], dict[str, float]] | None = None  # median ms per stage (pre, infer, post) of detect
    streams: int = 1  # engine copies run side by side per call (``_StreamGang``); detect then takes a list

    @property
    def key(self) -> str:
        key = f"{self.model}|{self.variant}|{self.engine}|{self.threads}|{self.imgsz}|{self.precision}"
        return key if self.streams == 1 else f"{key}|x{self.streams}"


def _torch_threads(threads: int) -> Callable[[], None]:
    def set_threads() -> None:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)

    return set_threads


def _profile_torch(module: Any, imgsz: int) -> dict[str, float | None]:
    """Params, GFLOPs (2 x multiply-adds), MAC (M elements, ShuffleNetV2 §2) and peak activation
    memory (MiB, the largest layer's input + output at fp32) at batch 1, from
    ``litedet.bench.profile``."""
    from litedet.bench.profile import profile_model

    prof = profile_model(module, (imgsz, imgsz), 1)
    return {
        "params": float(prof.params),
        "gflops": 2.0 * float(prof.madds) / 1e9,
        "mac_m": float(prof.mac) / 1e6,  # ShuffleNetV2 MAC of conv/linear layers, elements
        "activation_mb": float(prof.peak_activation_bytes) / 2**20,  # largest layer in + out, fp32
    }


def _empty_profile(params: float | None = None) -> dict[str, float | None]:
    return {"params": params, "gflops": None, "mac_m": None, "activation_mb": None}


# --------------------------------------------------------------------------- litedet models


def _litedet_subjects(
    name: str, engines: Sequence[str], threads: Sequence[int], imgsz: int, cache: Path,
    weights: str | None, conf: float, iou: float, notes: list[str], dynamic_batch: bool, precision: str = "fp32",
) -> list[Subject]:
    """Build, save, export and open one litedet model at one size on every engine and thread count."""
    if weights and Path(weights).suffix.lower() in ENGINE_FILE_SUFFIXES:
        return _engine_file_subjects(name, engines, threads, imgsz, Path(weights), conf, iou, notes)
    import torch

    from litedet.export.api import export_model
    from litedet.layers import fuse_model
    from litedet.models.checkpoint import load_detector, save_checkpoint_weights
    from litedet.models.registry import create_model
    from litedet.runtime import open_backend

    folder = cache / f"{name}_{imgsz}_{_weights_tag(weights)}"  # exports are reused only for the same weights
    folder.mkdir(parents=True, exist_ok=True)
    if weights:
        model, _ = load_detector(Path(weights), model_name=name)
        source = str(weights)
    else:
        torch.manual_seed(0)
        model = create_model(name)
        source = "random weights"
    model.eval()
    profile = _profile_torch(model, imgsz)
    checkpoint = folder / f"{name}.safetensors"
    if not checkpoint.is_file():
        save_checkpoint_weights(model, checkpoint, dataclasses.replace(model.config, input_size=(imgsz, imgsz)))
    subjects = []
    for engine in engines:
        try:
            if engine == "torch":
                path = checkpoint
            else:
                path = _cached_export(export_model, checkpoint, engine, imgsz,
                                      folder / (f"{engine}_dynamic_uint8" if dynamic_batch else f"{engine}_uint8"), dynamic_batch)
        except Exception as err:  # an exporter failure must not sink the other engines
            logger.warning("export of %s@%d to %s failed: %s", name, imgsz, engine, err)
            notes.append(f"{name}@{imgsz} {engine}: export failed ({type(err).__name__}: {err})")
            continue
        for count in threads:
            engine_precision = precision if engine == "torch" else "fp32"
            backend = open_backend(path, engine=engine, threads=count, imgsz=imgsz, precision=engine_precision)
            if engine == "torch" and hasattr(backend, "model"):
                # Conv+BN folded for eager timing, as the exporters and ultralytics' peers do
                fuse_model(backend.model)
            predictor = _predictor(backend, conf, iou)
            subjects.append(Subject(
                model=name, variant=name, kind="litedet", engine=engine, threads=count, imgsz=imgsz,
                source=source, network=backend.run, detect=predictor.predict, profile=profile,
                before=_torch_threads(count) if engine == "torch" else None,
                max_batch=None if (engine == "torch" or dynamic_batch) else 1, precision=engine_precision,
                example=lambda batch, b=backend: b.example_input(batch, (imgsz, imgsz)),
                stages=predictor.timings.medians,
            ))
    if any(engine != "torch" for engine in engines) and UINT8_NOTE not in notes:
        notes.append(UINT8_NOTE)
    return subjects


ENGINE_FILE_SUFFIXES = (".onnx", ".xml", ".param")
UINT8_NOTE = ("litedet models are exported with --uint8-input (as deployed with litedet's runtime): the engine takes "
              "the letterboxed uint8 image and normalises it, so network rows include that step")


def _engine_file_subjects(
    name: str, engines: Sequence[str], threads: Sequence[int], imgsz: int, path: Path, conf: float, iou: float,
    notes: list[str],
) -> list[Subject]:
    """A deployed engine file (an exported, quantized or pruned ``.onnx``, OpenVINO ``.xml`` or ncnn
    ``.param`` with its sidecar) timed as it is, on its own engine, at its own input size."""
    from litedet.compress.report import count_file_gflops, count_file_params
    from litedet.config import find_config
    from litedet.runtime import engine_for, open_backend

    if not path.is_file():
        raise FileNotFoundError(f"--weights file not found: {path}")
    engine = engine_for(path)
    config = find_config(path)
    if config is None:
        raise FileNotFoundError(f"{path}: no model config beside it; bench engine files written by litedet "
                                f"(export, quantize, prune, import)")
    size = int(max(config.input_size))
    if engine not in engines:
        notes.append(f"{name}: {path.name} runs on its own engine ({engine}), not on {', '.join(engines)}")
    if size != imgsz:
        notes.append(f"{name}: {path.name} is fixed at {size}x{size}; timed at that size, not {imgsz}")
    profile = {**_empty_profile(count_file_params(path)), "gflops": count_file_gflops(path)}
    subjects = []
    for count in threads:
        backend = open_backend(path, engine=engine, threads=count)
        predictor = _predictor(backend, conf, iou)
        subjects.append(Subject(
            model=name, variant=path.name, kind="litedet", engine=engine, threads=count, imgsz=size, source=str(path),
            network=backend.run, detect=predictor.predict, profile=profile,
            max_batch=None if engine == "ncnn" else 1,
            example=lambda batch, b=backend: b.example_input(batch, (size, size)),
            stages=predictor.timings.medians,
        ))
    return subjects


def _weights_tag(weights: str | None) -> str:
    if not weights:
        return "random"
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"--weights file not found: {path}")
    return hashlib.sha1(f"{path.resolve()}:{path.stat().st_mtime_ns}".encode()).hexdigest()[:10]


def _cached_export(export_model: Callable[..., Any], checkpoint: Path, engine: str, imgsz: int, out_dir: Path,
                   dynamic_batch: bool) -> Path:
    """Export once per engine and size; later runs reuse the files (``out_dir/.done`` names them
    and the exporter revision that wrote them: files of an older exporter are written again)."""
    from litedet.export.formats import EXPORT_REVISION, export_formats

    marker = out_dir / ".done"
    stamp = f"export revision {EXPORT_REVISION}"
    if marker.is_file():
        lines = marker.read_text().strip().splitlines()
        if len(lines) == 2 and lines[0] == stamp and Path(lines[1]).exists():
            return Path(lines[1])

    formats = [fmt.name for fmt in export_formats() if fmt.engine == engine]
    if not formats:
        raise ValueError(f"no export format runs on engine {engine!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    # dynamic (symbolic batch, height, width) only when a batch > 1 is asked for: a static graph
    # is what a deployed batch-1 model uses, and some engines run it faster.
    result = export_model(checkpoint, formats[0], out_dir, imgsz=imgsz, dynamic=dynamic_batch, uint8_input=True)
    path = Path(result.path)
    marker.write_text(f"{stamp}\n{path}\n")
    return path


def _predictor(backend: Any, conf: float, iou: float) -> Any:
    from litedet.engine.predictor import Predictor

    # auto=False: every engine gets the same fixed square input (a dynamic torch backend would
    # otherwise letterbox to the smallest stride multiple and do less work than the others).
    return Predictor(backend, conf=conf, iou=iou, auto=False)


# --------------------------------------------------------------------------- peers


def _peer_subjects(peer: Peer, variant: PeerVariant, engines: Sequence[str], threads: Sequence[int], cache: Path,
                   conf: float, iou: float, notes: list[str], dynamic_batch: bool, device: str = "cpu",
                   precision: str = "fp32") -> list[Subject]:
    """Open one peer build on every engine it supports among ``engines`` (published files run on
    their own engine whatever ``engines`` says)."""
    chosen = [e for e in engines if e in variant.engines] or list(variant.engines[:1])
    module = peer.torch_module(variant)
    if module is not None:
        profile = _profile_torch(module, variant.imgsz)
    else:
        info = peer.info(variant)
        profile = {**_empty_profile(info["params"]), "gflops": info.get("gflops")}
    if module is None and variant.model == "v5lite-ncnn":
        profile = _litedet_definition_profile(variant, profile, notes)
    subjects = []
    for engine in chosen:
        for count in threads:
            try:
                engine_precision = precision if engine == "torch" else "fp32"
                runner = peer.open(variant, engine, count, cache / "peers", dynamic_batch=dynamic_batch,
                                   device=device if engine == "torch" else "cpu", precision=engine_precision)
            except Exception as err:  # one exporter or engine failing must not sink the run
                logger.warning("peer %s %s on %s failed to open: %s", variant.model, variant.variant, engine, err)
                notes.append(f"peer {variant.variant}@{variant.imgsz} {engine}: failed to open ({type(err).__name__}: {err})")
                break
            detect = _peer_detector(peer, variant, runner, count, engine, conf, iou)
            subjects.append(Subject(
                model=variant.model, variant=variant.variant, kind="peer", engine=engine, threads=count,
                imgsz=variant.imgsz, source=variant.source, network=runner, detect=detect, profile=profile,
                before=_torch_threads(count) if engine == "torch" else None,
                # published ONNX files are fixed at batch 1; ncnn loops over the batch itself
                max_batch=1 if module is None and engine != "ncnn" else None, notes=list(variant.notes),
                precision=engine_precision,
            ))
    return subjects


def _litedet_definition_profile(variant: PeerVariant, profile: dict[str, float | None], notes: list[str]) -> dict[str, float | None]:
    """FLOPs of a published YOLOv5-Lite build from litedet's definition of the same architecture."""
    try:
        from litedet.models.registry import create_model

        defined = _profile_torch(create_model(variant.variant).eval(), variant.imgsz)
    except Exception as err:  # the definition is optional here; the row keeps its params
        logger.info("no litedet definition to profile %s: %s", variant.variant, err)
        return profile
    note = f"{variant.variant} (published ncnn): GFLOPs/MAC from litedet's definition of the same architecture"
    if note not in notes:
        notes.append(note)
    return {**defined, "params": profile["params"] if profile["params"] is not None else defined["params"]}


def _peer_detector(peer: Peer, variant: PeerVariant, runner: Callable[[np.ndarray], Any], threads: int, engine: str,
                   conf: float, iou: float) -> Callable[[np.ndarray], Any] | None:
    from litedet.bench.peers import SSDLitePeer

    if isinstance(peer, SSDLitePeer):
        return peer.end_to_end_runner(variant, threads) if engine == "torch" else None

    def detect(image: np.ndarray) -> Any:
        tensor, meta = peer.preprocess(image, variant)
        return peer.postprocess(runner(tensor), meta, variant, conf, iou)

    return detect


# --------------------------------------------------------------------------- streams


class _StreamGang:
    """Runs one callable per engine copy at the same time: ``count - 1`` resident threads and the
    caller, started together and joined before ``run`` returns (what ``litedet detect --streams``
    does to a video: several engine copies inferring side by side). Resident threads avoid a
    thread start per call; ``close`` ends them."""

    def __init__(self, count: int) -> None:
        if count < 2:
            raise ValueError(f"a stream gang needs at least 2 copies, got {count}")
        self.count = count
        self._start = threading.Barrier(count)
        self._done = threading.Barrier(count)
        self._work: list[Callable[[], Any]] = []
        self._errors: list[BaseException | None] = [None] * count
        self._threads = [threading.Thread(target=self._serve, args=(index,), daemon=True, name=f"litedet-bench-stream-{index}")
                         for index in range(1, count)]
        for thread in self._threads:
            thread.start()

    def _serve(self, index: int) -> None:
        while True:
            try:
                self._start.wait()
            except threading.BrokenBarrierError:
                return
            try:
                self._work[index]()
            except BaseException as err:  # handed to the caller of run
                self._errors[index] = err
            try:
                self._done.wait()
            except threading.BrokenBarrierError:
                return

    def run(self, work: Sequence[Callable[[], Any]]) -> Any:
        """Call every ``work[i]`` (one per copy) concurrently; the first copy's result, or the
        first error raised by any."""
        if len(work) != self.count:
            raise ValueError(f"{len(work)} callables for {self.count} streams")
        self._work = list(work)
        self._errors = [None] * self.count
        self._start.wait()
        result, error = None, None
        try:
            result = self._work[0]()
        except BaseException as err:
            error = err
        self._done.wait()
        error = error or next((e for e in self._errors if e is not None), None)
        if error is not None:
            raise error
        return result

    def close(self) -> None:
        self._start.abort()
        self._done.abort()
        for thread in self._threads:
            thread.join(timeout=5)


def _stream_subject(copies: Sequence[Subject], gang: _StreamGang, threads: int) -> Subject:
    """One subject timing ``len(copies)`` copies of the same configuration side by side on a
    budget of ``threads`` threads: a network call runs every copy on the batch; a detect call
    takes one image per copy."""
    first = copies[0]
    networks = [copy.network for copy in copies]
    detects = [copy.detect for copy in copies]

    def network(batch: np.ndarray) -> Any:
        return gang.run([functools.partial(run, batch) for run in networks])

    def detect(images: Sequence[np.ndarray]) -> Any:
        return gang.run([functools.partial(run, image) for run, image in zip(detects, images)])

    return dataclasses.replace(first, threads=threads, streams=len(copies), network=network,
                               detect=None if any(d is None for d in detects) else detect, stages=None,
                               notes=list(first.notes))


SubjectBuilder = Callable[..., list[Subject]]  # called with notes=, engines=, threads=


def _add_streams(build: SubjectBuilder, engines: Sequence[str], threads: Sequence[int], counts: Sequence[int],
                 notes: list[str], gangs: list[_StreamGang]) -> list[Subject]:
    """Stream subjects, as ``litedet detect --streams N --threads T`` runs a video: for every
    count N > 1 in ``counts`` and thread budget T >= N in ``threads``, N copies of each
    configuration ``build`` opens, each on T // N threads, side by side. Not the torch engine:
    its thread pool is one per process, so copies would not run independently."""
    made: list[Subject] = []
    if "torch" in engines and any(c > 1 for c in counts):
        note = "torch: no streams rows (one thread pool per process: engine copies do not run independently)"
        if note not in notes:
            notes.append(note)
    engines = [engine for engine in engines if engine != "torch"]
    for count in sorted({c for c in counts if c > 1}):
        budgets = [t for t in threads if t >= count]
        if len(budgets) < len(threads):
            note = f"{count} streams need at least {count} threads (one per copy): --threads {min(threads)} left out"
            if note not in notes:
                notes.append(note)
        if not budgets or not engines:
            continue
        per_copy = sorted({t // count for t in budgets})
        openings = [build(notes=[], engines=engines, threads=per_copy) for _ in range(count)]
        for subject in openings[0]:
            copies = [subject] + [match for opening in openings[1:]
                                  for match in opening if match.key == subject.key][:count - 1]
            if len(copies) < count:
                notes.append(f"{subject.variant}@{subject.imgsz} {subject.engine}: could not open {count} copies")
                continue
            for budget in budgets:
                if budget // count == subject.threads:
                    gang = _StreamGang(count)
                    gangs.append(gang)
                    made.append(_stream_subject(copies, gang, budget))
    return made


# --------------------------------------------------------------------------- the run


def load_images(count: int = 16, folder: str | os.PathLike | None = None) -> list[np.ndarray]:
    """The first ``count`` images (BGR) of coco256 val, or of ``folder``."""
    import cv2

    path = Path(folder) if folder else shared_dir().joinpath(*COCO_VAL_IMAGES)
    if not path.is_dir():
        raise FileNotFoundError(f"image folder for --end-to-end not found: {path} (set LITEDET_SHARED or pass images)")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))[:count]
    images = [cv2.imread(str(p)) for p in files]
    images = [im for im in images if im is not None]
    if not images:
        raise FileNotFoundError(f"no readable images in {path}")
    return images


def _row(subject: Subject, mode: str, batch: int, stats: LatencyStats, peak: float | None) -> dict[str, Any]:
    """One result row; a stream subject's call handles ``streams x batch`` images, so its
    images/s, GFLOP/s and energy per image count all of them (its ms are per call)."""
    gflops = subject.profile.get("gflops")
    images = batch * subject.streams
    achieved = None
    if mode == "network" and gflops is not None and stats.median_ms > 0:
        achieved = gflops * images / (stats.median_ms / 1e3)
    energy = stats.energy_per_call_mj
    return {
        "model": subject.model,
        "variant": subject.variant,
        "kind": subject.kind,
        "engine": subject.engine,
        "threads": subject.threads,
        "streams": subject.streams,
        "imgsz": subject.imgsz,
        "batch": batch,
        "mode": mode,
        "precision": subject.precision,
        "median_ms": stats.median_ms,
        "p90_ms": stats.p90_ms,
        "mean_ms": stats.mean_ms,
        "std_ms": stats.std_ms,
        "n": stats.n,
        "images_per_s": images * 1e3 / stats.median_ms if stats.median_ms > 0 else None,
        "params": subject.profile.get("params"),
        "gflops": gflops,
        "mac_m": subject.profile.get("mac_m"),
        "activation_mb": subject.profile.get("activation_mb"),
        "achieved_gflops": achieved,
        "peak_share": None if achieved is None or not peak else achieved / peak,
        "other_load": stats.other_load,
        "steal": stats.steal,
        "disturbed": stats.disturbed,
        "attempts": stats.attempts,
        "energy_mj_per_image": None if energy is None else energy / images,
        "energy_source": stats.energy_source,
        "source": subject.source,
        "notes": "; ".join(subject.notes),
        "rounds": [[int(number), round(ms, 4)] for number, ms in stats.rounds],
        **_stage_columns(subject, mode),
    }


def _stage_columns(subject: Subject, mode: str) -> dict[str, float]:
    """``pre_ms`` / ``post_ms`` of a litedet end-to-end row: median letterbox and decode + NMS
    time per image, measured inside each call (a direct figure, where end-to-end minus network
    subtracts two noisy medians)."""
    if mode != "end-to-end" or subject.stages is None or subject.streams > 1:
        return {}
    medians = subject.stages()
    if not all(np.isfinite(medians.get(stage, np.nan)) for stage in ("pre", "post")):
        return {}
    return {"pre_ms": float(medians["pre"]), "post_ms": float(medians["post"])}


def _model_spec(spec: str, sizes: Sequence[int]) -> tuple[str, list[int]]:
    """``"v5lite-s@416"`` -> ("v5lite-s", [416]); a plain name takes every size in ``sizes``."""
    if "@" not in spec:
        return spec, list(sizes)
    name, _, size = spec.partition("@")
    try:
        return name, [int(size)]
    except ValueError:
        raise ValueError(f"model spec {spec!r}: the size after '@' must be an integer, e.g. v5lite-s@416") from None


def _split_csv(values: str | int | Sequence[Any] | None, cast: Callable[[str], Any] = str) -> list[Any]:
    """"a,b" or a sequence -> a list; a single number (``threads=2``, ``imgsz=416``) -> [it]."""
    if values is None:
        return []
    if isinstance(values, (int, float)):
        return [values]
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    return [cast(str(v).strip()) if isinstance(v, str) else v for v in values]


@dataclass
class BenchmarkResult:
    """Rows, the notes of the run (skipped peers, failed exports, energy availability), the
    machine description and the files written."""

    rows: list[dict[str, Any]]
    notes: list[str]
    machine: dict[str, Any]
    paths: dict[str, Path]
    interrupted: bool = False  # Ctrl-C cut the timing short: the rows and files hold what was measured


def run_benchmark(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """``benchmark(...)`` returning only the rows (see ``benchmark`` for the arguments)."""
    return benchmark(*args, **kwargs).rows


def benchmark(
    models: Sequence[str] | str = ("v5lite-e",),
    engines: Sequence[str] | str = ("torch", "onnxruntime", "openvino", "ncnn"),
    threads: Sequence[int] | int | str = (1, 2),
    imgsz: Sequence[int] | int | str = (320,),
    batch: Sequence[int] | int | str = (1,),
    peers: Sequence[str] | str = (),
    end_to_end: bool = False,
    out_dir: str | os.PathLike | None = DEFAULT_OUT,
    runs: int = 100,
    budget_s: float | None = None,
    warmup: int = 10,
    weights: dict[str, str] | None = None,
    images: Sequence[np.ndarray] | None = None,
    map_results: Sequence[dict[str, Any]] | None = None,
    load_threshold: float = DEFAULT_LOAD_THRESHOLD,
    max_attempts: int = 2,
    conf: float = 0.25,
    iou: float = 0.45,
    device: str = "cpu",
    precision: str = "fp32",
    measure_peak: bool = True,
    progress: bool = True,
    command: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    streams: Sequence[int] | int | str = (1,),
) -> BenchmarkResult:
    """Measure every combination and return one row dict per (model, engine, threads, imgsz,
    batch, mode); with ``out_dir`` also write ``report.md``, ``results.json`` and PNG plots there.

    ``models`` are registry names (``litedet models``), each optionally pinned to one size as
    ``name@size`` (otherwise measured at every size in ``imgsz``); ``peers`` names from
    ``litedet.bench.peers.list_peers`` (absent ones are skipped with a note in the report).
    ``runs`` timed runs per configuration after ``warmup`` (``budget_s`` caps each interleaved
    group, with at least 10 runs). ``weights`` maps a model name to a checkpoint to use instead
    of random weights. ``precision`` (fp32, bf16, fp16) and ``device`` (cpu, cuda) apply to the torch
    engine; exported engines run fp32 on the CPU. Rows always carry ``model, engine, threads, imgsz, batch, median_ms, p90_ms,
    gflops, params`` plus load and energy fields (``litedet.bench.report.ROW_KEYS``).
    A configuration whose background load exceeded ``load_threshold`` (percent of the machine) is
    measured again, up to ``max_attempts`` in all, and flagged ``disturbed`` if it stays above.
    Exports are cached in ``cache_dir`` (default ``runs/bench/cache``) and reused by later runs.
    ``streams`` counts N above 1 add rows where N copies of a configuration share its thread count
    T (T // N threads each; T >= N) and run side by side, one image each per call, as
    ``litedet detect --streams N --threads T`` runs a video: their ``images_per_s`` is the
    throughput of all copies together (``streams`` in the row; not for the torch engine, whose
    thread pool is one per process). Streams 1 (in the default) are the single-copy rows.
    """
    from litedet.bench.machine import machine_info, raise_peak_to_observed
    from litedet.bench.report import speed_swing_notes, write_report

    models = _split_csv(models)
    engines = _split_csv(engines)
    threads = _split_csv(threads, int)
    sizes = _split_csv(imgsz, int)
    batches = _split_csv(batch, int)
    peer_names = _split_csv(peers)
    stream_counts = _split_csv(streams, int)
    bad = [e for e in engines if e not in ENGINES]
    if bad:
        raise ValueError(f"unknown engine(s) {bad}; choose from {', '.join(ENGINES)}")
    if not threads or min(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if not batches or min(batches) < 1:
        raise ValueError(f"batch sizes must be >= 1, got {batches}")
    if not stream_counts or min(stream_counts) < 1:
        raise ValueError(f"streams must be >= 1, got {stream_counts}")
    if not sizes or min(sizes) < 32:
        raise ValueError(f"input sizes must be >= 32, got {sizes}")
    if not models and not peer_names:
        raise ValueError("nothing to benchmark: give --models and/or --peers")
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    from litedet.models.registry import model_kind

    named = {_model_spec(spec, sizes)[0] for spec in models}
    unused = sorted(set(weights or {}) - named)
    if unused:  # a typo or a forgotten --models entry would time random weights without a word
        raise ValueError(f"--weights for {unused} but --models has no such model ({', '.join(sorted(named)) or 'none'}); "
                         f"add it to --models (e.g. --models {unused[0]})")
    for spec in models:
        name, _ = _model_spec(spec, sizes)
        given = (weights or {}).get(name)
        if not (given and Path(given).suffix.lower() in ENGINE_FILE_SUFFIXES) and model_kind(name) != "detector":
            raise ValueError(f"{name!r} is a {model_kind(name)}, and litedet bench times detectors (exported with "
                             f"their pre- and post-processing); `litedet models` shows each name's kind, and "
                             f"`litedet bench guidelines` times ShuffleNetV2's building blocks")
    out = Path(out_dir) if out_dir is not None else None
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_OUT / "cache"
    notes: list[str] = []
    machine = machine_info(threads, measure=measure_peak)
    dynamic_batch = max(batches) > 1

    # one builder per model@size and peer build: called with (notes, engines, threads) by keyword,
    # once for the single copies and again for every stream copy
    shared = dict(cache=cache, conf=conf, iou=iou, dynamic_batch=dynamic_batch, precision=precision)
    builders: list[SubjectBuilder] = []
    for spec in models:
        name, model_sizes = _model_spec(spec, sizes)
        for size in model_sizes:
            builders.append(functools.partial(_litedet_subjects, name=name, imgsz=size,
                                              weights=(weights or {}).get(name), **shared))
    found, skipped = resolve_peers(peer_names)
    notes += skipped
    for peer in found:
        for variant in peer.variants(sizes):
            builders.append(functools.partial(_peer_subjects, peer=peer, variant=variant, device=device, **shared))
    subjects: list[Subject] = []
    gangs: list[_StreamGang] = []
    try:
        for build in builders:
            if 1 in stream_counts:
                subjects += build(notes=notes, engines=engines, threads=threads)
            subjects += _add_streams(build, engines, threads, stream_counts, notes, gangs)
        if not subjects:
            raise ValueError("no configuration could be opened; see the notes: " + "; ".join(notes))
        rows, interrupted = _measure_subjects(subjects, batches, end_to_end, images, runs, budget_s, warmup,
                                              load_threshold, max_attempts, device, progress, machine, notes)
    finally:
        for gang in gangs:
            gang.close()
    if interrupted and not rows:
        raise KeyboardInterrupt
    notes += raise_peak_to_observed(machine, rows, device)
    notes += speed_swing_notes(rows)
    paths = write_report(rows, out, machine.to_dict(), notes, map_results, command) if out is not None else {}
    return BenchmarkResult(rows, notes, machine.to_dict(), paths, interrupted)


def _measure_subjects(subjects: Sequence[Subject], batches: Sequence[int], end_to_end: bool,
                      images: Sequence[np.ndarray] | None, runs: int, budget_s: float | None, warmup: int,
                      load_threshold: float, max_attempts: int, device: str, progress: bool, machine: Any,
                      notes: list[str]) -> tuple[list[dict[str, Any]], bool]:
    """Every subject timed side by side, one interleaved group per batch size (end to end joins
    the batch-1 group); one row each, and whether Ctrl-C cut the timing short (the rows then
    hold what was measured until then)."""
    from litedet.bench.energy import open_energy_meter

    meter = (lambda: open_energy_meter(device)) if open_energy_meter(device).available else None
    if meter is None:
        notes.append(f"energy: not available on this platform ({device}: no readable RAPL/NVML counter)")
    sync = None
    if device.startswith("cuda"):
        import torch

        sync = torch.cuda.synchronize
    rows: list[dict[str, Any]] = []
    interrupted = False
    # One interleaved group per batch size. End to end joins the batch-1 group, so each model's
    # network and end-to-end figures come from the same rounds: their difference (what pre- and
    # post-processing add) does not take up the machine's drift between two separate groups.
    groups: list[tuple[int, dict[str, Candidate], dict[str, tuple[str, Subject]]]] = []
    rng = np.random.default_rng(0)
    for size_batch in batches:
        candidates, by_key = {}, {}
        for subject in subjects:
            if subject.max_batch is not None and size_batch > subject.max_batch:
                note = f"{subject.variant}@{subject.imgsz} {subject.engine}: fixed batch {subject.max_batch}, batch {size_batch} skipped"
                if note not in notes:
                    notes.append(note)
                continue
            if subject.example is not None:
                tensor = subject.example(size_batch)
            else:
                tensor = rng.random((size_batch, 3, subject.imgsz, subject.imgsz), dtype=np.float32)
            candidates[subject.key] = Candidate(fn=(lambda s=subject, t=tensor: s.network(t)), before=subject.before)
            by_key[subject.key] = ("network", subject)
        groups.append((size_batch, candidates, by_key))
    if end_to_end:
        frames = list(images) if images is not None else load_images()
        group = next((g for g in groups if g[0] == 1), None)
        if group is None:
            group = (1, {}, {})
            groups.append(group)
        for subject in subjects:
            if subject.detect is None:
                notes.append(f"{subject.variant}@{subject.imgsz} {subject.engine}: no end-to-end path on this engine")
                continue
            key = f"{subject.key}|end-to-end"
            group[1][key] = Candidate(fn=_cycling(subject.detect, frames, subject.streams), before=subject.before)
            group[2][key] = ("end-to-end", subject)

    for size_batch, candidates, by_key in groups:
        if not candidates:
            continue
        listed = list(candidates)  # rows keep this order
        # Configurations the report compares (a litedet model and the peers at its engine, threads
        # and size; a model's network and end to end) run close together in every round, within
        # a second: a shared machine whose speed changes between stretches of seconds then times
        # both sides of each ratio alike (report: round-by-round ratios).
        order = sorted(range(len(listed)), key=lambda i: _round_position(by_key[listed[i]], i))
        candidates = {listed[i]: candidates[listed[i]] for i in order}
        modes = sorted({mode for mode, _ in by_key.values()}, key=lambda m: m != "network")
        bar = _progress_bar(progress, len(candidates) * runs, f"{' + '.join(modes)} b{size_batch}")
        counts: dict[str, int] = {}

        def on_chunk(name: str, done: int) -> None:
            delta = done - counts.get(name, 0)  # negative when a disturbed configuration starts again
            if bar is not None and delta > 0:
                bar.update(delta)
            counts[name] = done

        try:
            stats = measure_interleaved(
                candidates, warmup=warmup, min_runs=runs, budget_s=budget_s, synchronize=sync,
                load_threshold=load_threshold, max_attempts=max_attempts, on_chunk=on_chunk, energy_meter=meter,
            )
        except MeasurementInterrupted as stop:  # Ctrl-C: keep the rows of the rounds finished
            stats, interrupted = stop.partial, True
            notes.append(f"interrupted (Ctrl-C) while timing batch {size_batch}: its rows hold the rounds run until "
                         f"then ({len(stats)} of {len(listed)} configurations); later groups were not timed")
        finally:
            if bar is not None:
                bar.close()
        for key in listed:
            if key in stats:
                mode, subject = by_key[key]
                rows.append(_row(subject, mode, size_batch, stats[key], _peak(machine, subject, device)))
        if interrupted:
            break
    return rows, interrupted


def _round_position(entry: tuple[str, Subject], index: int) -> tuple:
    """Where a configuration runs within a round: grouped by engine, threads, copies and input
    size, the network figures before the end-to-end ones, litedet models before peers. Every
    chunk then follows another model's chunk: a chunk right after the same session's would
    start warm (measured: its end to end came out faster than its network)."""
    mode, subject = entry
    return (subject.engine, subject.threads, subject.streams, subject.imgsz, mode != "network",
            subject.kind != "litedet", subject.model, subject.variant, index)


def _peak(machine: Any, subject: Subject, device: str) -> float | None:
    """The measured ceiling (GFLOP/s) a row's achieved GFLOP/s is compared with: the GPU's
    matrix-product peak at the row's precision for torch on CUDA, else the CPU's fp32 peak at
    the row's thread count."""
    if device.startswith("cuda") and subject.engine == "torch":
        tflops = machine.gpu_peak_tflops.get("fp16" if subject.precision in ("fp16", "bf16") else "fp32")
        return None if tflops is None else tflops * 1e3
    return machine.peak_for(subject.threads)


def _cycling(detect: Callable[[Any], Any], frames: Sequence[np.ndarray], per_call: int = 1) -> Callable[[], Any]:
    """Each call detects in the next image (the next ``per_call`` images, as a list, for a
    stream subject), so every configuration sees the same image mix."""
    state = {"i": 0}

    def call() -> Any:
        start = state["i"]
        state["i"] += per_call
        if per_call == 1:
            return detect(frames[start % len(frames)])
        return detect([frames[(start + k) % len(frames)] for k in range(per_call)])

    return call


def _progress_bar(enabled: bool, total: int, desc: str) -> Any:
    if not enabled:
        return None
    from litedet.progress import progress_bar

    return progress_bar(total=total, desc=desc, unit="run", leave=False)
