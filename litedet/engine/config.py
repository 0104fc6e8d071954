"""The training experiment: one typed ``TrainConfig`` read from YAML (unknown keys are errors) and
overridden from the command line.

Example ``experiment.yaml``::

    data: configs/data/raccoon.yaml
    model: v5lite-e
    backbone_weights: ../shared/weights/shufflenetv2-0.5x-imagenet/shufflenetv2.pth
    epochs: 100
    batch: 16
    imgsz: 320
    optimizer: sgd
    augment: {mosaic: 1.0, scale: 0.5, fliplr: 0.5}
    loss: {box: 0.05, obj: 1.0, cls: 0.5}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from litedet.data.augment import AugmentConfig
from litedet.engine.loss import LossConfig
from litedet.errors import load_yaml

OPTIMIZERS = ("sgd", "adamw")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_MODEL = "v5lite-e"
_PERIOD_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_save_period(value: str | int | None) -> tuple[int | None, float | None]:
    """``--save-period``: ``"200"`` -> every 200 batches, ``"5m"`` / ``"90s"`` / ``"1h"`` -> every
    so many seconds of training; returns ``(batches, seconds)``, one of them ``None`` (both for
    ``None``)."""
    if value is None or value == "":
        return None, None
    text = str(value).strip().lower()
    try:
        if text[-1:] in _PERIOD_UNITS:
            seconds = float(text[:-1]) * _PERIOD_UNITS[text[-1]]
            if seconds > 0:
                return None, seconds
        elif int(text) >= 1:
            return int(text), None
    except ValueError:
        pass
    raise ValueError(f"save_period must be a number of batches (e.g. 200) or a time (e.g. 5m, 90s, 1h), got {value!r}")


@dataclass
class TrainConfig:
    """Everything one training run needs. Defaults follow YOLOv5 ``hyp.scratch-low.yaml``."""

    data: str = ""  # dataset YAML (yolo | coco | voc), see litedet.data.datasets
    model: str = ""  # registered detector name ("": the --weights sidecar's model, else DEFAULT_MODEL)
    weights: str | None = None  # full detector checkpoint (.safetensors + sidecar) to start from
    backbone_weights: str | None = None  # ImageNet backbone weights (ShuffleNetV2 Megvii .pth)
    out: str = "runs/train/exp"
    epochs: int = 100
    batch: int = 16
    imgsz: int = 320
    device: str = "auto"
    workers: int = 2
    threads: int | None = None  # torch CPU threads (None: torch's default); 1 is fastest on a busy machine
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms (CPU runs are reproducible anyway)
    cache: bool = False  # keep resized images in memory
    optimizer: str = "sgd"
    lr0: float = 0.01  # initial learning rate (AdamW: try 0.001)
    lrf: float = 0.01  # final learning rate = lr0 * lrf (cosine)
    momentum: float = 0.937  # SGD momentum / AdamW beta1
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: float = 3.0
    warmup_min_steps: int = 100  # YOLOv5 warms up for at least 100 batches (capped at a third of the run)
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    nbs: int = 64  # nominal batch size: gradients are accumulated up to it, weight decay scaled to it
    ema: bool = True
    ema_decay: float = 0.9999
    ema_tau: float = 2000.0
    amp: bool = True  # mixed precision, CUDA only
    grad_clip: float = 10.0  # max gradient norm (0: off)
    close_mosaic: int = 0  # switch mosaic off for the last N epochs
    eval_interval: int = 1  # evaluate every N epochs (and always after the last)
    conf_threshold: float = 0.001  # evaluation (COCO protocol)
    iou_threshold: float = 0.6
    max_det: int = 300
    min_box_size: float = 1.0  # labels narrower or lower than this (pixels) are dropped
    stop_after_step: int | None = None  # save and stop after this many batches (interruption tests)
    save_period: str | None = None  # also write last.pt mid-epoch: every N batches ("200") or minutes ("5m")
    progress: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        if self.model:
            from litedet.models.registry import list_models, model_kind

            kind = model_kind(self.model)  # an unknown name is an error here too
            if kind != "detector":
                detector = f"yolo-{self.model}"
                hint = (f"; train {detector} (its backbone is {self.model}), with --backbone-weights for ImageNet "
                        f"weights" if detector in list_models(kind="detector") else "")
                raise ValueError(f"model {self.model!r} is a {kind}: litedet train trains detectors (`litedet models` "
                                 f"shows each name's kind){hint}")
        if isinstance(self.augment, dict):
            self.augment = _build(AugmentConfig, self.augment, "augment")
        if isinstance(self.loss, dict):
            self.loss = _build(LossConfig, self.loss, "loss")
        self.optimizer = str(self.optimizer).lower()
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise ValueError(f"device must be one of {DEVICES} (or cuda:N), got {self.device!r}")
        for name in ("epochs", "batch", "nbs", "eval_interval"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not isinstance(self.imgsz, int) or self.imgsz < 32 or self.imgsz % 32:
            raise ValueError(f"imgsz must be a multiple of 32 (>= 32), got {self.imgsz!r}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.lr0 <= 0 or not 0 < self.lrf <= 1:
            raise ValueError(f"lr0 must be > 0 and lrf in (0, 1], got lr0={self.lr0}, lrf={self.lrf}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.stop_after_step is not None and self.stop_after_step < 1:
            raise ValueError(f"stop_after_step must be >= 1, got {self.stop_after_step}")
        parse_save_period(self.save_period)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (it goes into checkpoints loaded with ``weights_only=True``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> "TrainConfig":
        try:
            return _build(cls, data, source)
        except TypeError as err:
            raise ValueError(f"{source}: {err}") from None

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        """Read an experiment YAML, then apply ``overrides`` (``None`` values are ignored, so
        command-line defaults never clobber the YAML)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"experiment YAML not found: {path}")
        data = load_yaml(path, "experiment YAML") or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: an experiment YAML must be a mapping of TrainConfig keys")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data, str(path))


def _build(cls: type, data: dict[str, Any], source: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping, got {type(data).__name__}")
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(types))
    if unknown:
        raise ValueError(f"{source}: unknown keys {unknown} (allowed: {sorted(types)})")
    return cls(**{key: _coerce(value, types[key], f"{source}: {key}") for key, value in data.items()})


def _coerce(value: Any, type_name: str, where: str) -> Any:
    """YAML and argparse give strings, ints and floats loosely (PyYAML reads ``1e-3`` as a
    string); convert to the declared type or name the bad value."""
    if value is None:
        if "None" in type_name:
            return None
        raise ValueError(f"{where} must not be empty")
    base = type_name.replace(" | None", "")
    try:
        if base == "float" and not isinstance(value, bool):
            return float(value)
        if base == "int" and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if base == "bool":
            if isinstance(value, bool):
                return value
            raise ValueError
        if base == "str":
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be {base}, got {value!r}") from None
    return value
