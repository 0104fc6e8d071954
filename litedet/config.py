"""The model config sidecar: everything a device needs to pre- and post-process exactly as the
model was trained, stored as JSON beside the weights or the exported engine files.

Pure Python (no torch): the runtime reads it on devices that have no torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from litedet.errors import UserError

CONFIG_VERSION = 1
# what a sidecar's ``precision`` records: the weights' number format (int8: a quantized model)
CONFIG_PRECISIONS = ("fp32", "fp16", "bf16", "int8")

COCO_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

HEADS = ("yolo", "ssdlite")
# The head of each family of registry names (litedet.models.zoo); a config that names another
# head for such a model belongs to a different model or was edited, and would decode nonsense.
_HEAD_OF_FAMILY = {"ssdlite-": "ssdlite", "v5lite-": "yolo", "yolo-": "yolo"}


def expected_head(model: str) -> str | None:
    """The head a registry model of this name has, or None for a name outside the known families."""
    return next((head for prefix, head in _HEAD_OF_FAMILY.items() if model.startswith(prefix)), None)


def _show(value: Any) -> str:
    return repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."


def _integer(value: Any, name: str, low: int | None = None, high: int | None = None) -> int:
    """An int (or an integral float such as 640.0); anything else is a ValueError naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
        raise ValueError(f"{name} must be an integer, got {_show(value)}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be in {low}..{'' if high is None else high}, got {value}")
    return value


def _boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {_show(value)}")
    return value


def _numbers(values: Any, name: str, count: int) -> tuple[float, ...]:
    if (not isinstance(values, (list, tuple)) or len(values) != count
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
        raise ValueError(f"{name} must be {count} finite numbers, got {_show(values)}")
    return tuple(float(v) for v in values)


# YOLOv5 COCO anchors in input pixels, one row of (w, h) pairs per level P3/8, P4/16, P5/32.
YOLOV5_ANCHORS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((10, 13), (16, 30), (33, 23)),
    ((30, 61), (62, 45), (59, 119)),
    ((116, 90), (156, 198), (373, 326)),
)


@dataclass
class Preprocess:
    """How an image becomes the network input.

    ``letterbox``: keep the aspect ratio and pad with ``pad_value`` (YOLOv5: 114), ``center``
    padding on both sides; ``resize`` stretches to the input size. Pixels are converted to RGB
    when ``rgb``, then ``(pixel - mean) / std`` per channel, in the channel order after conversion.
    """

    resize: str = "letterbox"
    pad_value: int = 114
    center: bool = True
    rgb: bool = True
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (255.0, 255.0, 255.0)

    def __post_init__(self) -> None:
        if self.resize not in ("letterbox", "resize"):
            raise ValueError(f"preprocess.resize must be 'letterbox' or 'resize', got {self.resize!r}")
        self.pad_value = _integer(self.pad_value, "preprocess.pad_value", 0, 255)
        self.center = _boolean(self.center, "preprocess.center")
        self.rgb = _boolean(self.rgb, "preprocess.rgb")
        self.mean = _numbers(self.mean, "preprocess.mean", 3)  # type: ignore[assignment]
        self.std = _numbers(self.std, "preprocess.std", 3)  # type: ignore[assignment]
        if any(s == 0 for s in self.std):
            raise ValueError(f"preprocess.std must not contain 0, got {self.std}")


def _quantized_outputs(value: Any, levels: int | None) -> list[dict[str, Any]]:
    """``ModelConfig.quantized_outputs`` checked: [] or one {scale > 0, zero_point 0..255, channels
    >= 1} per output level (YOLO heads only)."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"quantized_outputs must be a list, got {_show(value)}")
    if not value:
        return []
    if levels is None:
        raise ValueError("quantized_outputs are only decoded for YOLO heads")
    if len(value) != levels:
        raise ValueError(f"quantized_outputs has {len(value)} entries for {levels} output levels")
    checked = []
    for entry in value:
        if not isinstance(entry, dict) or sorted(entry) != ["channels", "scale", "zero_point"]:
            raise ValueError(f"each quantized_outputs entry must be {{scale, zero_point, channels}}, got {_show(entry)}")
        scale = entry["scale"]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"quantized_outputs scale must be a positive number, got {_show(scale)}")
        checked.append({"scale": float(scale), "zero_point": _integer(entry["zero_point"], "quantized_outputs.zero_point", 0, 255),
                        "channels": _integer(entry["channels"], "quantized_outputs.channels", 1)})
    return checked


@dataclass
class ModelConfig:
    """What a litedet checkpoint or export says about itself.

    ``input_size`` is (height, width). ``head`` names the raw-output layout: ``"yolo"`` outputs are
    one map per level of shape [B, len(anchors[i]) * (5 + num_classes), H_i, W_i] with raw logits;
    ``"ssdlite"`` is described in ``litedet.ops.decode``. ``output_names`` lists the engine output
    names in level order. ``uint8_input``: the engine takes the letterboxed image as it is, uint8
    [B, H, W, 3] in BGR order, and does the channel order and ``preprocess`` normalisation in its
    graph (``litedet export --uint8-input``); otherwise it takes float32 [B, 3, H, W], normalised.
    ``quantized_outputs`` (an INT8 model, ``litedet quantize``): one ``{"scale", "zero_point",
    "channels"}`` per output, which is then uint8 [B, H, W, C >= channels], channels last, holding
    the level's first ``channels`` channels quantized: value = (q - zero_point) * scale.
    """

    model: str
    num_classes: int
    names: list[str]
    input_size: tuple[int, int]
    strides: list[int] = field(default_factory=lambda: [8, 16, 32])
    anchors: list[list[list[float]]] = field(default_factory=lambda: [[list(a) for a in lvl] for lvl in YOLOV5_ANCHORS])
    head: str = "yolo"
    preprocess: Preprocess = field(default_factory=Preprocess)
    output_names: list[str] = field(default_factory=list)
    dynamic: bool = False
    nms_in_graph: bool = False
    uint8_input: bool = False
    quantized_outputs: list[dict[str, Any]] = field(default_factory=list)
    precision: str = "fp32"
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.preprocess, dict):
            self.preprocess = Preprocess(**self.preprocess)
        if not isinstance(self.preprocess, Preprocess):
            raise ValueError(f"preprocess must be a mapping, got {_show(self.preprocess)}")
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a registry name, got {_show(self.model)}")
        self.num_classes = _integer(self.num_classes, "num_classes", 1)
        if not isinstance(self.names, (list, tuple)) or not all(isinstance(n, str) for n in self.names):
            raise ValueError(f"names must be a list of strings, got {_show(self.names)}")
        self.names = list(self.names)
        if len(self.names) != self.num_classes:
            raise ValueError(f"{len(self.names)} class names given for num_classes={self.num_classes}")
        if not isinstance(self.input_size, (list, tuple)) or len(self.input_size) != 2:
            raise ValueError(f"input_size must be [height, width], got {_show(self.input_size)}")
        self.input_size = tuple(_integer(v, "input_size", 1) for v in self.input_size)  # type: ignore[assignment]
        if not isinstance(self.strides, (list, tuple)):
            raise ValueError(f"strides must be a list of integers, got {_show(self.strides)}")
        self.strides = [_integer(v, "strides", 1) for v in self.strides]
        if not isinstance(self.anchors, (list, tuple)) or not all(isinstance(level, (list, tuple)) for level in self.anchors):
            raise ValueError(f"anchors must be a list of levels of [w, h] pairs, got {_show(self.anchors)}")
        self.anchors = [[list(_numbers(pair, "anchors", 2)) for pair in level] for level in self.anchors]
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {list(HEADS)}, got {_show(self.head)}")
        expected = expected_head(self.model)
        if expected is not None and expected != self.head:
            raise ValueError(
                f"head {self.head!r} contradicts model {self.model!r}, which has a {expected!r} head "
                "(this config belongs to another model or was edited)"
            )
        if self.head == "yolo" and len(self.anchors) != len(self.strides):
            raise ValueError(f"{len(self.anchors)} anchor levels for {len(self.strides)} strides")
        if not isinstance(self.output_names, (list, tuple)) or not all(isinstance(n, str) for n in self.output_names):
            raise ValueError(f"output_names must be a list of strings, got {_show(self.output_names)}")
        self.output_names = list(self.output_names)
        self.dynamic = _boolean(self.dynamic, "dynamic")
        self.nms_in_graph = _boolean(self.nms_in_graph, "nms_in_graph")
        self.uint8_input = _boolean(self.uint8_input, "uint8_input")
        self.quantized_outputs = _quantized_outputs(self.quantized_outputs, len(self.strides) if self.head == "yolo" else None)
        for name in ("precision", "source"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {_show(getattr(self, name))}")
        if not isinstance(self.extra, dict):
            raise ValueError(f"extra must be a mapping, got {_show(self.extra)}")
        self.version = _integer(self.version, "version", 1)

    @property
    def size_multiple(self) -> int:
        """What each input side must be a multiple of. A YOLO neck upsamples and concatenates its
        levels, so every level must divide exactly: the largest stride. SSDLite's extra blocks pad
        their stride-2 convs (320 -> 20, 10, 5, 3, 2, 1 cells: its strides up to 512 are nominal)
        and its priors follow the map sizes, so any size runs."""
        if self.head == "yolo" and self.strides:
            return max(self.strides)
        return 1

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["input_size"] = list(self.input_size)
        for name in ("uint8_input", "quantized_outputs"):  # written only when set: other exports stay
            if not data[name]:  # readable by older litedet
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"{source}: unknown model config keys {unknown}"[:300])
        missing = [k for k in ("model", "num_classes", "names", "input_size") if k not in data]
        if missing:
            raise UserError(f"{source}: model config is missing {missing}")
        try:
            config = cls(**data)
        except (TypeError, ValueError) as err:  # TypeError: unknown keys in 'preprocess'
            raise UserError(f"{source}: bad model config: {err}") from None
        if config.version > CONFIG_VERSION:
            raise UserError(f"{source}: model config version {config.version}; this litedet reads versions up to "
                            f"{CONFIG_VERSION} (a newer litedet wrote it: upgrade to open it)")
        if config.precision not in CONFIG_PRECISIONS:
            raise UserError(f"{source}: bad model config: precision must be one of {list(CONFIG_PRECISIONS)}, "
                            f"got {_show(config.precision)}")
        multiple = config.size_multiple
        if any(side % multiple for side in config.input_size):
            height, width = config.input_size
            raise UserError(f"{source}: bad model config: input_size [{height}, {width}] must be multiples of "
                            f"{multiple} (the model's largest stride)")
        return config

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON atomically (temp file + rename)."""
        path = Path(path)
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ModelConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model config not found: {path}")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            raise UserError(f"{path}: not a litedet model config (invalid JSON: {err})") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: not a litedet model config (expected a JSON object)")
        return cls.from_dict(data, source=str(path))


def sidecar_path(weights: str | os.PathLike) -> Path:
    """The config that belongs to a weights/engine file: ``model.safetensors`` -> ``model.json``,
    ``model.onnx`` -> ``model.json``; for a directory, ``DIR/litedet.json``."""
    weights = Path(weights)
    if weights.is_dir():
        return weights / "litedet.json"
    name = weights.name
    for suffix in (".ncnn.param", ".ncnn.bin"):
        if name.endswith(suffix):
            return weights.with_name(name[: -len(suffix)] + ".json")
    return weights.with_suffix(".json")


def find_config(weights: str | os.PathLike) -> ModelConfig | None:
    """Load the sidecar of ``weights`` if there is one."""
    path = sidecar_path(weights)
    return ModelConfig.load(path) if path.is_file() else None


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder and a rename."""
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; weights and configs are meant to be copied and shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
