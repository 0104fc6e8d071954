"""Knowledge distillation: strategies chosen by name behind one small interface.

Each strategy is an ``nn.Module`` called as ``loss(student: Taps, teacher: Taps) -> Tensor``,
where ``Taps`` holds a network's raw outputs and, for feature strategies, its neck maps. Every
loss is 0 when the student equals the teacher.

- ``response``: detection response KD on the raw YOLO maps. Objectness and class logits are
  matched with temperature T as Bernoulli KL divergences (Hinton et al. 2015 §2, applied per
  sigmoid output), box regression imitates the teacher's raw (tx, ty, tw, th) weighted by the
  teacher's objectness, so only cells where the teacher sees an object teach boxes (Mehta &
  Ozturk, "Object detection at 200 Frames Per Second", ECCV-W 2018, §3.2).
- ``fitnet``: feature imitation (Romero et al., "FitNets", ICLR 2015, §2.2): a 1x1 adaptation
  conv maps each student neck map to the teacher's width; MSE to the teacher's map.
- ``attention``: attention transfer (Zagoruyko & Komodakis, ICLR 2017, §3.1): the spatial map
  ``mean_c |F|^2``, L2-normalised, matched between student and teacher levels.
- ``hinton``: classification KD (Hinton et al., "Distilling the Knowledge in a Neural Network",
  2015, §2): ``T^2 * KL(softmax(t/T) || softmax(s/T))``, for backbones built as classifiers.

``distill_detector`` trains a student detector on detection data with the YOLOv5 loss plus the
chosen strategies (``litedet.compress.finetune``); ``distill_classifier`` trains a backbone on
unlabelled images from the teacher's soft labels alone.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from litedet.compress.checkpoint import model_record
from litedet.compress.finetune import FinetuneConfig, FinetuneResult, finetune

LOGGER = logging.getLogger(__name__)


@dataclass
class Taps:
    """What a network produced in one forward: raw outputs and (optionally) neck feature maps."""

    outputs: list[torch.Tensor]
    features: list[torch.Tensor] = field(default_factory=list)


def _as_list(value: Any) -> list[torch.Tensor]:
    return [value] if isinstance(value, torch.Tensor) else list(value)


@contextlib.contextmanager
def tap_features(model: nn.Module) -> Iterator[list[list[torch.Tensor]]]:
    """Record the output of ``model.neck`` (a detector) during forwards inside the block."""
    store: list[list[torch.Tensor]] = []
    neck = getattr(model, "neck", None)
    if neck is None:
        yield store
        return
    handle = neck.register_forward_hook(lambda _m, _i, out: store.append(_as_list(out)))
    try:
        yield store
    finally:
        handle.remove()


# ------------------------------------------------------------------------------------- losses


def bernoulli_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Elementwise KL(Bern(sigmoid(t/T)) || Bern(sigmoid(s/T))), times T^2."""
    s, t = student_logits / temperature, teacher_logits / temperature
    p = torch.sigmoid(t)
    # BCE(s, p) - BCE(t, p) = KL; both in the numerically stable with-logits form.
    kl = F.binary_cross_entropy_with_logits(s, p, reduction="none") - F.binary_cross_entropy_with_logits(t, p, reduction="none")
    return kl * temperature**2


class ResponseKD(nn.Module):
    """Detection response KD on YOLO raw maps ``[B, na*(5+nc), H, W]`` (see module docstring)."""

    def __init__(self, num_anchors: int, num_classes: int, temperature: float = 2.0,
                 obj_weight: float = 1.0, cls_weight: float = 1.0, box_weight: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.na, self.nc, self.temperature = num_anchors, num_classes, temperature
        self.weights = (obj_weight, cls_weight, box_weight)

    def forward(self, student: Taps, teacher: Taps) -> torch.Tensor:
        if len(student.outputs) != len(teacher.outputs):
            raise ValueError(f"student has {len(student.outputs)} output levels, teacher {len(teacher.outputs)}")
        total = student.outputs[0].new_zeros(())
        no = 5 + self.nc
        for s_map, t_map in zip(student.outputs, teacher.outputs):
            if s_map.shape != t_map.shape:
                raise ValueError(f"response KD needs equal raw map shapes, got {tuple(s_map.shape)} and {tuple(t_map.shape)}")
            b, _, h, w = s_map.shape
            s = s_map.view(b, self.na, no, h, w)
            t = t_map.detach().view(b, self.na, no, h, w)
            obj = bernoulli_kl(s[:, :, 4], t[:, :, 4], self.temperature).mean()
            teacher_obj = torch.sigmoid(t[:, :, 4:5])
            cls = (bernoulli_kl(s[:, :, 5:], t[:, :, 5:], self.temperature) * teacher_obj).mean() if self.nc > 1 else 0.0
            box = ((s[:, :, :4] - t[:, :, :4]) ** 2 * teacher_obj).mean()
            total = total + self.weights[0] * obj + self.weights[1] * cls + self.weights[2] * box
        return total


class FitNetLoss(nn.Module):
    """FitNet hint loss with one 1x1 adaptation conv per level (identity-initialised when the
    widths agree, so a student equal to its teacher starts at 0)."""

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int]) -> None:
        super().__init__()
        if len(student_channels) != len(teacher_channels):
            raise ValueError(f"FitNet needs as many student levels ({len(student_channels)}) as teacher levels ({len(teacher_channels)})")
        self.adapters = nn.ModuleList(nn.Conv2d(s, t, 1, bias=False) for s, t in zip(student_channels, teacher_channels))
        with torch.no_grad():
            for adapter, s, t in zip(self.adapters, student_channels, teacher_channels):
                if s == t:
                    adapter.weight.copy_(torch.eye(s).view(s, s, 1, 1))

    def forward(self, student: Taps, teacher: Taps) -> torch.Tensor:
        if not student.features or not teacher.features:
            raise ValueError("FitNet needs neck feature maps from both networks (detectors with a neck)")
        losses = []
        for adapter, s, t in zip(self.adapters, student.features, teacher.features):
            mapped = adapter(s)
            if mapped.shape[-2:] != t.shape[-2:]:
                mapped = F.interpolate(mapped, size=t.shape[-2:], mode="bilinear", align_corners=False)
            losses.append(F.mse_loss(mapped, t.detach()))
        return torch.stack(losses).mean()


def attention_map(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Spatial attention ``mean_c |F|^p``, flattened and L2-normalised per sample: [B, H*W]."""
    return F.normalize(feature.abs().pow(p).mean(1).flatten(1), dim=1)


class AttentionTransfer(nn.Module):
    """Attention transfer between matching neck levels (no parameters)."""

    def __init__(self, p: float = 2.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, student: Taps, teacher: Taps) -> torch.Tensor:
        if not student.features or not teacher.features:
            raise ValueError("attention transfer needs neck feature maps from both networks")
        losses = []
        for s, t in zip(student.features, teacher.features):
            if s.shape[-2:] != t.shape[-2:]:
                s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
            losses.append((attention_map(s, self.p) - attention_map(t.detach(), self.p)).pow(2).sum(1).mean())
        return torch.stack(losses).mean()


class HintonKD(nn.Module):
    """Classification KD on logits ``[B, classes]``."""

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, student: Taps, teacher: Taps) -> torch.Tensor:
        s, t = student.outputs[0], teacher.outputs[0].detach()
        if s.shape != t.shape:
            raise ValueError(f"Hinton KD needs equal logit shapes, got {tuple(s.shape)} and {tuple(t.shape)}")
        temp = self.temperature
        return F.kl_div(F.log_softmax(s / temp, 1), F.log_softmax(t / temp, 1), reduction="batchmean", log_target=True) * temp**2


STRATEGIES = ("response", "fitnet", "attention", "hinton")


def _neck_channels(model: nn.Module) -> list[int]:
    neck = getattr(model, "neck", None)
    if neck is None or not hasattr(neck, "out_channels"):
        raise ValueError(f"{type(model).__name__} has no neck with declared out_channels for feature distillation")
    return list(neck.out_channels)


def _neck_channels_measured(model: nn.Module, imgsz: int) -> list[int]:
    """Neck widths from a forward (a pruned neck's declared widths are stale)."""
    device = next(model.parameters()).device
    with tap_features(model) as store, torch.no_grad():
        was = model.training
        model.eval()
        model(torch.zeros(1, 3, imgsz, imgsz, device=device))
        model.train(was)
    return [f.shape[1] for f in store[0]] if store else _neck_channels(model)


def create_strategy(name: str, student: nn.Module, teacher: nn.Module, temperature: float = 2.0,
                    imgsz: int = 64) -> nn.Module:
    """A distillation loss by name for this student/teacher pair."""
    if name == "response":
        check_compatible(student, teacher)
        head = getattr(getattr(student, "config", None), "head", "yolo")
        if head != "yolo":
            raise ValueError(f"the 'response' strategy imitates YOLO heads (sigmoid objectness and classes); "
                             f"{student.config.model} has a {head!r} head: use 'fitnet' or 'attention'")
        return ResponseKD(student.head.num_anchors, student.num_classes, temperature)
    if name == "fitnet":
        return FitNetLoss(_neck_channels_measured(student, imgsz), _neck_channels_measured(teacher, imgsz))
    if name == "attention":
        return AttentionTransfer()
    if name == "hinton":
        return HintonKD(temperature)
    raise ValueError(f"unknown distillation strategy {name!r}; choose from {list(STRATEGIES)}")


def check_compatible(student: nn.Module, teacher: nn.Module) -> None:
    """Teacher and student must predict the same classes with the same head layout."""
    s_names, t_names = list(getattr(student, "names", [])), list(getattr(teacher, "names", []))
    if s_names != t_names:
        raise ValueError(
            f"teacher classes ({len(t_names)}: {t_names[:3]}...) differ from the student's ({len(s_names)}: {s_names[:3]}...); "
            f"fine-tune the teacher on the student's classes first"
        )
    for attr in ("strides", "anchors"):
        if getattr(student, attr, None) != getattr(teacher, attr, None):
            raise ValueError(f"teacher and student {attr} differ: {getattr(teacher, attr, None)} vs {getattr(student, attr, None)}")


class Distiller(nn.Module):
    """Weighted sum of strategies: ``Distiller({"response": 1.0, "attention": 50.0}, ...)``."""

    def __init__(self, strategies: dict[str, float], student: nn.Module, teacher: nn.Module,
                 temperature: float = 2.0, imgsz: int = 64) -> None:
        super().__init__()
        if not strategies:
            raise ValueError("give at least one distillation strategy")
        unknown = sorted(set(strategies) - set(STRATEGIES))
        if unknown:
            raise ValueError(f"unknown distillation strategies {unknown}; choose from {list(STRATEGIES)}")
        self.weights = dict(strategies)
        self.losses = nn.ModuleDict({name: create_strategy(name, student, teacher, temperature, imgsz) for name in strategies})
        self.needs_features = any(name in ("fitnet", "attention") for name in strategies)

    def forward(self, student: Taps, teacher: Taps) -> torch.Tensor:
        return sum(self.weights[name] * loss(student, teacher) for name, loss in self.losses.items())  # type: ignore[return-value]


def teacher_taps(teacher: nn.Module, images: torch.Tensor) -> Taps:
    """The teacher's outputs and neck maps for ``images`` (no gradients, eval mode)."""
    with torch.no_grad(), tap_features(teacher) as store:
        outputs = _as_list(teacher(images))
    return Taps(outputs, store[-1] if store else [])



def distill_detector(
    student: nn.Module,
    teacher: nn.Module,
    data: str,
    strategies: dict[str, float] | None = None,
    temperature: float = 2.0,
    config: FinetuneConfig | None = None,
    detection_loss_weight: float = 1.0,
) -> FinetuneResult:
    """Train ``student`` on ``data`` with the YOLOv5 loss plus the distillation ``strategies``
    (name -> weight; default ``{"response": 1.0}``) from a frozen ``teacher``.

    The training loop is ``litedet.compress.finetune.finetune`` with the distillation loss added,
    so a student trained alone with the same ``config`` differs only by that loss (folded
    BatchNorms of an imported student get statistics there, ``config.restore_images``)."""
    strategies = strategies or {"response": 1.0}
    check_compatible(student, teacher)
    config = config or FinetuneConfig()
    imgsz = config.imgsz or int(max(student.input_size))
    device = torch.device(config.device)
    teacher.to(device).eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    student.to(device)
    distiller = Distiller(strategies, student, teacher, temperature, imgsz=min(imgsz, 128)).to(device)
    store: list[list[torch.Tensor]] = []
    neck = getattr(student, "neck", None)
    handle = neck.register_forward_hook(lambda _m, _i, out: store.append(_as_list(out))) if neck is not None else None

    def extra_loss(model: nn.Module, images: torch.Tensor, outputs: Sequence[torch.Tensor]) -> torch.Tensor:
        student_taps = Taps(list(outputs), store[-1] if store else [])
        store.clear()
        return distiller(student_taps, teacher_taps(teacher, images))

    try:
        result = finetune(student, data, config, extra_loss=extra_loss, extra_parameters=list(distiller.parameters()),
                          detection_loss_weight=detection_loss_weight)
    finally:
        if handle is not None:
            handle.remove()
    model_record(student)["steps"].append({"step": "distill", "strategies": strategies, "temperature": temperature,
                                           "teacher": getattr(teacher, "model_name", type(teacher).__name__)})
    return result


def distill_classifier(
    student: nn.Module,
    teacher: nn.Module,
    images: Sequence[Any],
    steps: int = 100,
    batch: int = 16,
    imgsz: int = 224,
    lr: float = 0.01,
    temperature: float = 4.0,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Hinton KD of a classifier backbone on unlabelled images (paths): the teacher's softened
    predictions are the only targets. Images are resized to ``imgsz`` and normalised with the
    ImageNet mean/std. Returns the loss per step."""
    import cv2
    import numpy as np
    from litedet.progress import progress_bar

    if not images:
        raise ValueError("classifier distillation needs at least one image")
    mean = np.array([0.485, 0.456, 0.406], np.float32) * 255
    std = np.array([0.229, 0.224, 0.225], np.float32) * 255

    def load(path: Any) -> torch.Tensor:
        image = cv2.imread(str(path))
        if image is None:
            raise ValueError(f"cannot read image {path}")
        image = cv2.resize(image, (imgsz, imgsz))[:, :, ::-1].astype(np.float32)
        return torch.from_numpy(((image - mean) / std).transpose(2, 0, 1).copy())

    kd = HintonKD(temperature)
    teacher.eval()
    student.train()
    optimizer = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for step in progress_bar(range(steps), enabled=progress, desc="distill", leave=False):
        picks = torch.randint(len(images), (batch,), generator=generator).tolist()
        x = torch.stack([load(images[i]) for i in picks])
        if torch.rand((), generator=generator) < 0.5:
            x = x.flip(3)
        with torch.no_grad():
            t = _as_list(teacher(x))
        loss = kd(Taps(_as_list(student(x))), Taps(t))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
    student.eval()
    return losses
