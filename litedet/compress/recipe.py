"""Compression recipes: a typed YAML that chains steps and writes one report table.

```yaml
model: runs/v5lite-s.safetensors        # start: a litedet checkpoint (or an .onnx/.xml for quantize only)
data: configs/data/coco256.yaml         # training data for fine-tune / distill / sparse training
out: runs/compress/v5lite-s-recipe
report:                                 # optional; measured once at the end, all stages side by side
  engine: onnxruntime
  threads: 2
  val_images: ../shared/data/coco256/images/val2017
  val_annotations: ../shared/data/coco256/annotations/instances_val2017.json
steps:
  - distill: {teacher: runs/v5lite-s.safetensors, strategies: {response: 1.0}, epochs: 1}
  - prune: {method: l1, ratio: 0.3}
  - finetune: {epochs: 2}
  - decompose: {method: svd, energy: 0.95}
  - quantize: {method: ort-static, calib: ../shared/data/coco256/images/train2017}
```

Each step is one mapping with one key (the step name); its settings are typed dataclasses and
unknown keys or steps are errors, raised before any work starts. Torch steps (``prune``,
``sparsity``, ``finetune``, ``distill``, ``decompose``) change the model in memory; ``export``
and ``quantize`` produce engine files. After every step the model is exported (ONNX by default)
so the report compares every stage on one engine.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from litedet.errors import load_yaml

LOGGER = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------- typed steps


@dataclass
class FinetuneStep:
    """Fine-tune on ``data`` (the YOLOv5 loss)."""

    epochs: int = 3
    steps: int | None = None
    batch: int = 8
    lr: float = 0.002
    augment: bool = True
    ema: bool = False  # end with the exponential moving average of the weights
    freeze_bn: bool = False  # keep BatchNorm statistics fixed while training
    imgsz: int | None = None  # training input size (default: the model's)

    def __post_init__(self) -> None:
        from litedet.compress.finetune import check_imgsz

        check_imgsz(self.imgsz, "finetune.imgsz")


@dataclass
class SparsityStep:
    """Network-slimming sparse training: L1 on BN gamma while fine-tuning."""

    strength: float = 1e-4
    epochs: int = 3
    steps: int | None = None
    batch: int = 8
    lr: float = 0.002


@dataclass
class PruneStep:
    """Structured (l1, bn_scale) or unstructured (magnitude) pruning."""

    method: str = "reconstruction"
    ratio: float | None = None
    target_latency: float | None = None  # ms on the report engine/threads
    step: float = 0.1
    round_to: int | None = 8
    # calibration images (folder or dataset YAML; default: the recipe's data) for BN statistics,
    # reconstruction importance and compensation (litedet.compress.prune.structured_prune)
    calib: str | None = None
    calib_images: int = 128
    compensate: str = "lsq"
    iterations: int = 3
    refit: int = 0  # calibration images for the corrective least-squares refit of 1x1 convs (0: off)
    global_pruning: bool = False
    max_layer_ratio: float = 0.75
    ignore: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        from litedet.compress.prune import COMPENSATION, METHODS, check_ratio

        if self.method not in METHODS:
            raise ValueError(f"prune.method must be one of {list(METHODS)}, got {self.method!r}")
        if self.compensate not in COMPENSATION:
            raise ValueError(f"prune.compensate must be one of {list(COMPENSATION)}, got {self.compensate!r}")
        if self.refit < 0:
            raise ValueError(f"prune.refit must be >= 0 (images; 0: off), got {self.refit}")
        if self.iterations < 1 or self.calib_images < 1:
            raise ValueError(f"prune.iterations and prune.calib_images must be >= 1, got {self.iterations}, {self.calib_images}")
        if self.round_to is not None and self.round_to < 1:
            raise ValueError(f"prune.round_to must be >= 1 (1: no rounding), got {self.round_to}")
        check_ratio(self.max_layer_ratio, "prune.max_layer_ratio")
        if (self.ratio is None) == (self.target_latency is None):
            raise ValueError("prune needs exactly one of ratio and target_latency")
        if self.ratio is not None:
            check_ratio(self.ratio, "prune.ratio")
        if self.target_latency is not None and self.target_latency <= 0:
            raise ValueError(f"prune.target_latency must be > 0 ms, got {self.target_latency}")


@dataclass
class DistillStep:
    """Distil from ``teacher`` (a checkpoint with the student's classes)."""

    teacher: str = ""
    strategies: dict[str, float] = field(default_factory=lambda: {"response": 1.0})
    temperature: float = 2.0
    epochs: int = 3
    steps: int | None = None
    batch: int = 8
    lr: float = 0.002
    imgsz: int | None = None  # training input size for student and teacher (default: the student's)

    def __post_init__(self) -> None:
        from litedet.compress.distill import STRATEGIES

        from litedet.compress.finetune import check_imgsz

        check_imgsz(self.imgsz, "distill.imgsz")

        if not self.teacher:
            raise ValueError("distill.teacher is required (a .safetensors checkpoint)")
        unknown = sorted(set(self.strategies) - set(STRATEGIES))
        if unknown:
            raise ValueError(f"distill.strategies: unknown {unknown}; choose from {list(STRATEGIES)}")


@dataclass
class DecomposeStep:
    """Low-rank decomposition (svd, cp or both) by rank or by energy kept."""

    method: str = "svd"
    rank: float | None = None
    energy: float | None = None
    exclude: list[str] = field(default_factory=lambda: ["head.*"])
    # calibration images (folder or dataset YAML; default: the recipe's data) for data-aware SVD
    # (litedet.compress.lowrank: reconstruct responses); data_free: weight SVD even when data is given
    calib: str | None = None
    calib_images: int = 128
    data_free: bool = False

    def __post_init__(self) -> None:
        if self.calib_images < 1:
            raise ValueError(f"decompose.calib_images must be >= 1, got {self.calib_images}")
        if self.method not in ("svd", "cp", "both"):
            raise ValueError(f"decompose.method must be svd, cp or both, got {self.method!r}")
        if (self.rank is None) == (self.energy is None):
            raise ValueError("decompose needs exactly one of rank and energy")
        if self.energy is not None and not 0 < self.energy <= 1:
            raise ValueError(f"decompose.energy must be in (0, 1], got {self.energy}")
        if self.rank is not None and not (0 < self.rank <= 1 or (self.rank > 1 and float(self.rank).is_integer())):
            raise ValueError(f"decompose.rank must be a share of the full rank in (0, 1] or an integer >= 1, "
                             f"got {self.rank}")


@dataclass
class ExportStep:
    """Export the torch model (``onnx`` or ``openvino``)."""

    format: str = "onnx"


@dataclass
class QuantizeStep:
    """Quantize the current export (exports to ONNX/OpenVINO first when the model is in torch)."""

    method: str = "ort-static"
    calib: str | None = None
    images: int = 64
    per_channel: bool = True
    calibrate_method: str = "minmax"
    exclude: list[str] = field(default_factory=list)
    accuracy_control: bool = False
    max_drop: float = 0.01
    rewrite: bool = True  # ort-static: exact INT8 graph rewrites first (litedet.compress.quantize.rewrite_for_int8)
    preset: str = "performance"  # openvino: NNCF preset (mixed: asymmetric activations)

    def __post_init__(self) -> None:
        from litedet.compress.quantize import METHODS

        if self.method not in METHODS:
            raise ValueError(f"quantize.method must be one of {list(METHODS)}, got {self.method!r}")
        if self.preset not in ("performance", "mixed"):
            raise ValueError(f"quantize.preset must be 'performance' or 'mixed', got {self.preset!r}")
        if self.method in ("ort-static", "openvino") and not self.calib:
            raise ValueError(f"quantize.calib (images folder or dataset YAML) is required for {self.method}")


@dataclass
class QatStep:
    """Quantization-aware training (torch fake-quant), then export to a QDQ INT8 ONNX model."""

    epochs: int = 1
    steps: int | None = None
    batch: int = 8
    lr: float = 0.0005
    calib_batches: int = 8
    augment: bool = True


STEP_TYPES: dict[str, type] = {
    "qat": QatStep,
    "finetune": FinetuneStep,
    "sparsity": SparsityStep,
    "prune": PruneStep,
    "distill": DistillStep,
    "decompose": DecomposeStep,
    "export": ExportStep,
    "quantize": QuantizeStep,
}
TORCH_STEPS = ("finetune", "sparsity", "prune", "distill", "decompose", "qat")


@dataclass
class ReportSettings:
    """How the final report measures (engine, threads, validation data)."""

    engine: str = "onnxruntime"
    threads: int = 2
    runs: int = 100
    budget_s: float = 120.0
    val_images: str | None = None
    val_annotations: str | None = None
    each_step: bool = True

    def __post_init__(self) -> None:
        # checked with the recipe (``--check``), not after the steps have run
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.runs < 1:
            raise ValueError(f"runs must be >= 1, got {self.runs}")
        if not self.budget_s > 0:
            raise ValueError(f"budget_s must be > 0 seconds, got {self.budget_s}")
        if bool(self.val_images) != bool(self.val_annotations):
            given, missing = ("val_images", "val_annotations") if self.val_images else ("val_annotations", "val_images")
            raise ValueError(f"{given} needs {missing} too (mAP is measured on both: an image folder and its COCO json)")


@dataclass
class Recipe:
    """A parsed recipe: start model, data, output folder, report settings and typed steps."""

    model: str
    steps: list[tuple[str, Any]]
    data: str | None = None
    out: str = "runs/compress/recipe"
    device: str = "cpu"
    report: ReportSettings = field(default_factory=ReportSettings)
    source: str = "<recipe>"


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = get_origin(hint)
    args = [a for a in get_args(hint) if a is not type(None)]
    if value is None:
        if type(None) in get_args(hint):
            return None
        raise ValueError(f"{where}: a value is required")
    if origin is Union or (origin is not None and type(None) in get_args(hint)):
        hint, origin = args[0], get_origin(args[0])
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if origin is list and isinstance(value, list):
        return [_coerce(v, get_args(hint)[0], where) for v in value]
    if origin is dict and isinstance(value, dict):
        return {str(k): _coerce(v, get_args(hint)[1], f"{where}.{k}") for k, v in value.items()}
    raise ValueError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def build_typed(cls: type, data: Any, where: str) -> Any:
    """``cls(**data)`` with unknown keys and wrong types reported by name."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping of settings, got {data!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} (allowed: {sorted(known)})")
    kwargs = {key: _coerce(value, hints[key], f"{where}.{key}") for key, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:  # ValueError: a value the settings' own checks refuse
        raise ValueError(f"{where}: {err}") from None


def parse_recipe(data: Any, source: str = "<recipe>") -> Recipe:
    """Check a recipe mapping completely (every step, every key) and return it typed."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: a recipe must be a mapping with 'model' and 'steps'")
    allowed = {"model", "data", "out", "device", "report", "steps"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"{source}: unknown keys {unknown} (allowed: {sorted(allowed)})")
    if not data.get("model"):
        raise ValueError(f"{source}: missing 'model' (the checkpoint or exported model to start from)")
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ValueError(f"{source}: 'steps' must be a non-empty list, e.g. [{{prune: {{ratio: 0.3}}}}]")
    steps: list[tuple[str, Any]] = []
    for index, raw in enumerate(raw_steps, start=1):
        if isinstance(raw, str):
            raw = {raw: {}}
        if not isinstance(raw, dict) or len(raw) != 1:
            raise ValueError(f"{source}: step {index} must be one mapping like {{prune: {{ratio: 0.3}}}}, got {raw!r}")
        (name, settings), = raw.items()
        if name not in STEP_TYPES:
            raise ValueError(f"{source}: step {index}: unknown step {name!r}; choose from {sorted(STEP_TYPES)}")
        steps.append((name, build_typed(STEP_TYPES[name], settings, f"{source}: step {index} ({name})")))
    recipe = Recipe(
        model=str(data["model"]), steps=steps, data=data.get("data"), out=str(data.get("out", "runs/compress/recipe")),
        device=str(data.get("device", "cpu")), report=build_typed(ReportSettings, data.get("report"), f"{source}: report"),
        source=source,
    )
    needs_data = [name for name, _ in steps if name in ("finetune", "sparsity", "distill", "qat")]
    after_qat = [name for name, _ in steps[[n for n, _ in steps].index("qat") + 1:]] if any(n == "qat" for n, _ in steps) else []
    if any(name in TORCH_STEPS for name in after_qat):
        raise ValueError(f"{source}: qat ends the torch part of a recipe (it exports INT8); move {after_qat} before it")
    if needs_data and not recipe.data:
        raise ValueError(f"{source}: steps {needs_data} train, so the recipe needs 'data' (a dataset YAML)")
    for index, (name, step) in enumerate(steps, start=1):
        if name == "prune" and step.method == "reconstruction" and not (step.calib or recipe.data):
            raise ValueError(f"{source}: step {index} (prune): method reconstruction measures channels on calibration "
                             f"images; set prune.calib (an image folder or dataset YAML) or the recipe's 'data', "
                             f"or use method l1")
    if Path(recipe.out).exists() and not Path(recipe.out).is_dir():
        raise ValueError(f"{source}: out {recipe.out} is a file; give a folder")
    starts_exported = Path(recipe.model).suffix in (".onnx", ".xml")
    torch_steps = [name for name, _ in steps if name in TORCH_STEPS]
    if starts_exported and torch_steps:
        raise ValueError(f"{source}: steps {torch_steps} need a torch checkpoint (.safetensors), but model is {recipe.model}")
    return recipe


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and check a recipe YAML (errors name the file, step and key)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    data = load_yaml(path, "recipe")  # one line naming file:line for syntax errors and !!python tags
    return parse_recipe(data, str(path))


def check_inputs(recipe: Recipe) -> None:
    """Files the recipe names must exist before any work starts."""
    files = [("model", recipe.model), ("data", recipe.data)]
    for index, (name, step) in enumerate(recipe.steps, start=1):
        if name == "distill":
            files.append((f"step {index} teacher", step.teacher))
        if name in ("quantize", "prune", "decompose") and step.calib:
            files.append((f"step {index} calib", step.calib))
    files += [("report.val_images", recipe.report.val_images), ("report.val_annotations", recipe.report.val_annotations)]
    for what, value in files:
        if value and not Path(value).exists():
            raise FileNotFoundError(f"{recipe.source}: {what} not found: {value}")
    from litedet.config import find_config

    if Path(recipe.model).suffix.lower() == ".onnx":  # an exported start must parse before stage 0 is written
        import onnx

        try:
            onnx.load(str(recipe.model), load_external_data=False)
        except Exception as err:  # noqa: BLE001 - protobuf raises its own types for bytes that are no model
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(f"{recipe.model}: not a readable ONNX model ({first})") from None
    start = find_config(recipe.model)
    for index, (name, step) in enumerate(recipe.steps, start=1):
        if name in ("quantize", "prune", "decompose") and step.calib:
            from litedet.compress.quantize import calibration_images

            limit = step.images if name == "quantize" else step.calib_images
            calibration_images(step.calib, limit)  # raises when no image is readable
        if name == "distill":
            teacher = find_config(step.teacher)
            if teacher is None:
                raise FileNotFoundError(f"{recipe.source}: step {index}: teacher {step.teacher} has no config sidecar")
            if start is not None and list(teacher.names) != list(start.names):
                raise ValueError(
                    f"{recipe.source}: step {index}: the teacher {step.teacher} predicts {teacher.num_classes} classes "
                    f"({teacher.names[:3]}...), the student {start.num_classes} ({start.names[:3]}...); "
                    f"fine-tune the teacher on the student's classes first"
                )


# ------------------------------------------------------------------------------------ running


@dataclass
class Stage:
    """A measured point of the recipe: a name and the engine file that represents it."""

    name: str
    path: Path
    params: int | None
    notes: str = ""


@dataclass
class RecipeResult:
    """Final files, the stages and the report (when measured)."""

    out: Path
    model: Path | None
    exported: Path | None
    stages: list[Stage]
    report_paths: tuple[Path, Path] | None
    report: Any = None
    log: list[str] = field(default_factory=list)


def run_recipe(recipe: Recipe, measure: bool = True, progress: bool = True, command: str | None = None) -> RecipeResult:
    """Run every step in order; export after each (``report.each_step``); measure all stages in
    one report at the end."""
    check_inputs(recipe)
    out = Path(recipe.out)
    out.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    stages: list[Stage] = []
    start = Path(recipe.model)
    model = None
    exported: Path | None = None
    if start.suffix in (".onnx", ".xml"):
        exported = start
        stages.append(Stage("original", start, None))
    else:
        from litedet.models.checkpoint import load_detector

        model, _ = load_detector(start)
        exported = _export(model, recipe.report.engine, out / "stage0-original")
        stages.append(Stage("original", exported, _params(model)))

    def ft_config(step: Any) -> Any:
        from litedet.compress.finetune import FinetuneConfig

        return FinetuneConfig(epochs=step.epochs, steps=step.steps, batch=step.batch, lr=step.lr,
                              augment=getattr(step, "augment", True), ema=getattr(step, "ema", False),
                              freeze_bn=getattr(step, "freeze_bn", False),
                              imgsz=getattr(step, "imgsz", None),
                              device=recipe.device, progress=progress)

    for index, (name, step) in enumerate(recipe.steps, start=1):
        stage_dir = out / f"stage{index}-{name}"
        note = ""
        if name == "finetune":
            from litedet.compress.finetune import finetune

            result = finetune(model, recipe.data, ft_config(step))
            note = f"{result.steps} steps, last loss {result.losses[-1]:.3f}"
        elif name == "sparsity":
            from litedet.compress.finetune import finetune
            from litedet.compress.prune import BNSparsity

            sparsity = BNSparsity(model, step.strength)
            result = finetune(model, recipe.data, ft_config(step), after_backward=lambda _m: sparsity.add_subgradient())
            note = f"L1 {step.strength} on BN gamma, {result.steps} steps"
        elif name == "prune":
            note = _run_prune(model, step, recipe, stage_dir)
        elif name == "distill":
            from litedet.compress.distill import distill_detector
            from litedet.models.checkpoint import load_detector

            teacher, _ = load_detector(step.teacher)
            result = distill_detector(model, teacher, recipe.data, step.strategies, step.temperature, ft_config(step))
            note = f"{step.strategies} T={step.temperature}, {result.steps} steps"
        elif name == "decompose":
            from litedet.compress.lowrank import decompose

            rank = step.rank
            if rank is not None and float(rank).is_integer() and rank >= 1:
                rank = int(rank)
            calibration = None
            source = step.calib or recipe.data
            if step.method != "cp" and not step.data_free and source:
                from litedet.compress.prune import calibration_tensors

                calibration = calibration_tensors(source, model, images=step.calib_images)
            result = decompose(model, step.method, rank=rank, energy=step.energy, exclude=step.exclude, progress=progress,
                               calibration=calibration)
            note = (f"{len(result.layers)} layers, params {result.params_before} -> {result.params_after}"
                    + (f", SVD data-aware on {sum(len(b) for b in calibration)} images" if calibration else ""))
        elif name == "qat":
            exported = _run_qat(model, step, recipe, stage_dir, ft_config(step))
            stages.append(Stage(f"{index}. qat", exported, _params(model), f"{step.epochs} epoch(s) QAT"))
            log.append(f"step {index} qat: {exported}")
            model = None  # fake-quantized: the torch part of the recipe ends here
            continue
        elif name == "export":
            exported = _export(model, step.format, stage_dir)
            stages.append(Stage(f"{index}. export {step.format}", exported, _params(model)))
            continue
        elif name == "quantize":
            from litedet.compress.quantize import quantize

            source = exported
            wanted = ".xml" if step.method == "openvino" else ".onnx"
            if model is not None and (source is None or source.suffix != wanted):
                source = _export(model, "openvino" if wanted == ".xml" else "onnx", stage_dir / "float")
            if source is None or source.suffix not in (".onnx", ".xml"):
                raise ValueError(f"step {index} (quantize): no exported model to quantize")
            options: dict[str, Any] = {}
            if step.method == "ort-static":
                options = {"per_channel": step.per_channel, "calibrate_method": step.calibrate_method, "exclude": step.exclude,
                           "rewrite": step.rewrite}
            elif step.method == "ort-dynamic":
                options = {"per_channel": step.per_channel}
            else:
                options = {"accuracy_control": step.accuracy_control, "max_drop": step.max_drop, "preset": step.preset,
                           "val_images": recipe.report.val_images, "val_annotations": recipe.report.val_annotations}
            suffix = ".xml" if step.method == "openvino" else ".onnx"
            result = quantize(source, stage_dir / f"model_int8{suffix}", step.method, step.calib, step.images, **options)
            exported = result.output
            stages.append(Stage(f"{index}. quantize {step.method}", exported, None,
                                f"{result.calibration_images} calibration images" if result.calibration_images else "data-free"))
            log.append(f"step {index} quantize: {result.output}")
            continue
        log.append(f"step {index} {name}: {note}")
        LOGGER.info("step %d %s: %s", index, name, note)
        if recipe.report.each_step or index == len(recipe.steps):
            exported = _export(model, recipe.report.engine, stage_dir)
            stages.append(Stage(f"{index}. {name}", exported, _params(model), note))
    final_model = None
    if model is not None:
        from litedet.compress.checkpoint import save_compressed

        final_model = save_compressed(model, out / "model.safetensors")
    report = None
    report_paths = None
    if measure:
        from litedet.compress.report import ReportEntry, compare

        entries = [ReportEntry(s.name, s.path, params=s.params, notes=s.notes) for s in stages]
        report = compare(entries, recipe.report.val_images, recipe.report.val_annotations, threads=recipe.report.threads,
                         runs=recipe.report.runs, budget_s=recipe.report.budget_s, progress=progress,
                         commands=[command] if command else [])
        report_paths = report.save(out)
    return RecipeResult(out, final_model, exported, stages, report_paths, report, log)


def _run_qat(model: Any, step: QatStep, recipe: Recipe, stage_dir: Path, config: Any) -> Path:
    """Fold BN, fake-quantize, calibrate on training images, fine-tune, export QDQ ONNX."""
    import itertools

    import torch

    from litedet.compress.finetune import finetune
    from litedet.compress.qat import calibrate, export_qat_onnx, prepare_qat
    from litedet.data.datasets import load_data_config
    from litedet.data.loader import DetectionTrainDataset, build_loader

    prepare_qat(model)
    train = load_data_config(recipe.data).load_split("train")  # type: ignore[arg-type]
    loader, _ = build_loader(DetectionTrainDataset(train, int(max(model.input_size))), step.batch, seed=0)
    device = torch.device(recipe.device)
    model.to(device)
    calibrate(model, (images.to(device).float() / 255 for images, _, _ in itertools.islice(loader, step.calib_batches)))
    finetune(model, recipe.data, config)  # type: ignore[arg-type]
    return export_qat_onnx(model.cpu(), stage_dir, calibration=recipe.data)  # clean (letterboxed) calibration images


def _params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def _export(model: Any, engine: str, out_dir: Path) -> Path:
    """Export for measuring on ``engine`` (onnxruntime -> ONNX, openvino -> IR)."""
    from litedet.export.api import export_model

    fmt = {"onnxruntime": "onnx", "onnx": "onnx", "openvino": "openvino"}.get(engine)
    if fmt is None:
        raise ValueError(f"recipes measure on onnxruntime or openvino, got engine {engine!r}")
    return Path(export_model(model, fmt, out_dir, stem="model").path)


def _run_prune(model: Any, step: PruneStep, recipe: Recipe, stage_dir: Path) -> str:
    from litedet.compress.prune import STRUCTURED_METHODS, calibration_tensors, prune, prune_to_latency

    options: dict[str, Any] = {}
    if step.method in STRUCTURED_METHODS:
        source = step.calib or recipe.data
        calibration = calibration_tensors(source, model, images=step.calib_images) if source else None
        options = {"calibration": calibration, "compensate": step.compensate, "iterations": step.iterations,
                   "refit": step.refit,
                   "global_pruning": step.global_pruning, "max_layer_ratio": step.max_layer_ratio, "ignore": step.ignore}
    round_to = step.round_to if step.round_to and step.round_to > 1 else None
    if step.ratio is not None:
        result = prune(model, step.ratio, step.method, round_to=round_to, **options)
        return (f"{step.method} {step.ratio:.0%}: params {result.params_before} -> {result.params_after}, "
                f"MACs {result.macs_before / 1e6:.0f}M -> {result.macs_after / 1e6:.0f}M"
                + (f", sparsity {result.sparsity:.1%}" if result.sparsity is not None else "")
                + "".join(f"; {note}" for note in result.notes))
    measure = latency_probe(recipe.report.engine, recipe.report.threads, stage_dir / "probe")
    trajectory, _ = prune_to_latency(model, step.target_latency, measure, step.method, step.step,  # type: ignore[arg-type]
                                     round_to=round_to, **options)
    return "latency steps: " + ", ".join(f"{t['removed']:.0%}: {t['latency_ms']:.2f} ms" for t in trajectory)


def latency_probe(engine: str, threads: int, work_dir: Path, runs: int = 50) -> Any:
    """A ``model -> median ms`` function: export to ``engine`` and time it (harness, ``runs`` runs)."""

    def measure(model: Any) -> float:
        from litedet.bench.harness import measure_latency
        from litedet.runtime import open_backend

        path = _export(model, engine, work_dir)
        import numpy as np

        backend = open_backend(path, threads=threads)
        try:
            batch = np.random.default_rng(0).random((1, 3, *backend.config.input_size), dtype=np.float32)
            return measure_latency(lambda: backend.run(batch), warmup=5, min_runs=runs).median_ms
        finally:
            backend.close()

    return measure
