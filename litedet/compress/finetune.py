"""A compact fine-tuning loop for compressed detectors.

``litedet.engine.trainer.Trainer`` builds its model from a registry name, so it cannot take a
pruned or decomposed network object; this loop reuses its parts instead: the checked dataset
(``litedet.data``), the deterministic loader, the YOLOv5 loss (``litedet.engine.loss``), and adds
what compression needs: an ``extra_loss(model, images, outputs)`` term (distillation, BN
sparsity) and an ``after_backward(model)`` hook (the network-slimming subgradient).
SGD with momentum, a short linear warm-up, cosine decay, gradient clipping; no EMA.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

LOGGER = logging.getLogger(__name__)

ExtraLoss = Callable[[nn.Module, torch.Tensor, Sequence[torch.Tensor]], torch.Tensor]


@dataclass
class FinetuneConfig:
    """Settings of a short fine-tuning run (``steps`` overrides ``epochs`` when given)."""

    epochs: int = 3
    steps: int | None = None
    batch: int = 8
    imgsz: int | None = None  # default: the model's input size
    lr: float = 0.002
    momentum: float = 0.937
    weight_decay: float = 5e-4
    warmup_steps: int = 20
    grad_clip: float = 10.0
    augment: bool = True
    seed: int = 0
    workers: int = 0
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or (self.steps is not None and self.steps < 1):
            raise ValueError(f"epochs and steps must be >= 1, got epochs={self.epochs} steps={self.steps}")
        if self.batch < 1 or self.lr <= 0:
            raise ValueError(f"batch must be >= 1 and lr > 0, got batch={self.batch} lr={self.lr}")


@dataclass
class FinetuneResult:
    """Mean loss per logged step and the number of optimizer steps taken."""

    steps: int
    losses: list[float] = field(default_factory=list)
    extra_losses: list[float] = field(default_factory=list)


def finetune(
    model: nn.Module,
    data: str,
    config: FinetuneConfig | None = None,
    extra_loss: ExtraLoss | None = None,
    after_backward: Callable[[nn.Module], None] | None = None,
    extra_parameters: Sequence[nn.Parameter] = (),
    detection_loss_weight: float = 1.0,
) -> FinetuneResult:
    """Train ``model`` (a detector) on the ``train`` split of the dataset YAML ``data``.

    ``extra_loss`` is added to the YOLOv5 loss (weighted by ``detection_loss_weight``) at every
    step; ``extra_parameters`` (e.g. distillation adapters) are optimised with the model.
    """
    from tqdm import tqdm

    from litedet.data.augment import AugmentConfig
    from litedet.data.datasets import load_data_config
    from litedet.data.loader import DetectionTrainDataset, build_loader
    from litedet.engine.loss import YoloLoss

    config = config or FinetuneConfig()
    device = torch.device(config.device)
    train_set = load_data_config(data).load_split("train")
    if list(train_set.names) != list(model.names):
        if len(train_set.names) != model.num_classes:
            raise ValueError(f"{data}: {len(train_set.names)} classes in the data, the model predicts {model.num_classes}")
        LOGGER.warning("class names of %s differ from the model's; training by class index", data)
    imgsz = config.imgsz or int(max(model.input_size))
    augment = AugmentConfig() if config.augment else AugmentConfig.off()
    dataset = DetectionTrainDataset(train_set, imgsz, augment, seed=config.seed)
    loader, sampler = build_loader(dataset, config.batch, config.seed, shuffle=True, num_workers=config.workers)
    per_epoch = math.ceil(len(dataset) / config.batch)
    total = config.steps or config.epochs * per_epoch
    criterion = YoloLoss(model.num_classes, model.strides, model.anchors, imgsz).to(device)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_parameters)
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=True,
                                weight_decay=config.weight_decay)
    warmup = min(config.warmup_steps, max(total // 3, 1))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1))) * 0.99 + 0.01

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    result = FinetuneResult(steps=0)
    bar = tqdm(total=total, desc="fine-tune", unit="step", disable=not config.progress, leave=False)
    epoch = 0
    while result.steps < total:
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch)
        for images, targets, _paths in loader:
            images = images.to(device).float() / 255
            outputs = model(images)
            loss, _ = criterion(outputs, targets.to(device))
            loss = loss * detection_loss_weight
            extra = extra_loss(model, images, outputs) if extra_loss is not None else None
            total_loss = loss + extra if extra is not None else loss
            if not torch.isfinite(total_loss):
                raise RuntimeError(f"fine-tuning loss is {total_loss.item()} at step {result.steps + 1}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            total_loss.backward()
            if after_backward is not None:
                after_backward(model)
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(params, max_norm=config.grad_clip)
            optimizer.step()
            scheduler.step()
            result.steps += 1
            result.losses.append(float(loss.detach()))
            if extra is not None:
                result.extra_losses.append(float(extra.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{result.losses[-1]:.3f}")
            if result.steps >= total:
                break
        epoch += 1
    bar.close()
    model.eval()
    return result
