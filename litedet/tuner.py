"""``litedet tune``: the most accurate detector configuration that meets a latency budget, measured
on this device.

ShuffleNetV2's lesson (Ma et al., 2018, §2: use the direct metric, on the target platform) turned
into a search. A *candidate* is one checkpoint x input size x engine x precision x thread count
the machine supports (bf16 only where the CPU probe reports it, INT8 as ONNX Runtime static QDQ
or OpenVINO NNCF, calibrated on the data's train split); published peers are reference points with their own pre-
and post-processing. Every part is an existing one:

- engine files: ``litedet.export.export_model`` (cached per weights, size and engine), INT8:
  ``litedet.compress.quantize.quantize_onnx_static`` / ``quantize_openvino`` of that engine's export;
- latency: ``bench --end-to-end``'s definition (letterbox + inference + decode + NMS at
  ``conf`` 0.25 / IoU 0.45 through ``litedet.engine.predictor.Predictor``, peers through their
  own pre/post-processing) timed side by side in interleaved rounds with the background-load
  check (``litedet.bench.harness.measure_interleaved``);
- accuracy: ``litedet val``'s evaluator (``litedet.engine.evaluator``: COCOeval, conf 0.001,
  NMS 0.6), peers through ``evaluate_detector`` with their own decode.

Latency comes first for every candidate (cheap); accuracy only for candidates that can still be
on the Pareto front (and, unless ``whole_front``, under the budget), in order of latency: a slower
fp32 build of a network already scored on a faster engine cannot be on the front (fp32 engines
agree within the parity tests' tolerance), and a reduced-precision build is assumed to score no
higher than its fp32 network, so it is skipped once the front is already at least that accurate.
Exports, INT8 models, latencies and scores are cached in ``out/cache``, keyed by (weights hash,
size, engine, precision, threads, data, machine), so a second run with a wider budget or more
sizes measures only what is new.

    import litedet
    result = litedet.tune(["v5lite-s.safetensors"], data="configs/data/coco256.yaml",
                          budget_peer="nanodet-plus-m-416", peers="nanodet-plus", out_dir="runs/tune")
    result.rows, result.choice, result.front
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("runs/tune")
DEFAULT_ENGINES = ("onnxruntime", "openvino", "ncnn")
PRECISIONS = ("fp32", "bf16", "int8")
# precision -> engines that run it (INT8: ONNX Runtime static QDQ and OpenVINO NNCF; bf16:
# OpenVINO's CPU plugin and torch autocast, both only where the CPU has bf16 instructions)
PRECISION_ENGINES = {
    "fp32": ("torch", "onnxruntime", "openvino", "ncnn"),
    "bf16": ("torch", "openvino"),
    "int8": ("onnxruntime", "openvino"),
}
# bench --end-to-end's thresholds: what a deployed detector runs with
LATENCY_CONF, LATENCY_IOU = 0.25, 0.45
CACHE_VERSION = 1


def _cache_version() -> str:
    """The cache's format and the revisions of the exporter and quantizer whose files its latencies
    and scores were measured on: a newer exporter or quantizer measures afresh."""
    from litedet.compress.quantize import QUANTIZE_REVISION
    from litedet.export.formats import EXPORT_REVISION

    return f"{CACHE_VERSION}.{EXPORT_REVISION}.{QUANTIZE_REVISION}"
ENGINE_SHORT = {"onnxruntime": "ORT", "openvino": "OV", "ncnn": "ncnn", "torch": "torch"}


# ------------------------------------------------------------------------------ parsing


def parse_sizes(spec: str | int | Sequence[int]) -> list[int]:
    """``"256:512:32"`` (start:stop:step, stop included), ``"320,416"``, a mix (``"256:320:32,416"``),
    an int or a list -> sorted distinct sizes."""
    if isinstance(spec, int):
        return [spec]
    if not isinstance(spec, str):
        return sorted({int(v) for v in spec})
    sizes: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        try:
            if ":" in part:
                fields = [int(v) for v in part.split(":")]
                if len(fields) not in (2, 3):
                    raise ValueError
                start, stop, step = (*fields, 32) if len(fields) == 2 else fields
                if step <= 0 or stop < start:
                    raise ValueError
                sizes.update(range(start, stop + 1, step))
            else:
                sizes.add(int(part))
        except ValueError:
            raise ValueError(f"--imgsz {spec!r}: give sizes as START:STOP:STEP (stop included) and/or a comma "
                             f"list, e.g. 256:512:32 or 320,416") from None
    if not sizes or min(sizes) < 32:
        raise ValueError(f"--imgsz {spec!r}: sizes must be >= 32")
    return sorted(sizes)


def _csv(values: str | Sequence[Any] | None, cast: Callable[[str], Any] = str) -> list[Any]:
    if values is None:
        return []
    if isinstance(values, (str, int)):
        values = [v for v in str(values).split(",") if v.strip()]
    return [cast(str(v).strip()) for v in values]


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bf16 natively: OpenVINO's CPU plugin capabilities when OpenVINO is
    installed (what its bf16 hint needs), else the AVX-512 BF16 / AMX flags."""
    try:
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # openvino absent or no CPU plugin: fall back to the kernel's flags
        from litedet.bench.machine import cpu_flags

        return bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags()))


def file_hash(*paths: str | os.PathLike) -> str:
    """sha256 (12 hex digits) over the bytes of ``paths`` that exist (weights + their sidecar)."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        if path.is_file():
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:12]


def machine_tag() -> str:
    """The CPU model and its inference-relevant flags: latencies are reused only on the same kind of CPU."""
    from litedet.bench.machine import cpu_flags, cpu_model

    return hashlib.sha256(f"{cpu_model()}|{','.join(cpu_flags())}".encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------ candidates


@dataclass(frozen=True)
class TuneCandidate:
    """One configuration: a litedet checkpoint (``kind="litedet"``) or a published peer build
    (``kind="peer"``, ``weights`` its file, fixed ``imgsz``)."""

    kind: str
    name: str
    weights: str
    weights_tag: str
    imgsz: int
    engine: str
    precision: str
    threads: int
    peer: str | None = None  # peer name as given to --peers
    label: str = ""  # how rows name the checkpoint when two share a model name (default: ``name``)

    @property
    def key(self) -> str:
        key = f"{self.label or self.name}@{self.imgsz} {self.engine} {self.precision} t{self.threads}"
        return f"{key} (published)" if self.kind == "peer" else key

    @property
    def network(self) -> tuple[str, int]:
        """The network (weights and size) this candidate runs: fp32 builds of one network on
        different engines compute the same function."""
        return self.weights_tag, self.imgsz


def enumerate_candidates(
    weights: Sequence[str | os.PathLike],
    sizes: Sequence[int],
    engines: Sequence[str],
    precisions: Sequence[str],
    threads: Sequence[int],
    bf16: bool,
    notes: list[str] | None = None,
) -> list[TuneCandidate]:
    """Every checkpoint x size x engine x precision x threads this machine supports; what is left
    out (a size that is not a stride multiple, bf16 without CPU support, a precision an engine does
    not run) is said once in ``notes``."""
    from litedet.config import find_config, sidecar_path
    from litedet.runtime import ENGINES

    notes = notes if notes is not None else []
    bad = [e for e in engines if e not in ENGINES]
    if bad:
        raise ValueError(f"unknown engine(s) {bad}; choose from {', '.join(ENGINES)}")
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise ValueError(f"unknown precision(s) {bad}; choose from {', '.join(PRECISIONS)}")
    if not threads or min(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {list(threads)}")
    if "bf16" in precisions and not bf16:
        notes.append("bf16 skipped: this CPU has no native bf16 (no AVX-512 BF16 / AMX)")
    for precision in precisions:
        unrun = [e for e in engines if e not in PRECISION_ENGINES[precision]]
        if unrun and (precision != "bf16" or bf16):
            notes.append(f"{precision} runs on {', '.join(e for e in PRECISION_ENGINES[precision] if e in engines) or 'none of the chosen engines'}"
                         f" only; not on {', '.join(unrun)}")
    paths = [Path(p) for p in weights]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"--weights file not found: {path}")
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: tune needs a litedet checkpoint (.safetensors + sidecar) to export at every "
                             f"size; import published weights first with `litedet import`")
    if len({p.resolve() for p in paths}) < len(paths):
        raise ValueError(f"a checkpoint is given twice in --weights: {[str(p) for p in paths]}")
    configs = {path: find_config(path) for path in paths}
    models = [c.model for c in configs.values() if c is not None]
    candidates = []
    for path, config in configs.items():
        if config is None:
            raise FileNotFoundError(f"{path}: no model config beside it; import or train it with litedet")
        stride = config.size_multiple
        off = [s for s in sizes if s % stride]
        if off:
            notes.append(f"{path.name}: sizes {off} skipped (not multiples of its stride {stride})")
        tag = file_hash(path, sidecar_path(path))
        # two checkpoints of one architecture (imported and fine-tuned, say) are told apart by file
        label = f"{config.model}[{path.stem}]" if models.count(config.model) > 1 else ""
        for size in (s for s in sizes if s % stride == 0):
            for engine in engines:
                for precision in precisions:
                    if engine not in PRECISION_ENGINES[precision] or (precision == "bf16" and not bf16):
                        continue
                    for count in threads:
                        candidates.append(TuneCandidate("litedet", config.model, str(path), tag, size, engine,
                                                        precision, count, label=label))
    return candidates


def peer_candidates(peers: Sequence[str], threads: Sequence[int], notes: list[str]) -> list[TuneCandidate]:
    """The published builds of ``peers`` (``litedet.bench.peers``) at their own size and engine;
    absent ones are skipped with a note."""
    from litedet.bench.peers import PublishedPeer, resolve_peers

    found, skipped = resolve_peers(list(peers))
    notes += skipped
    candidates = []
    for peer in found:
        if not isinstance(peer, PublishedPeer):
            notes.append(f"{peer.name}: not a published trained build (random weights have no accuracy); skipped")
            continue
        for variant in peer.variants([]):
            path = peer.path(variant)
            tag = file_hash(path, path.with_suffix(".bin"))
            for count in threads:
                candidates.append(TuneCandidate("peer", variant.variant, str(path), tag, variant.imgsz, peer.engine,
                                                "fp32", count, peer=peer.name))
    return candidates


# ------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class TuneData:
    """Validation images + COCO json for accuracy, the images for latency, calibration for INT8."""

    images: Path
    annotations: Path
    tag: str
    calibration: str | None
    limit: int | None = None

    def image_files(self) -> list[Path]:
        """The validation image files in the annotation file's id order."""
        gt = json.loads(self.annotations.read_text())
        return [self.images / img["file_name"] for img in sorted(gt.get("images", []), key=lambda i: i["id"])]

    def first_image(self) -> Path:
        files = self.image_files()
        if not files:
            raise ValueError(f"{self.annotations}: no image listed")
        return files[0]

    def latency_images(self, count: int) -> list[np.ndarray]:
        """The first ``count`` readable validation images (BGR), in the annotation file's id order."""
        from litedet.data.sources import read_image

        frames = []
        for file in self.image_files():
            try:
                frames.append(read_image(file))
            except (OSError, ValueError):
                continue
            if len(frames) == count:
                break
        if not frames:
            raise FileNotFoundError(f"no readable image of {self.annotations} under {self.images}")
        return frames


def resolve_data(data: str | os.PathLike | None, images: str | os.PathLike | None,
                 annotations: str | os.PathLike | None, calib: str | os.PathLike | None, cache: Path,
                 limit: int | None = None) -> TuneData:
    """``data`` (a dataset YAML: its val split scored, its train split calibrates INT8) or
    ``images`` + ``annotations`` (COCO json; INT8 then needs ``calib``)."""
    if bool(data) == bool(images or annotations):
        raise ValueError("give either data (a dataset YAML) or both images and annotations")
    if data:
        from litedet.data.datasets import load_data_config

        data = Path(data)
        dataset = load_data_config(data).load_split("val")
        if not len(dataset):
            raise ValueError(f"{data}: the val split has no image")
        folder = cache / "data" / hashlib.sha256(str(data.resolve()).encode()).hexdigest()[:12]
        images_dir, annotations_path = dataset.coco_ground_truth(folder)
        calibration = str(calib) if calib else str(data)
    else:
        if not (images and annotations):
            raise ValueError("images and annotations go together (or give a dataset YAML)")
        images_dir, annotations_path = Path(images), Path(annotations)
        if not images_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {images_dir}")
        if not annotations_path.is_file():
            raise FileNotFoundError(f"annotations not found: {annotations_path}")
        calibration = str(calib) if calib else None
    tag = file_hash(annotations_path) + hashlib.sha256(f"{Path(images_dir).resolve()}|{limit}".encode()).hexdigest()[:6]
    return TuneData(Path(images_dir), Path(annotations_path), tag, calibration, limit)


# ------------------------------------------------------------------------------ cache


class TuneCache:
    """``cache/results.json``: latency per (weights, size, engine, precision, threads, machine) and
    accuracy per (weights, size, engine, precision, data); exports and INT8 models live beside it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "results.json"
        self.entries: dict[str, dict[str, Any]] = {"latency": {}, "accuracy": {}}
        if self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{self.path}: unreadable tune cache ({err}); delete it to start afresh") from None
            if loaded.get("version") == _cache_version():
                self.entries = {"latency": loaded.get("latency", {}), "accuracy": loaded.get("accuracy", {})}

    @staticmethod
    def latency_key(c: TuneCandidate, machine: str) -> str:
        return f"{c.weights_tag}|{c.imgsz}|{c.engine}|{c.precision}|t{c.threads}|{machine}"

    @staticmethod
    def accuracy_key(c: TuneCandidate, data: TuneData) -> str:
        return f"{c.weights_tag}|{c.imgsz}|{c.engine}|{c.precision}|{data.tag}"

    def save(self) -> None:
        from litedet.config import write_text_atomic

        write_text_atomic(self.path, json.dumps({"version": _cache_version(), **self.entries}, indent=1))


# ------------------------------------------------------------------------------ measuring


class Measurer(Protocol):
    """What ``tune`` measures with; ``DeviceMeasurer`` measures on this machine (tests pass a fake)."""

    def latency(self, candidates: Sequence[TuneCandidate]) -> dict[str, dict[str, Any]]:
        """End-to-end latency stats (``LatencyStats.to_dict()``) per candidate key, measured side by side."""

    def accuracy(self, candidate: TuneCandidate) -> dict[str, Any]:
        """``{"map50_95", "map50", "images"}`` on the validation data."""

    def engine_file(self, candidate: TuneCandidate) -> Path:
        """The deployable engine file (with its sidecar) the candidate runs."""


class DeviceMeasurer:
    """Exports, quantizes, times and scores candidates on this machine, caching files in ``cache``."""

    def __init__(self, cache: Path, data: TuneData, runs: int = 100, warmup: int = 10, budget_s: float | None = None,
                 load_threshold: float | None = None, max_attempts: int = 2, latency_images: int = 16,
                 calibration_images: int = 64, progress: bool = True) -> None:
        from litedet.bench.harness import DEFAULT_LOAD_THRESHOLD

        self.cache = cache
        self.data = data
        self.runs = runs
        self.warmup = warmup
        self.budget_s = budget_s
        self.load_threshold = DEFAULT_LOAD_THRESHOLD if load_threshold is None else load_threshold
        self.max_attempts = max_attempts
        self.latency_images = latency_images
        self.calibration_images = calibration_images
        self.progress = progress

    # -- engine files
    def engine_file(self, c: TuneCandidate) -> Path:
        if c.kind == "peer":
            return Path(c.weights)
        from litedet.bench.run import _cached_export
        from litedet.export.api import export_model

        folder = self.cache / "models" / f"{c.name}-{c.weights_tag}" / str(c.imgsz)
        if c.engine == "torch":
            return self._torch_checkpoint(c, folder)
        fp32 = _cached_export(export_model, Path(c.weights), c.engine, c.imgsz, folder / c.engine, False)
        if c.precision != "int8":
            return fp32
        if not self.data.calibration:
            raise ValueError("int8 needs calibration images: give a dataset YAML (its train split calibrates) or calib=FOLDER")
        from litedet.compress.quantize import QUANTIZE_REVISION, quantize_onnx_static, quantize_openvino
        from litedet.config import sidecar_path

        calib_tag = hashlib.sha256(f"{self.data.calibration}|{self.calibration_images}".encode()).hexdigest()[:8]
        # ONNX Runtime: static QDQ; OpenVINO: NNCF (its default preset), each from its own fp32 export
        suffix, quantizer = (".xml", quantize_openvino) if c.engine == "openvino" else (".onnx", quantize_onnx_static)
        out = folder / f"int8-{c.engine}-{calib_tag}-r{QUANTIZE_REVISION}" / f"model_int8{suffix}"
        if not (out.is_file() and sidecar_path(out).is_file()):  # the sidecar is written last
            out.parent.mkdir(parents=True, exist_ok=True)
            quantizer(fp32, out, self.data.calibration, num_images=self.calibration_images)
        return out

    def _torch_checkpoint(self, c: TuneCandidate, folder: Path) -> Path:
        """The checkpoint with its input size set to ``c.imgsz`` (the sidecar names the size)."""
        import dataclasses

        from litedet.models.checkpoint import load_detector, save_checkpoint_weights

        path = folder / "torch" / f"{c.name}.safetensors"
        if not path.is_file():
            model, _ = load_detector(Path(c.weights))
            save_checkpoint_weights(model, path, dataclasses.replace(model.config, input_size=(c.imgsz, c.imgsz)))
        return path

    def prepare(self, candidates: Sequence[TuneCandidate]) -> None:
        """Export / quantize every candidate's engine file up front (cached), with a progress bar."""
        from litedet.progress import progress_bar

        for c in progress_bar(candidates, enabled=self.progress, desc="tune: export/int8", unit="model", leave=False):
            self.engine_file(c)

    # -- detection callables
    def _detector(self, c: TuneCandidate, conf: float, iou: float) -> tuple[Callable[[np.ndarray], Any], Callable[[], None] | None]:
        from litedet.bench.run import _peer_detector, _torch_threads

        if c.kind == "peer":
            from litedet.bench.peers import get_peer

            peer = get_peer(c.peer or c.name)
            variant = next(v for v in peer.variants([]) if v.variant == c.name)
            runner = peer.open(variant, c.engine, c.threads, self.cache / "peers")
            return _peer_detector(peer, variant, runner, c.threads, c.engine, conf, iou), None
        from litedet.engine.predictor import Predictor
        from litedet.runtime import open_backend

        backend = open_backend(self.engine_file(c), engine=c.engine, threads=c.threads,
                               precision="fp32" if c.precision == "int8" else c.precision)
        predictor = Predictor(backend, conf=conf, iou=iou, auto=False)
        return (lambda image: predictor.predict(image)), (_torch_threads(c.threads) if c.engine == "torch" else None)

    def latency(self, candidates: Sequence[TuneCandidate]) -> dict[str, dict[str, Any]]:
        from litedet.progress import progress_bar

        from litedet.bench.harness import Candidate, measure_interleaved
        from litedet.bench.run import _cycling

        frames = self.data.latency_images(self.latency_images)
        configs = {}
        for c in candidates:
            detect, before = self._detector(c, LATENCY_CONF, LATENCY_IOU)
            configs[c.key] = Candidate(fn=_cycling(detect, frames), before=before)
        bar = progress_bar(enabled=self.progress, total=len(configs) * self.runs, desc="tune: latency", unit="run", leave=False)
        counts: dict[str, int] = {}

        def on_chunk(name: str, done: int) -> None:
            delta = done - counts.get(name, 0)  # negative when a disturbed configuration starts again
            if delta > 0:
                bar.update(delta)
            counts[name] = done

        try:
            stats = measure_interleaved(configs, warmup=self.warmup, min_runs=self.runs, budget_s=self.budget_s,
                                        load_threshold=self.load_threshold, max_attempts=self.max_attempts,
                                        on_chunk=on_chunk)
        finally:
            bar.close()
        return {key: value.to_dict() for key, value in stats.items()}

    def accuracy(self, c: TuneCandidate) -> dict[str, Any]:
        from litedet.engine.evaluator import evaluate_coco, evaluate_detector

        if c.kind == "peer":
            from litedet.config import COCO_NAMES

            detect, _ = self._detector(c, 0.001, 0.6)

            def peer_detect(image: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
                found = detect(image)
                return found.boxes, found.scores, found.classes

            result = evaluate_detector(peer_detect, COCO_NAMES, self.data.images, self.data.annotations,
                                       progress=self.progress, limit=self.data.limit)
        else:
            from litedet.runtime import open_backend

            backend = open_backend(self.engine_file(c), engine=c.engine, threads=c.threads,
                                   precision="fp32" if c.precision == "int8" else c.precision)
            try:
                result = evaluate_coco(backend, self.data.images, self.data.annotations, progress=self.progress,
                                       limit=self.data.limit)
            finally:
                backend.close()
        return result.to_dict()


# ------------------------------------------------------------------------------ decisions


def pareto_front(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows not dominated in (lower ``median_ms``, higher ``map50_95``): sorted by latency, each
    strictly more accurate than every faster one. Rows without a score are ignored."""
    scored = [r for r in rows if r.get("map50_95") is not None and r.get("median_ms") is not None]
    front: list[dict[str, Any]] = []
    best = -math.inf
    for row in sorted(scored, key=lambda r: (r["median_ms"], -r["map50_95"])):
        if row["map50_95"] > best:
            front.append(row)
            best = row["map50_95"]
    return front


@dataclass
class Choice:
    """The chosen row (None when nothing meets the budget) and the sentence that explains it."""

    row: dict[str, Any] | None
    budget_ms: float
    message: str
    miss_ms: float | None = None  # when nothing meets the budget: how far the fastest is over it


def within_budget(row: dict[str, Any], budget_ms: float) -> bool:
    """Whether ``row`` meets the budget. Against a budget peer timed in the same run
    (``row["vs_budget_peer"]``, set by ``pair_with_budget_peer``) the verdict is round by round:
    the peer's time over the row's, median of the rounds' own ratios, at least 1. Otherwise the
    row's median is compared with ``budget_ms``."""
    paired = row.get("vs_budget_peer")
    if paired is not None:
        return paired["ratio"] >= 1.0
    return row["median_ms"] <= budget_ms


def _paired_words(row: dict[str, Any]) -> str:
    paired = row.get("vs_budget_peer")
    if paired is None:
        return ""
    return (f"; round by round the budget peer takes {paired['ratio']:.2f}x its time "
            f"(p10-p90 {paired['low']:.2f}-{paired['high']:.2f})")


def choose(rows: Sequence[dict[str, Any]], budget_ms: float) -> Choice:
    """The most accurate scored litedet row within the budget (``within_budget``; ties: the
    faster); if none is, by how much the fastest litedet row misses the budget."""
    mine = [r for r in rows if r["kind"] == "litedet" and r.get("median_ms") is not None]
    if not mine:
        raise ValueError("no litedet configuration was measured; see the notes")
    within = [r for r in mine if within_budget(r, budget_ms) and r.get("map50_95") is not None]
    if within:
        best = max(within, key=lambda r: (r["map50_95"], -r["median_ms"]))
        return Choice(best, budget_ms, f"{best['key']}: mAP50-95 {best['map50_95']:.3f} at {best['median_ms']:.2f} ms "
                                        f"(budget {budget_ms:.2f} ms{_paired_words(best)})")
    fastest = min(mine, key=lambda r: r["median_ms"])
    miss = fastest["median_ms"] - budget_ms
    return Choice(None, budget_ms, f"nothing meets the budget of {budget_ms:.2f} ms: the fastest configuration, "
                                   f"{fastest['key']}, takes {fastest['median_ms']:.2f} ms, {miss:.2f} ms "
                                   f"({miss / budget_ms:.0%}) over{_paired_words(fastest)}", miss)


def pair_with_budget_peer(rows: Iterable[dict[str, Any]], reference: dict[str, Any]) -> int:
    """Set ``row["vs_budget_peer"]`` (``litedet.bench.harness.paired_ratio``: the ``reference``
    peer's time over the row's, round by round) on every litedet row timed in the same
    interleaved run as ``reference``; returns how many rows were paired. On a machine whose speed
    swings between stretches of seconds the two medians each mix fast and slow stretches, while
    each round's ratio compares the two under the same conditions."""
    from litedet.bench.harness import paired_ratio

    paired = 0
    for row in rows:
        row["vs_budget_peer"] = None
        if (row["kind"] != "litedet" or not row.get("rounds") or not reference.get("rounds")
                or row.get("measured_at") is None or row.get("measured_at") != reference.get("measured_at")):
            continue
        row["vs_budget_peer"] = paired_ratio(reference["rounds"], row["rounds"])
        paired += row["vs_budget_peer"] is not None
    return paired


def plan_accuracy(rows: Sequence[dict[str, Any]], budget_ms: float, whole_front: bool,
                  score: Callable[[dict[str, Any]], float | None],
                  on_visit: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Score, in order of latency, only rows that can still be on the front (and within the budget,
    ``within_budget``, unless ``whole_front``); ``score(row)`` measures (or reads from the cache) and returns mAP50-95.
    Sets ``row["accuracy"]`` to why a row was or was not scored; ``on_visit(row)`` follows each
    decision (progress bars)."""
    best = -math.inf
    fp32_score: dict[tuple[str, int], tuple[float, str]] = {}

    def decide(row: dict[str, Any]) -> None:
        nonlocal best
        network = (row["weights_tag"], row["imgsz"])
        if not whole_front and not within_budget(row, budget_ms):
            row["accuracy"] = "not scored: over the budget"
            return
        if row["precision"] == "fp32" and network in fp32_score:
            row["accuracy"] = f"not scored: same fp32 network as the faster {fp32_score[network][1]}"
            return
        bound = fp32_score[network][0] if row["precision"] != "fp32" and network in fp32_score else math.inf
        if bound <= best:
            row["accuracy"] = f"not scored: its fp32 network scores {bound:.3f}, the front is already at {best:.3f}"
            return
        value = score(row)
        row["accuracy"] = "scored"
        if value is None:
            return
        if row["precision"] == "fp32":
            fp32_score[network] = (value, row["key"])
        best = max(best, value)

    for row in sorted((r for r in rows if r["kind"] == "litedet"), key=lambda r: r["median_ms"]):
        decide(row)
        if on_visit is not None:
            on_visit(row)


# ------------------------------------------------------------------------------ the run


@dataclass
class TuneResult:
    """Every candidate's row, the Pareto front, the choice, the notes and the files written."""

    rows: list[dict[str, Any]]
    front: list[dict[str, Any]]
    choice: Choice
    notes: list[str]
    commands: list[str] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # measured now vs read from the cache
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per phase

    def to_dict(self) -> dict[str, Any]:
        return {"budget_ms": self.choice.budget_ms, "choice": self.choice.row, "message": self.choice.message,
                "miss_ms": self.choice.miss_ms, "front": [r["key"] for r in self.front], "rows": self.rows,
                "commands": self.commands, "notes": self.notes, "machine": self.machine, "counts": self.counts,
                "seconds": self.seconds}


def _row(c: TuneCandidate) -> dict[str, Any]:
    return {"key": c.key, "kind": c.kind, "model": c.label or c.name, "imgsz": c.imgsz, "engine": c.engine,
            "precision": c.precision, "threads": c.threads, "weights": c.weights, "weights_tag": c.weights_tag,
            "peer": c.peer, "median_ms": None, "p90_ms": None, "n": None, "other_load": None, "disturbed": None,
            "measured_at": None, "rounds": None, "map50_95": None, "map50": None, "accuracy": "not scored",
            "on_front": False, "within_budget": None, "vs_budget_peer": None}


def tune(
    weights: Sequence[str | os.PathLike] | str,
    data: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    annotations: str | os.PathLike | None = None,
    budget_ms: float | None = None,
    min_fps: float | None = None,
    budget_peer: str | None = None,
    imgsz: str | Sequence[int] = "320:512:32",
    engines: str | Sequence[str] = DEFAULT_ENGINES,
    precisions: str | Sequence[str] = PRECISIONS,
    threads: str | Sequence[int] | None = None,
    peers: str | Sequence[str] = ("nanodet-plus", "v5lite-ncnn"),
    out_dir: str | os.PathLike | None = DEFAULT_OUT,
    calib: str | os.PathLike | None = None,
    runs: int = 100,
    warmup: int = 10,
    latency_budget_s: float | None = None,
    load_threshold: float | None = None,
    max_attempts: int = 2,
    whole_front: bool = False,
    remeasure: bool = False,
    val_limit: int | None = None,
    progress: bool = True,
    measurer: Measurer | None = None,
    command: str | None = None,
) -> TuneResult:
    """Find the most accurate configuration of ``weights`` that meets the latency budget here.

    The budget is ``budget_ms``, ``1000 / min_fps`` or, with ``budget_peer`` (a peer build name
    such as ``nanodet-plus-m-416``), that peer's end-to-end latency measured in this run.
    ``imgsz``: ``"256:512:32"`` (stop included) and/or a list; ``engines``, ``precisions``
    (fp32, bf16, int8), ``threads`` (default: every core) as lists or comma strings. Accuracy on
    ``data`` (a dataset YAML: val split scored, train split calibrates INT8) or ``images`` +
    ``annotations`` (COCO json; INT8 then needs ``calib``). ``whole_front`` scores front
    candidates over the budget too; ``remeasure`` re-times every candidate in this run instead of
    reusing cached latencies. ``runs`` timed runs per candidate after ``warmup``
    (``latency_budget_s`` caps the interleaved timing, at least 10 runs each). With ``out_dir``,
    writes ``report.md``, ``front.json``, ``pareto.png`` and ``best/`` (the chosen engine file +
    sidecar), and caches in ``out_dir/cache``.
    """
    given = [v is not None for v in (budget_ms, min_fps, budget_peer)]
    if sum(given) != 1:
        raise ValueError("give exactly one budget: budget_ms, min_fps or budget_peer")
    if budget_ms is not None and budget_ms <= 0:
        raise ValueError(f"the budget must be > 0 ms, got {budget_ms}")
    if min_fps is not None and min_fps <= 0:
        raise ValueError(f"the minimum FPS must be > 0, got {min_fps}")
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    if val_limit is not None and val_limit < 1:
        raise ValueError(f"val_limit must be >= 1 (or left out for every validation image), got {val_limit}")
    weights = [weights] if isinstance(weights, (str, os.PathLike)) else list(weights)
    if not weights:
        raise ValueError("give at least one checkpoint (--weights)")
    sizes = parse_sizes(imgsz)
    engines = _csv(engines)
    precisions = _csv(precisions)
    threads = _csv(threads, int) if threads is not None else [os.cpu_count() or 1]
    peers = _csv(peers)
    out = Path(out_dir) if out_dir is not None else None
    cache_dir = (out / "cache") if out is not None else Path(DEFAULT_OUT / "cache")
    cache_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    bf16 = "bf16" in precisions and cpu_supports_bf16()
    candidates = enumerate_candidates(weights, sizes, engines, precisions, threads, bf16, notes)
    candidates += peer_candidates(peers, threads, notes)
    if budget_peer is not None and not any(c.kind == "peer" and c.name == budget_peer for c in candidates):
        names = sorted({c.name for c in candidates if c.kind == "peer"})
        raise ValueError(f"budget peer {budget_peer!r} is not among the measured peers ({', '.join(names) or 'none'}); "
                         f"add its peer to --peers")
    if not any(c.kind == "litedet" for c in candidates):
        raise ValueError("no litedet configuration to try; see: " + "; ".join(notes))
    tune_data = resolve_data(data, images, annotations, calib, cache_dir, val_limit)
    if "int8" in precisions and tune_data.calibration is None:
        raise ValueError("int8 needs calibration images: give --data data.yaml (its train split calibrates) or --calib DIR")
    cache = TuneCache(cache_dir)
    machine = machine_tag()
    seconds: dict[str, float] = {}
    started = phase = time.perf_counter()
    if measurer is None:
        device = DeviceMeasurer(cache_dir, tune_data, runs=runs, warmup=warmup, budget_s=latency_budget_s,
                                load_threshold=load_threshold, max_attempts=max_attempts, progress=progress)
        device.prepare([c for c in candidates if c.kind == "litedet"])
        measurer = device
    seconds["export"], phase = time.perf_counter() - phase, time.perf_counter()

    rows = {c.key: _row(c) for c in candidates}
    by_key = {c.key: c for c in candidates}
    counts = {"latency_measured": 0, "latency_cached": 0, "accuracy_measured": 0, "accuracy_cached": 0}
    # 1. latency: everything not cached, side by side in one interleaved run
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    to_time = [c for c in candidates if remeasure or TuneCache.latency_key(c, machine) not in cache.entries["latency"]]
    if to_time:
        measured = measurer.latency(to_time)
        for c in to_time:
            cache.entries["latency"][TuneCache.latency_key(c, machine)] = {**measured[c.key], "measured_at": stamp}
        cache.save()
    seconds["latency"], phase = time.perf_counter() - phase, time.perf_counter()
    counts["latency_measured"] = len(to_time)
    counts["latency_cached"] = len(candidates) - len(to_time)
    for c in candidates:
        stats = cache.entries["latency"][TuneCache.latency_key(c, machine)]
        rows[c.key].update({k: stats.get(k) for k in ("median_ms", "p90_ms", "n", "other_load", "disturbed", "measured_at",
                                                      "rounds")})
    runs_seen = sorted({r["measured_at"] for r in rows.values()})
    if len(runs_seen) > 1:
        notes.append(f"latencies come from {len(runs_seen)} runs ({', '.join(runs_seen)}): figures from different runs "
                     f"compare only roughly (BENCHMARKS.md: up to 15 % drift); --remeasure times them all in one run")

    # 2. budget
    if budget_peer is not None:
        peer_rows = [r for r in rows.values() if r["kind"] == "peer" and r["model"] == budget_peer]
        reference = min(peer_rows, key=lambda r: r["median_ms"])
        budget = reference["median_ms"]
        budget_source = f"{budget_peer}'s end-to-end latency measured in this run"
        paired = pair_with_budget_peer(rows.values(), reference)
        if paired:
            budget_source += (f"; {paired} configuration(s) timed beside it are judged round by round (its time over "
                              f"theirs, median of the rounds' ratios, at least 1)")
    else:
        budget = float(budget_ms) if budget_ms is not None else 1000.0 / float(min_fps)
        budget_source = f"{budget_ms} ms" if budget_ms is not None else f"{min_fps} FPS"

    # 3. accuracy, only where it can matter
    def score(row: dict[str, Any]) -> float | None:
        c = by_key[row["key"]]
        key = TuneCache.accuracy_key(c, tune_data)
        if key in cache.entries["accuracy"]:
            counts["accuracy_cached"] += 1
        else:
            cache.entries["accuracy"][key] = measurer.accuracy(c)
            cache.save()
            counts["accuracy_measured"] += 1
        result = cache.entries["accuracy"][key]
        row.update(map50_95=result["map50_95"], map50=result["map50"])
        return result["map50_95"]

    from litedet.progress import progress_bar

    bar = progress_bar(enabled=progress, total=len(rows), desc="tune: accuracy", unit="config", leave=False)
    for row in rows.values():
        if row["kind"] == "peer":
            score(row)
            row["accuracy"] = "scored"
            bar.update()
    try:
        plan_accuracy(list(rows.values()), budget, whole_front, score, on_visit=lambda row: bar.update())
    finally:
        bar.close()
    seconds["accuracy"] = time.perf_counter() - phase
    for row in rows.values():
        row["within_budget"] = within_budget(row, budget)
    front = pareto_front(r for r in rows.values() if r["kind"] == "litedet")
    for row in front:
        row["on_front"] = True
    choice = choose(list(rows.values()), budget)
    if budget_peer is not None:
        notes += _goal_notes(list(rows.values()), choice, budget_peer)
    all_rows = sorted(rows.values(), key=lambda r: (r["kind"] != "peer", r["median_ms"]))
    seconds["total"] = time.perf_counter() - started
    result = TuneResult(all_rows, front, choice, notes, counts=counts, seconds=seconds,
                        machine=_machine(threads, budget_source))
    if out is not None:
        if choice.row is not None:
            best = write_bundle(measurer.engine_file(by_key[choice.row["key"]]), out / "best")
            result.commands = deploy_commands(best, by_key[choice.row["key"]], tune_data)
            result.paths["best"] = best
        result.paths.update(write_report(result, out, command))
    return result


def _goal_notes(rows: Sequence[dict[str, Any]], choice: Choice, peer: str) -> list[str]:
    """How the choice compares with the budget peer's accuracy, and what the nearest litedet
    configuration that reaches it costs."""
    reference = next(r for r in rows if r["kind"] == "peer" and r["model"] == peer)
    if reference["map50_95"] is None:
        return []
    notes = []
    if choice.row is not None and choice.row["map50_95"] is not None:
        gap = choice.row["map50_95"] - reference["map50_95"]
        verdict = "meets" if gap >= 0 else "misses"
        notes.append(f"goal: the choice {verdict} {peer}'s mAP50-95 {reference['map50_95']:.3f} at its latency "
                     f"({choice.row['map50_95']:.3f}, {gap:+.3f})")
        if gap >= 0:
            return notes
    reaching = [r for r in rows if r["kind"] == "litedet" and r["map50_95"] is not None
                and r["map50_95"] >= reference["map50_95"]]
    if reaching:
        best = min(reaching, key=lambda r: r["median_ms"])
        notes.append(f"the fastest scored litedet configuration reaching {reference['map50_95']:.3f} is {best['key']} "
                     f"(mAP50-95 {best['map50_95']:.3f}) at {best['median_ms']:.2f} ms, "
                     f"{best['median_ms'] - reference['median_ms']:+.2f} ms against {peer}")
    elif any(r["kind"] == "litedet" and r["accuracy"] == "not scored: over the budget" for r in rows):
        notes.append(f"no scored litedet configuration reaches {reference['map50_95']:.3f}; configurations over the "
                     f"budget were not scored (whole_front scores them and shows which one reaches it, at what latency)")
    else:
        top = max((r for r in rows if r["kind"] == "litedet" and r["map50_95"] is not None),
                  key=lambda r: r["map50_95"], default=None)
        if top is not None:
            notes.append(f"no scored litedet configuration reaches {reference['map50_95']:.3f}; the most accurate is "
                         f"{top['key']} ({top['map50_95']:.3f}): accuracy, not speed, is the limit (larger inputs or "
                         f"a better-trained checkpoint)")
    return notes


def _machine(threads: Sequence[int], budget_source: str) -> dict[str, Any]:
    from litedet.bench.machine import cpu_flags, cpu_model, engine_versions

    # OpenMP waiting (ncnn's libgomp) changes ncnn's latency on a busy machine by an order of magnitude
    environment = {name: os.environ[name] for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")
                   if name in os.environ}
    return {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "logical_cpus": os.cpu_count(), "threads": list(threads),
            "engines": engine_versions(), "budget": budget_source, "environment": environment}


# ------------------------------------------------------------------------------ outputs


def write_bundle(engine_file: Path, folder: Path) -> Path:
    """Copy an engine file, its companion (``.bin``) and its sidecar into ``folder`` (emptied
    first); returns the engine file's path there."""
    from litedet.config import sidecar_path

    engine_file = Path(engine_file)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    companions = [engine_file, sidecar_path(engine_file)]
    if engine_file.suffix in (".xml", ".param"):
        companions.append(engine_file.with_suffix(".bin"))
    for path in companions:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing beside {engine_file}; cannot write the bundle")
        shutil.copy2(path, folder / path.name)
    return folder / engine_file.name


def deploy_commands(best: Path, c: TuneCandidate, data: TuneData) -> list[str]:
    """The ``litedet detect`` command that runs the bundle, and the ``litedet bench`` command that
    times it (bench opens engine files at fp32, so a bf16 choice is timed by detect's summary)."""
    import shlex

    precision = f" --precision {c.precision}" if c.precision == "bf16" else ""
    # ncnn was timed with this OpenMP waiting; run it the same way (see docs/tune.md)
    wait = os.environ.get("OMP_WAIT_POLICY")
    env = f"OMP_WAIT_POLICY={wait} " if wait and c.engine == "ncnn" else ""
    source = data.first_image().parent
    commands = [f"{env}litedet detect --weights {shlex.quote(str(best))} --threads {c.threads}{precision} "
                f"--source {shlex.quote(str(source))}"]
    if c.precision != "bf16" and c.engine != "torch":
        commands.append(f"{env}litedet bench --models {c.name} --weights {c.name}={shlex.quote(str(best))} "
                        f"--engines {c.engine} --threads {c.threads} --end-to-end --peers nanodet-plus")
    return commands


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def markdown_report(result: TuneResult, command: str | None = None) -> str:
    """The report: budget, choice, commands, the front, every candidate, notes."""
    budget = result.choice.budget_ms
    lines = ["# litedet tune", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    m = result.machine
    lines += [f"Machine: {m.get('cpu')} ({m.get('logical_cpus')} logical CPUs), threads {m.get('threads')}; "
              f"engines {', '.join(f'{k} {v}' for k, v in m.get('engines', {}).items())}"
              + "".join(f"; {k}={v}" for k, v in m.get("environment", {}).items()) + ".", "",
              f"Budget: **{budget:.2f} ms** end to end ({m.get('budget')}).", ""]
    if result.choice.row is not None:
        lines += [f"**Choice:** {result.choice.message}.", ""]
    else:
        lines += [f"**No choice:** {result.choice.message}.", ""]
    if result.commands:
        lines += ["```bash", *result.commands, "```", ""]
    header = "| configuration | end-to-end median ms | p90 ms | mAP50-95 | mAP50 | other load % | |"
    rule = "|---|---|---|---|---|---|---|"

    def line(r: dict[str, Any]) -> str:
        mark = "chosen" if result.choice.row is r else ("front" if r["on_front"] else "")
        if r["kind"] == "peer":
            mark = "peer"
        return (f"| {r['key']} | {_fmt(r['median_ms'])} | {_fmt(r['p90_ms'])} | {_fmt(r['map50_95'], '.3f')} | "
                f"{_fmt(r['map50'], '.3f')} | {_fmt(r['other_load'], '.0f')} | {mark} |")

    lines += ["## Pareto front (latency vs mAP50-95)", "", header, rule, *[line(r) for r in result.front]]
    lines += ["", "## Peers (reference points, own pre/post-processing)", "", header, rule,
              *[line(r) for r in result.rows if r["kind"] == "peer"]]
    paired = any(r.get("vs_budget_peer") for r in result.rows)
    lines += ["", "## Every candidate", "",
              "| configuration | median ms | p90 ms | mAP50-95 | within budget | accuracy |"
              + (" budget peer's time / this, round by round (p10-p90) |" if paired else ""),
              "|---|---|---|---|---|---|" + ("---|" if paired else "")]
    for r in result.rows:
        if r["kind"] == "litedet":
            ratio = r.get("vs_budget_peer")
            extra = (f" {ratio['ratio']:.2f}x ({ratio['low']:.2f}-{ratio['high']:.2f}) |" if ratio else " — |") if paired else ""
            lines.append(f"| {r['key']} | {_fmt(r['median_ms'])} | {_fmt(r['p90_ms'])} | {_fmt(r['map50_95'], '.3f')} | "
                         f"{'yes' if r['within_budget'] else 'no'} | {r['accuracy']} |{extra}")
    loads = [r["other_load"] for r in result.rows if r["other_load"] is not None]
    lines += ["", "## How it was measured", "",
              "End-to-end latency as `litedet bench --end-to-end` measures it (letterbox + inference + decode + NMS, "
              "conf 0.25, IoU 0.45) on the first validation images, every candidate timed side by side in "
              "interleaved rounds; median and p90 per candidate. Accuracy: `litedet val`'s COCO evaluator "
              "(conf 0.001, NMS IoU 0.6), peers with their own pre/post-processing.",
              f"Other processes used {min(loads):.0f}-{max(loads):.0f} % of the machine during the timing "
              f"(median {float(np.median(loads)):.0f} %)." if loads else "Background load: not readable here.",
              f"Measured now / read from the cache: latency {result.counts.get('latency_measured', 0)} / "
              f"{result.counts.get('latency_cached', 0)}, accuracy {result.counts.get('accuracy_measured', 0)} / "
              f"{result.counts.get('accuracy_cached', 0)}.",
              "Wall time: " + ", ".join(f"{name} {value / 60:.1f} min" for name, value in result.seconds.items()) + "."]
    if result.notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in result.notes]]
    return "\n".join(lines) + "\n"


def plot_pareto(result: TuneResult, path: Path) -> Path:
    """Latency vs mAP50-95: every scored candidate, the front, the choice, the budget line, peers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    scored = [r for r in result.rows if r["kind"] == "litedet" and r["map50_95"] is not None]
    markers = {"onnxruntime": "o", "openvino": "s", "ncnn": "^", "torch": "D"}
    for engine, marker in markers.items():
        pts = [r for r in scored if r["engine"] == engine]
        if pts:
            ax.scatter([r["median_ms"] for r in pts], [r["map50_95"] for r in pts], marker=marker, s=22,
                       color="0.6", label=f"{engine}")
    front = result.front
    ax.plot([r["median_ms"] for r in front], [r["map50_95"] for r in front], "-o", color="tab:blue", ms=5,
            label="Pareto front")
    for r in front:
        ax.annotate(f"{r['model']}@{r['imgsz']} {ENGINE_SHORT.get(r['engine'], r['engine'])} {r['precision']}",
                    (r["median_ms"], r["map50_95"]),
                    fontsize=6, xytext=(3, -8), textcoords="offset points")
    for r in (r for r in result.rows if r["kind"] == "peer" and r["map50_95"] is not None):
        ax.scatter([r["median_ms"]], [r["map50_95"]], marker="*", s=120, color="tab:red", zorder=5)
        ax.annotate(r["model"], (r["median_ms"], r["map50_95"]), fontsize=7, color="tab:red",
                    xytext=(4, 4), textcoords="offset points")
    if result.choice.row is not None:
        c = result.choice.row
        ax.scatter([c["median_ms"]], [c["map50_95"]], s=160, facecolors="none", edgecolors="tab:green", linewidths=2,
                   zorder=6, label="chosen")
    ax.axvline(result.choice.budget_ms, color="tab:orange", ls="--", label=f"budget {result.choice.budget_ms:.2f} ms")
    loads = [r["other_load"] for r in result.rows if r["other_load"] is not None]
    load = f", other load {float(np.median(loads)):.0f} %" if loads else ""
    ax.set_title(f"{result.machine.get('cpu', '')}, {'/'.join(map(str, result.machine.get('threads', [])))} threads"
                 f"{load}", fontsize=9)
    ax.set_xlabel("end-to-end latency, median ms (this machine)")
    ax.set_ylabel("mAP50-95")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(result: TuneResult, out: Path, command: str | None = None) -> dict[str, Path]:
    """``report.md``, ``front.json`` and ``pareto.png`` in ``out``."""
    from litedet.config import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    paths = {"report": out / "report.md", "front": out / "front.json"}
    write_text_atomic(paths["report"], markdown_report(result, command))
    write_text_atomic(paths["front"], json.dumps(result.to_dict(), indent=1, default=str))
    try:
        paths["plot"] = plot_pareto(result, out / "pareto.png")
    except ImportError as err:  # matplotlib is optional: the tables still stand
        result.notes.append(f"no plot: {err}")
    return paths


__all__ = ["Choice", "DeviceMeasurer", "TuneCandidate", "TuneResult", "choose", "enumerate_candidates",
           "pair_with_budget_peer", "pareto_front", "parse_sizes", "plan_accuracy", "tune", "within_budget"]
