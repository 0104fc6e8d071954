"""Training loop for the YOLO detectors: the YOLOv5 recipe (Jocher et al., ultralytics/yolov5
``train.py``) in a form that resumes exactly.

- SGD (momentum, Nesterov) or AdamW; three parameter groups: decayed conv/linear weights, and
  biases and normalisation weights without weight decay; weight decay scaled to the nominal
  batch size ``nbs`` (64), up to which gradients are accumulated;
- warm-up (linear lr from 0, bias lr from ``warmup_bias_lr``, momentum from
  ``warmup_momentum``), then a cosine decay to ``lr0 * lrf`` per epoch;
- an EMA of the weights (decay ``d * (1 - exp(-updates / tau))``) that is evaluated and saved;
- AMP and ``cudnn.benchmark`` on CUDA only; gradient-norm clipping;
- per epoch: COCO mAP of the EMA model on the val split (``litedet.engine.evaluator``), a row
  of ``results.csv``, ``results.png``/``pr_curve.png`` plots, ``last.safetensors`` and (when
  mAP50-95 improves) ``best.safetensors`` with their JSON sidecars, and ``last.pt``: the full
  training state written atomically (model, EMA, optimizer, scheduler, scaler, epoch, step, RNG
  states), loadable with ``torch.load(weights_only=True)``.

Exact resume: the augmentation of sample i in epoch e is seeded by (seed, e, i) and the epoch
order by (seed, e) (``litedet.data.loader``), so a run stopped after any step and resumed from
``last.pt`` replays exactly the batches and updates of an uninterrupted run.
"""

from __future__ import annotations

import copy
import csv
import errno
import io
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from litedet.config import ModelConfig, write_bytes_atomic
from litedet.data.datasets import DetectionDataset, load_data_config
from litedet.data.loader import DetectionTrainDataset, build_loader
from litedet.engine.config import DEFAULT_MODEL, TrainConfig, parse_save_period
from litedet.engine.loss import detection_loss
from litedet.layers.conv import is_identity_batchnorm, restore_folded_batchnorm
from litedet.runtime.base import Backend

LOGGER = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"
CHECKPOINT_VERSION = 1
CSV_COLUMNS = ("epoch", "train/box_loss", "train/obj_loss", "train/cls_loss", "lr/bias", "lr/weights", "lr/norm",
               "metrics/mAP50", "metrics/mAP50-95", "time/epoch_s", "train/images_per_s")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the message names the step, the images and the last good
    checkpoint."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (e.g. the disk is full); the message names the path and
    the last good checkpoint, which is kept."""


@dataclass
class TrainResult:
    """What a run produced."""

    out: Path
    epochs_done: int
    steps: int  # optimizer steps (weight updates)
    best_map50_95: float
    best_map50: float
    last_map50_95: float | None
    last_map50: float | None
    best_weights: Path | None
    last_weights: Path | None
    train_seconds: float
    images_per_second: float
    stopped_early: bool = False
    messages: list[str] = field(default_factory=list)
    batches: int = 0  # training batches (forward + backward passes)
    interrupted: bool = False  # stopped by Ctrl-C / SIGTERM; resumable from ``out/last.pt``
    accumulate: int = 1  # batches per optimizer step after warm-up (nbs / batch)

    @property
    def resume_command(self) -> str:
        """The command that continues this run."""
        return f"litedet train --resume {self.out}"


# ----------------------------------------------------------------------------------------------
# pieces


def select_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    return torch.device(name)


class ModelEMA:
    """Exponential moving average of a model's floating-point state (YOLOv5 ``ModelEMA``; Polyak
    averaging). The decay ramps up as ``decay * (1 - exp(-updates / tau))`` so early, fast-changing
    weights are not averaged with the random initialisation for long."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0) -> None:
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.decay = decay
        self.tau = tau
        self.updates = updates

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = self.decay * (1 - math.exp(-self.updates / self.tau))
        source = model.state_dict()
        for key, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(decay).add_(source[key].detach(), alpha=1 - decay)


class ModuleBackend(Backend):
    """An in-memory torch module behind the ``Backend`` interface, so the evaluator scores the
    EMA model without a round trip through files."""

    name = "torch-module"

    def __init__(self, model: nn.Module, config: ModelConfig, device: torch.device) -> None:
        super().__init__(config)
        self.model = model
        self.device = device

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        inputs = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        with torch.inference_mode():
            outputs = self.model(inputs)
        return [out.float().cpu().numpy() for out in outputs]


def parameter_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """(biases, decayed weights, normalisation weights): weight decay only on conv/linear weights
    (YOLOv5 ``smart_optimizer``)."""
    biases, weights, norms = [], [], []
    norm_types = tuple(t for t in vars(nn).values() if isinstance(t, type) and "Norm" in t.__name__)
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad:
                continue
            if name == "bias":
                biases.append(parameter)
            elif isinstance(module, norm_types):
                norms.append(parameter)
            else:
                weights.append(parameter)
    return biases, weights, norms


def build_optimizer(model: nn.Module, config: TrainConfig, weight_decay: float) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum) or AdamW over the three groups; group 0 holds the biases."""
    biases, weights, norms = parameter_groups(model)
    groups = [
        {"params": biases, "weight_decay": 0.0, "name": "bias"},
        {"params": weights, "weight_decay": weight_decay, "name": "weights"},
        {"params": norms, "weight_decay": 0.0, "name": "norm"},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr0, momentum=config.momentum, nesterov=config.nesterov)
    return torch.optim.AdamW(groups, lr=config.lr0, betas=(config.momentum, 0.999))


def load_imagenet_backbone(model: nn.Module, path: str | Path) -> str:
    """Put ImageNet ShuffleNetV2 weights in Megvii layout (the shared 0.5x file) into a
    detector's ShuffleNetV2 backbone (``litedet.models.pretrained.load_megvii_shufflenetv2``
    permutes them onto our channel routing, so the saved detector needs nothing special). A width
    mismatch is a ValueError naming the tensor and both shapes. Returns the load summary."""
    from litedet.models.backbones.shufflenetv2 import ShuffleNetV2
    from litedet.models.pretrained import load_megvii_shufflenetv2

    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, ShuffleNetV2):
        raise ValueError(f"--backbone-weights {path}: these are ShuffleNetV2 (Megvii) weights, but the model's "
                         f"backbone is {type(backbone).__name__}; use a ShuffleNetV2 detector such as yolo-shufflenetv2_x0_5")
    try:
        report = load_megvii_shufflenetv2(backbone, path)
    except ValueError as err:
        raise ValueError(f"--backbone-weights does not fit {getattr(model, 'model_name', 'this model')} "
                         f"(backbone widths {backbone.stage_channels[:4]}): {err}") from None
    return report.summary()


def cosine_factor(epoch: int, epochs: int, lrf: float) -> float:
    """lr multiplier at ``epoch``: 1 -> ``lrf`` along half a cosine (YOLOv5 ``one_cycle``)."""
    return ((1 - math.cos(epoch * math.pi / epochs)) / 2) * (lrf - 1) + 1


class CosineSchedule:
    """Callable lr factor of epoch (picklable, so LambdaLR can save it)."""

    def __init__(self, epochs: int, lrf: float) -> None:
        self.epochs = epochs
        self.lrf = lrf

    def __call__(self, epoch: int) -> float:
        return cosine_factor(epoch, self.epochs, self.lrf)


def _rng_state() -> dict[str, Any]:
    """Every global RNG as tensors and plain values (``weights_only`` loads them)."""
    numpy_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"key": numpy_state[0], "state": torch.from_numpy(numpy_state[1].astype(np.int64)),
                  "pos": int(numpy_state[2]), "has_gauss": int(numpy_state[3]), "cached_gaussian": float(numpy_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["key"], numpy_state["state"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temp file + rename, so a crash never leaves half a checkpoint."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes_atomic(path, buffer.getvalue())


# What the atomic writes of a run folder leave behind when killed mid-write (``write_bytes_atomic``:
# ``.NAME.XXXXXXXX.tmp`` beside NAME).
RUN_FILES = (CHECKPOINT_NAME, "last.safetensors", "last.json", "best.safetensors", "best.json", "results.csv")


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temp files of interrupted atomic writes in ``run_dir``; returns them."""
    removed = []
    for name in RUN_FILES:
        for path in run_dir.glob(f".{name}.*.tmp"):
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed


LOCK_NAME = ".litedet-train.lock"


def check_run_folder(out: Path, resuming: bool = False) -> None:
    """Before any work: ``out`` can be created and written, and a fresh run does not land on a
    folder that holds another run's resumable checkpoint (it would replace it)."""
    out = Path(out)
    if not resuming and (out / CHECKPOINT_NAME).is_file():
        raise ValueError(f"{out} already holds a training run ({CHECKPOINT_NAME}): resume it with "
                         f"`litedet train --resume {out}`, or give another --out (or delete that folder)")
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write to the run folder {out}")


class RunFolderLock:
    """An exclusive lock on a run folder while a run trains in it: a second ``litedet train`` on
    the same folder (two ``--resume`` started by mistake) stops with one line instead of both
    writing (and removing each other's temp files). Released when the process ends, however it
    ends (``flock``); on systems without ``fcntl`` nothing is locked."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / LOCK_NAME
        self._file: Any = None

    def __enter__(self) -> "RunFolderLock":
        try:
            import fcntl
        except ImportError:  # not POSIX
            return self
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise ValueError(f"{self.path.parent} is in use by another litedet train (pid {holder}); "
                             "wait for it to end, or give another folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the lock; the file stays (removing it would race)
            self._file = None


class StopRequest:
    """SIGINT/SIGTERM while training: the first asks the loop to stop after the current batch
    (and save), the second stops at once. Installed only in the main thread."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:  # a forked data-loading worker: keep loading, the trainer decides
            return
        if self.signal is not None:  # second signal: give up now
            raise KeyboardInterrupt
        self.signal = signum
        LOGGER.warning("%s: stopping after the current batch to save a resumable checkpoint "
                       "(press Ctrl-C again to quit at once)", signal.Signals(signum).name)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def load_training_state(path: Path) -> dict[str, Any]:
    """Read ``last.pt`` with ``weights_only=True`` (no code is unpickled)."""
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint {path}; --resume takes a run folder with {CHECKPOINT_NAME}")
    from litedet.models.pretrained import load_pickle_safely

    state = load_pickle_safely(path, "a litedet training checkpoint")
    if not isinstance(state, dict) or state.get("format") != "litedet-train":
        raise ValueError(f"{path}: not a litedet training checkpoint")
    version = state.get("version")
    if not isinstance(version, int) or not 1 <= version <= CHECKPOINT_VERSION:
        raise ValueError(f"{path}: training checkpoint format version {version!r}; this litedet reads versions 1 to "
                         f"{CHECKPOINT_VERSION} (a newer litedet wrote it: upgrade to resume it)")
    return state


# ----------------------------------------------------------------------------------------------
# the trainer


class Trainer:
    """One training run. ``Trainer(config).fit()`` trains from ``config``;
    ``Trainer.from_checkpoint(run_dir).fit()`` resumes one.

    ``train_set``/``val_set`` default to the splits of ``config.data``; pass them to skip loading
    (the CLI loads them first to print the label summary).
    """

    def __init__(self, config: TrainConfig, train_set: DetectionDataset | None = None,
                 val_set: DetectionDataset | None = None, resume_state: dict[str, Any] | None = None) -> None:
        if config.data:  # absolute, so a resume from another folder finds the data
            config.data = str(Path(config.data).resolve())
        self.config = config
        self.out = Path(config.out)
        self.messages: list[str] = []
        if train_set is None or val_set is None:
            if not config.data:
                raise ValueError("no dataset: pass --data data.yaml")
            data = load_data_config(config.data)
            train_set = train_set or data.load_split("train", config.min_box_size)
            val_set = val_set or data.load_split("val", config.min_box_size)
        self.train_set, self.val_set = train_set, val_set
        self.names = list(train_set.names)
        self.device = select_device(config.device)
        if config.threads is not None:
            if config.threads < 1:
                raise ValueError(f"threads must be >= 1, got {config.threads}")
            torch.set_num_threads(config.threads)
        self.use_amp = bool(config.amp and self.device.type == "cuda")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not config.deterministic
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.deterministic = True
        random.seed(config.seed)
        np.random.seed(config.seed)
        torch.manual_seed(config.seed)
        self.model = self._build_model(resume_state)
        self.model.to(self.device)
        self._resume_state = resume_state

    # -- model --------------------------------------------------------------------------------

    def _log(self, message: str) -> None:
        LOGGER.info(message)
        self.messages.append(message)

    def _build_model(self, resume_state: dict[str, Any] | None) -> nn.Module:
        from litedet.models.registry import create_model

        from litedet.config import Preprocess, find_config

        config = self.config
        num_classes = len(self.names)
        if resume_state is not None:
            model_config = ModelConfig.from_dict(resume_state["model_config"], "checkpoint")
            model = create_model(config.model, num_classes=num_classes, names=self.names, input_size=config.imgsz,
                                 anchors=model_config.anchors)
            # every sidecar field the run started with (source, preprocessing, input size) survives a resume
            model.source = model_config.source
            model.preprocess = Preprocess(**vars(model_config.preprocess))
            model.input_size = tuple(model_config.input_size)
            return model
        if config.weights:
            from litedet.models.checkpoint import load_detector

            sidecar = find_config(config.weights) if not str(config.weights).endswith(".param") else None
            if sidecar is not None and config.model and config.model != sidecar.model:
                raise ValueError(f"--model {config.model} does not match {config.weights}, whose sidecar says "
                                 f"{sidecar.model}; leave --model out to use the checkpoint's")
            model, _ = load_detector(config.weights, model_name=config.model or None)
            config.model = model.model_name
            old_names = list(model.names)
            if old_names == self.names:
                self._log(f"{config.weights}: all weights loaded ({num_classes} classes)")
            elif set(self.names) <= set(old_names):
                keep = [old_names.index(name) for name in self.names]
                model.reset_head(num_classes, self.names, keep_classes=keep)
                self._log(f"{config.weights}: the data's {num_classes} classes ({', '.join(self.names[:5])}"
                          f"{', ...' if num_classes > 5 else ''}) are among the checkpoint's {len(old_names)}: "
                          f"their head rows kept, all weights loaded")
            elif model.num_classes != num_classes:
                old = model.num_classes
                kept = model.reset_head(num_classes, self.names)
                self._log(f"{config.weights}: {old} classes in the checkpoint, {num_classes} in the data: "
                          f"head re-initialised for {num_classes} classes ({', '.join(self.names[:5])}"
                          f"{', ...' if num_classes > 5 else ''}); backbone and neck kept"
                          + ("; the head's class-agnostic box and objectness outputs kept" if kept else ""))
            else:
                model.names = list(self.names)
                self._log(f"{config.weights}: all weights loaded; the {num_classes} classes are renamed "
                          f"{old_names[:3]}... -> {self.names[:3]}...")
            model.input_size = (config.imgsz, config.imgsz)
            model.train()
            return model
        config.model = config.model or DEFAULT_MODEL
        model = create_model(config.model, num_classes=num_classes, names=self.names, input_size=config.imgsz)
        if config.backbone_weights:
            report = load_imagenet_backbone(model, config.backbone_weights)
            self._log(f"{config.backbone_weights}: ImageNet backbone loaded into {config.model} ({report}); "
                      f"neck and head initialised at random")
        else:
            self._log(f"{config.model}: training from scratch (random initialisation)")
        return model

    # -- checkpoint ---------------------------------------------------------------------------

    def _state(self, epoch: int, epoch_step: int, step: int, running_seconds: float = 0.0) -> dict[str, Any]:
        """The full training state after ``step`` batches (``epoch_step`` of them in ``epoch``);
        ``running_seconds``: time of the current epoch not yet added to the counters."""
        return {
            "format": "litedet-train",
            "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(),
            "model_config": self.model.config.to_dict(),
            "names": list(self.names),
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema else None,
            "ema_updates": self.ema.updates if self.ema else 0,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            # Gradients accumulated towards the next optimizer step (nbs > batch).
            "grads": [p.grad.detach().clone() if p.grad is not None else None for p in self.model.parameters()],
            "epoch": epoch,
            "epoch_step": epoch_step,
            "step": step,
            "last_opt_step": self.last_opt_step,
            "optimizer_steps": self.optimizer_steps,
            "epoch_loss_sum": self.epoch_loss_sum.tolist(),
            "epoch_images": self.epoch_images,
            "epoch_seconds": self.epoch_seconds + running_seconds,
            "best_fitness": self.best_fitness,
            "best_map50": self.best_map50,
            "train_seconds": self.train_seconds + running_seconds,
            "train_images": self.train_images,
            "rng": _rng_state(),
        }

    @classmethod
    def from_checkpoint(cls, run_dir: str | Path, epochs: int | None = None, device: str | None = None,
                        progress: bool | None = None, train_set: DetectionDataset | None = None,
                        val_set: DetectionDataset | None = None) -> "Trainer":
        """Resume the run in ``run_dir`` (its ``last.pt``); ``epochs`` may extend the schedule's
        length only if the run has not started its cosine (it changes the lr curve otherwise, so
        the result is then not identical to an uninterrupted run of the new length)."""
        run_dir = Path(run_dir)
        path = run_dir / CHECKPOINT_NAME if run_dir.is_dir() else run_dir
        state = load_training_state(path)
        data = dict(state["config"])
        data["out"] = str(path.parent)
        data["stop_after_step"] = None
        if epochs is not None:
            data["epochs"] = epochs
        if device is not None:
            data["device"] = device
        if progress is not None:
            data["progress"] = progress
        config = TrainConfig.from_dict(data, str(path))
        return cls(config, train_set, val_set, resume_state=state)

    def _start_state(self, weight_decay: float) -> None:
        """Optimizer, lr schedule, AMP scaler, EMA and counters of a run at step 0: what ``_state``
        saves and ``_restore`` sets from a checkpoint."""
        config = self.config
        self.optimizer = build_optimizer(self.model, config, weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, CosineSchedule(config.epochs, config.lrf))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.ema = ModelEMA(self.model, config.ema_decay, config.ema_tau) if config.ema else None
        self.start_epoch, self.start_epoch_step, self.step, self.last_opt_step = 0, 0, 0, -1
        self.optimizer_steps = 0
        self.epoch_loss_sum, self.epoch_images, self.epoch_seconds = np.zeros(3), 0, 0.0
        self.best_fitness, self.best_map50 = -1.0, 0.0
        self.train_seconds, self.train_images = 0.0, 0

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.ema and state["ema"] is not None:
            self.ema.module.load_state_dict(state["ema"])
            self.ema.updates = int(state["ema_updates"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        for parameter, grad in zip(self.model.parameters(), state["grads"]):
            parameter.grad = None if grad is None else grad.to(parameter.device)
        self.start_epoch = int(state["epoch"])
        self.start_epoch_step = int(state["epoch_step"])
        self.step = int(state["step"])
        self.last_opt_step = int(state["last_opt_step"])
        self.optimizer_steps = int(state.get("optimizer_steps", 0))
        self.epoch_loss_sum = np.asarray(state["epoch_loss_sum"], dtype=np.float64)
        self.epoch_images = int(state["epoch_images"])
        self.epoch_seconds = float(state["epoch_seconds"])
        self.best_fitness = float(state["best_fitness"])
        self.best_map50 = float(state["best_map50"])
        self.train_seconds = float(state["train_seconds"])
        self.train_images = int(state["train_images"])
        _set_rng_state(state["rng"])
        self._log(f"resumed from {self.out / CHECKPOINT_NAME}: epoch {self.start_epoch + 1}, "
                  f"batch {self.start_epoch_step}, step {self.step}")

    def _save_weights(self, name: str) -> Path:
        from litedet.models.checkpoint import save_checkpoint_weights

        module = self.ema.module if self.ema else self.model
        return save_checkpoint_weights(module, self.out / f"{name}.safetensors")

    # -- evaluation ---------------------------------------------------------------------------

    def _val_annotations(self) -> tuple[Path, Path]:
        """(images folder, COCO json) of the val split for the evaluator."""
        return self.val_set.coco_ground_truth(self.out)

    def evaluate(self) -> Any:
        """COCO mAP of the EMA model (or the model without EMA) on the val split."""
        from litedet.engine.evaluator import evaluate_coco

        module = self.ema.module if self.ema else self.model
        was_training = module.training
        module.eval()
        backend = ModuleBackend(module, module.config, self.device)
        images_dir, annotations = self._val_annotations_cache
        try:
            return evaluate_coco(backend, images_dir, annotations, conf=self.config.conf_threshold,
                                 iou=self.config.iou_threshold, max_det=self.config.max_det, progress=False)
        finally:
            module.train(was_training)

    def _restore_folded_batchnorm(self, dataset: Any, loader: Any, sampler: Any, batch_size: int,
                                  images: int = 64) -> None:
        """Before the first step from a checkpoint: re-estimate folded BatchNorm statistics on up
        to ``images`` training images (epoch-0 augmentation), see ``restore_folded_batchnorm``. The
        loader is re-seeded at every epoch start, so this pass changes nothing that follows."""
        count = sum(isinstance(m, nn.BatchNorm2d) and is_identity_batchnorm(m) for m in self.model.modules())
        if not count:
            return
        dataset.set_epoch(0, use_mosaic=not (self.config.close_mosaic and self.config.epochs <= self.config.close_mosaic))
        sampler.set_epoch(0)
        limit = max(1, math.ceil(images / batch_size))

        def batches() -> Iterable[torch.Tensor]:
            for index, (batch, _, _) in enumerate(loader):
                if index >= limit:
                    break
                yield batch.to(self.device).float() / 255

        restored, seen = restore_folded_batchnorm(self.model, batches())
        self._log(f"{self.config.weights}: {restored} of the checkpoint's BatchNorm layers were folded into their convs "
                  f"(identity statistics, as an import from a deployed model leaves them): statistics re-estimated on "
                  f"{seen} training images so that training starts from the same function")

    # -- the loop -----------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Train until ``config.epochs`` (or ``stop_after_step``); returns what was produced.

        Ctrl-C or SIGTERM stops after the current batch with a resumable ``last.pt`` (and the
        plots written); ``result.interrupted`` is then true. A second Ctrl-C stops at once."""
        check_run_folder(self.out, resuming=self._resume_state is not None)
        with RunFolderLock(self.out), StopRequest() as stop:
            return self._fit(stop)

    def _save_state(self, path: Path, state: dict[str, Any], last_good: str) -> None:
        """``save_training_state``; a full disk (or any OS error) becomes one line naming the path
        and the checkpoint that is still good (the atomic write never replaces it with half a file)."""
        try:
            save_training_state(path, state)
        except OSError as err:
            reason = "no space left on device" if err.errno == errno.ENOSPC else (err.strerror or str(err))
            raise CheckpointWriteError(f"cannot write {path}: {reason}; last good checkpoint: {last_good}") from None

    def _fit(self, stop: StopRequest) -> TrainResult:
        from litedet.progress import progress_bar

        config = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        stale = remove_stale_temp_files(self.out)
        if stale:
            self._log(f"removed {len(stale)} temp file(s) of an interrupted checkpoint write: "
                      f"{', '.join(p.name for p in stale[:3])}")
        batch_size = config.batch
        accumulate_target = max(round(config.nbs / batch_size), 1)
        weight_decay = config.weight_decay * batch_size * accumulate_target / config.nbs
        period_batches, period_seconds = parse_save_period(config.save_period)
        self._start_state(weight_decay)
        criterion = detection_loss(self.model, config.imgsz, config.loss)
        criterion.to(self.device)
        if self._resume_state is not None:
            self._restore(self._resume_state)
            self._resume_state = None
        self._val_annotations_cache = self._val_annotations()

        dataset = DetectionTrainDataset(self.train_set, config.imgsz, config.augment, seed=config.seed, cache=config.cache)
        loader, sampler = build_loader(dataset, batch_size, config.seed, shuffle=True, num_workers=config.workers)
        batches = math.ceil(len(dataset) / batch_size)
        warmup_steps = max(round(config.warmup_epochs * batches), config.warmup_min_steps) if config.warmup_epochs > 0 else 0
        # YOLOv5 warms up for at least 100 steps; a short run keeps at most a third for warm-up.
        warmup_steps = min(warmup_steps, max(config.epochs * batches // 3, 1))
        checkpoint = self.out / CHECKPOINT_NAME
        last_good = str(checkpoint) if self.step > 0 or checkpoint.is_file() else "none (no epoch finished yet)"
        accumulate_note = (f"one optimizer step per {accumulate_target} batches (nominal batch size nbs {config.nbs}; "
                           f"at least one per epoch)" if accumulate_target > 1 else
                           f"one optimizer step per batch (nominal batch size nbs {config.nbs})")
        self._log(f"training {config.model} on {len(self.train_set)} images ({len(self.names)} classes), "
                  f"validating on {len(self.val_set)}; {config.epochs} epochs x {batches} batches of {batch_size} "
                  f"at {config.imgsz} px on {self.device}{' with AMP' if self.use_amp else ''}; {accumulate_note}")
        if self.step == 0 and self._resume_state is None and config.weights:
            self._restore_folded_batchnorm(dataset, loader, sampler, batch_size)
        last_map = last_map50 = None
        stopped = interrupted = False
        epochs_done = self.start_epoch
        last_save_time = time.perf_counter()
        for epoch in range(self.start_epoch, config.epochs):
            if stop.signal is not None:  # asked to stop during the last epoch's evaluation or save
                interrupted = True
                break
            self.model.train()
            mosaic_on = not (config.close_mosaic and epoch >= config.epochs - config.close_mosaic)
            dataset.set_epoch(epoch, use_mosaic=mosaic_on)
            first = self.start_epoch_step if epoch == self.start_epoch else 0
            if first == 0:
                self.epoch_loss_sum, self.epoch_images, self.epoch_seconds = np.zeros(3), 0, 0.0
            sampler.set_epoch(epoch, start=first * batch_size)
            loader.generator.manual_seed(config.seed * 1_000_003 + epoch)  # worker seeds per epoch
            epoch_factor = self.scheduler.lr_lambdas[0](epoch)
            bar = progress_bar(loader, enabled=config.progress, total=batches - first,
                               desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", leave=False)
            started = time.perf_counter()
            try:
                for index, (images, targets, paths) in enumerate(bar, start=first):
                    step = epoch * batches + index
                    accumulate = accumulate_target
                    if step < warmup_steps:
                        accumulate = max(1, round(float(np.interp(step, [0, warmup_steps], [1, accumulate_target]))))
                        for group_index, group in enumerate(self.optimizer.param_groups):
                            start_lr = config.warmup_bias_lr if group_index == 0 else 0.0
                            group["lr"] = float(np.interp(step, [0, warmup_steps], [start_lr, group["initial_lr"] * epoch_factor]))
                            if config.optimizer == "sgd":
                                group["momentum"] = float(np.interp(step, [0, warmup_steps], [config.warmup_momentum, config.momentum]))
                    images = images.to(self.device, non_blocking=True).float() / 255
                    with torch.autocast(self.device.type, enabled=self.use_amp):
                        outputs = self.model(images)
                    loss, items = criterion(outputs, targets.to(self.device))
                    if not torch.isfinite(loss):
                        raise TrainingDivergedError(
                            f"loss is {loss.item()} at step {step + 1} (epoch {epoch + 1}, batch {index + 1}); "
                            f"images in this batch: {', '.join(paths)}; last good checkpoint: {last_good}. "
                            f"Lower lr0, check these labels, or resume from the checkpoint."
                        )
                    self.scaler.scale(loss).backward()
                    # Step when the nominal batch is full, and always at the end of an epoch, so that no
                    # epoch ends with gradients that did not move the weights it is evaluated with.
                    if step - self.last_opt_step >= accumulate or index == batches - 1:
                        self.scaler.unscale_(self.optimizer)
                        if config.grad_clip > 0:
                            nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=config.grad_clip)
                        self.scaler.step(self.optimizer)
                        self.scaler.update()
                        self.optimizer.zero_grad(set_to_none=True)
                        if self.ema:
                            self.ema.update(self.model)
                        self.last_opt_step = step
                        self.optimizer_steps += 1
                    self.epoch_loss_sum += items.cpu().double().numpy() * len(paths)
                    self.epoch_images += len(paths)
                    self.train_images += len(paths)
                    self.step = step + 1
                    mean = self.epoch_loss_sum / max(self.epoch_images, 1)
                    bar.set_postfix(box=f"{mean[0]:.4f}", obj=f"{mean[1]:.4f}", cls=f"{mean[2]:.4f}",
                                    lr=f"{self.optimizer.param_groups[1]['lr']:.2e}")
                    asked = config.stop_after_step is not None and self.step >= config.stop_after_step
                    if asked or stop.signal is not None:
                        elapsed = time.perf_counter() - started
                        self.epoch_seconds += elapsed
                        self.train_seconds += elapsed
                        self._save_state(checkpoint, self._state(epoch, index + 1, self.step), last_good)
                        if asked:
                            self._log(f"stopped after step {self.step} as asked; resume with --resume {self.out}")
                            stopped = True
                        else:
                            interrupted = True
                        break
                    if index + 1 < batches:  # mid-epoch checkpoint (the epoch end writes its own)
                        now = time.perf_counter()
                        if ((period_batches and self.step % period_batches == 0)
                                or (period_seconds and now - last_save_time >= period_seconds)):
                            self._save_state(checkpoint, self._state(epoch, index + 1, self.step, now - started), last_good)
                            last_good = str(checkpoint)
                            last_save_time = now
            except RuntimeError as err:
                # A Ctrl-C in a terminal reaches the data-loading workers too; they exit and the
                # loader reports it. Stop at the last finished batch, as for the Ctrl-C itself.
                if stop.signal is None or "DataLoader worker" not in str(err):
                    raise
                elapsed = time.perf_counter() - started
                self.epoch_seconds += elapsed
                self.train_seconds += elapsed
                self._save_state(checkpoint, self._state(epoch, self.step - epoch * batches, self.step), last_good)
                interrupted = True
            bar.close()
            if stopped or interrupted:
                break
            elapsed = time.perf_counter() - started
            self.epoch_seconds += elapsed
            self.train_seconds += elapsed
            self.start_epoch_step = 0
            epochs_done = epoch + 1
            epoch_lrs = [group["lr"] for group in self.optimizer.param_groups]  # the lr this epoch ended with
            self.scheduler.step()
            last_map = last_map50 = None
            result = None
            if (epoch + 1) % config.eval_interval == 0 or epoch + 1 == config.epochs:
                result = self.evaluate()
                if getattr(result, "note", ""):  # a val split without boxes: nothing to score
                    if epoch + 1 == config.eval_interval or epoch == self.start_epoch:
                        self._log(f"validation: {result.note}")
                else:
                    last_map, last_map50 = result.map50_95, result.map50
            try:
                self._save_weights("last")
                if last_map is not None and last_map > self.best_fitness:
                    self.best_fitness, self.best_map50 = last_map, last_map50 or 0.0
                    self._save_weights("best")
                    if result is not None and getattr(result, "pr_curve", None):
                        self._plot_pr(result.pr_curve, epoch)
                self._write_row(epoch, self.epoch_loss_sum / max(self.epoch_images, 1), epoch_lrs, last_map,
                                last_map50, self.epoch_seconds, self.epoch_images / max(self.epoch_seconds, 1e-9))
            except OSError as err:
                reason = "no space left on device" if err.errno == errno.ENOSPC else (err.strerror or str(err))
                raise CheckpointWriteError(f"cannot write the epoch {epoch + 1} results in {self.out}: {reason}; "
                                           f"last good checkpoint: {last_good}") from None
            self._save_state(checkpoint, self._state(epoch + 1, 0, self.step), last_good)
            last_good = str(checkpoint)
            last_save_time = time.perf_counter()
            mean = self.epoch_loss_sum / max(self.epoch_images, 1)
            self._log(f"epoch {epoch + 1}/{config.epochs}: box {mean[0]:.4f} obj {mean[1]:.4f} cls {mean[2]:.4f}"
                      + (f"; mAP50-95 {last_map:.4f} mAP50 {last_map50:.4f}" if last_map is not None else "")
                      + f"; {self.epoch_seconds:.1f} s")
        if interrupted:
            self._log(f"interrupted ({signal.Signals(stop.signal).name}) at epoch {self.step // batches + 1}, "
                      f"batch {self.step % batches} (step {self.step}); resumable checkpoint {checkpoint}")
        if dataset.skipped:
            self._log(f"skipped {dataset.skipped} unreadable training image load(s) (each replaced by the next "
                      f"readable sample; the warnings above name them)")
        self._plot_results()
        best = self.out / "best.safetensors"
        last = self.out / "last.safetensors"
        return TrainResult(
            out=self.out, epochs_done=epochs_done, steps=self.optimizer_steps,
            best_map50_95=max(self.best_fitness, 0.0), best_map50=self.best_map50,
            last_map50_95=last_map, last_map50=last_map50,
            best_weights=best if best.is_file() else None, last_weights=last if last.is_file() else None,
            train_seconds=self.train_seconds, images_per_second=self.train_images / max(self.train_seconds, 1e-9),
            stopped_early=stopped or interrupted, messages=list(self.messages), batches=self.step,
            interrupted=interrupted, accumulate=accumulate_target,
        )

    # -- outputs ------------------------------------------------------------------------------

    def _write_row(self, epoch: int, losses: np.ndarray, lrs: list[float], map50_95: float | None, map50: float | None,
                   seconds: float, images_per_second: float) -> None:
        path = self.out / "results.csv"
        rows: list[list[str]] = []
        if path.is_file():  # keep earlier epochs, drop a row of this epoch written before a resume
            with open(path, newline="") as handle:
                rows = [row for row in csv.reader(handle)][1:]
            rows = [row for row in rows if row and int(row[0]) < epoch + 1]
        rows.append([str(epoch + 1), *(f"{v:.6f}" for v in losses), *(f"{v:.6g}" for v in lrs),
                     "" if map50 is None else f"{map50:.5f}", "" if map50_95 is None else f"{map50_95:.5f}",
                     f"{seconds:.2f}", f"{images_per_second:.2f}"])
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)
        write_bytes_atomic(path, buffer.getvalue().encode())

    def _plot_results(self) -> None:
        path = self.out / "results.csv"
        if not path.is_file():
            return
        plot_results(path, self.out / "results.png")

    def _plot_pr(self, curve: Any, epoch: int) -> None:
        plot_pr_curve(curve, self.out / "pr_curve.png", title=f"precision-recall at IoU 0.5 (epoch {epoch + 1}, EMA)")


def plot_results(csv_path: Path, png_path: Path) -> None:
    """Losses and mAP per epoch from ``results.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return
    epochs = [int(r["epoch"]) for r in rows]
    figure, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for axis, column in zip(axes[:3], CSV_COLUMNS[1:4]):
        axis.plot(epochs, [float(r[column]) for r in rows], marker=".")
        axis.set_title(column)
        axis.set_xlabel("epoch")
    for column in ("metrics/mAP50", "metrics/mAP50-95"):
        points = [(e, float(r[column])) for e, r in zip(epochs, rows) if r[column]]
        if points:
            axes[3].plot(*zip(*points), marker=".", label=column.split("/")[1])
    axes[3].set_title("val mAP (EMA)")
    axes[3].set_xlabel("epoch")
    if axes[3].lines:
        axes[3].legend()
    figure.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png_path, dpi=100)
    plt.close(figure)


def plot_pr_curve(curve: Any, png_path: Path, title: str = "precision-recall at IoU 0.5") -> None:
    """Precision at COCO's 101 recall points (0, 0.01, ..., 1), mean over classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    precision = np.asarray(curve, dtype=np.float64)
    recall = np.linspace(0, 1, len(precision))
    figure, axis = plt.subplots(figsize=(5, 4.5))
    axis.plot(recall, precision)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)


def train(config: TrainConfig, train_set: DetectionDataset | None = None, val_set: DetectionDataset | None = None) -> TrainResult:
    """Train from ``config`` (see ``TrainConfig``); what ``litedet train`` runs."""
    return Trainer(config, train_set, val_set).fit()


def resume(run_dir: str | Path, epochs: int | None = None, device: str | None = None,
           progress: bool | None = None) -> TrainResult:
    """Continue the run in ``run_dir`` from its ``last.pt``; what ``litedet train --resume`` runs."""
    return Trainer.from_checkpoint(run_dir, epochs=epochs, device=device, progress=progress).fit()
