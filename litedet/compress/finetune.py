"""A compact fine-tuning loop for compressed detectors.

``litedet.engine.trainer.Trainer`` builds its model from a registry name, so it cannot take a
pruned or decomposed network object; this loop reuses its parts instead: the checked dataset
(``litedet.data``), the deterministic loader, the YOLOv5 loss (``litedet.engine.loss``), and adds
what compression needs: an ``extra_loss(model, images, outputs)`` term (distillation, BN
sparsity) and an ``after_backward(model)`` hook (the network-slimming subgradient).
SGD with momentum, a short linear warm-up, cosine decay, gradient clipping, optional EMA of the
weights (``ema=True``; the trainer's ``ModelEMA`` with a window sized to the run).

Before the first step, BatchNorms folded into their convs (an imported deployed model, or a
pruned one made from it) get real statistics (``litedet.layers.conv.restore_folded_batchnorm``):
in train mode such a network normalises by batch statistics its weights never expected, and the
fine-tune starts from a broken function (issue 4: imported v5lite-s 0.335 -> 0.0003 mAP50-95
after one COCO epoch without it; issue 7: the 30 %-pruned model's fine-tune ended at 0.0005).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

LOGGER = logging.getLogger(__name__)

ExtraLoss = Callable[[nn.Module, torch.Tensor, Sequence[torch.Tensor]], torch.Tensor]


def check_imgsz(value: int | None, where: str) -> None:
    """A training input size must be a positive multiple of 32 (the largest YOLO stride)."""
    if value is not None and (value < 32 or value % 32):
        raise ValueError(f"{where} must be a multiple of 32 (>= 32), got {value}")


@dataclass
class FinetuneConfig:
    """Settings of a short fine-tuning run (``steps`` overrides ``epochs`` when given)."""

    epochs: int = 3
    steps: int | None = None
    batch: int = 8
    imgsz: int | None = None  # default: the model's input size; when given, it becomes the model's
    lr: float = 0.002
    momentum: float = 0.937
    weight_decay: float = 5e-4
    warmup_steps: int = 20
    grad_clip: float = 10.0
    augment: bool = True
    seed: int = 0
    ema: bool = False  # keep an exponential moving average of the weights and end with it
    freeze_bn: bool = False  # BatchNorm statistics fixed (eval mode) while training; gamma/beta still learn
    restore_images: int = 64  # training images for re-estimating folded BatchNorm statistics
    workers: int = 0
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        check_imgsz(self.imgsz, "imgsz")
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
    restored_batchnorms: int = 0
    ema: bool = False


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
    from litedet.progress import progress_bar

    from litedet.data.augment import AugmentConfig
    from litedet.data.datasets import load_data_config
    from litedet.data.loader import DetectionTrainDataset, build_loader
    from litedet.engine.loss import detection_loss

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
    criterion = detection_loss(model, imgsz).to(device)
    model.to(device)
    result = FinetuneResult(steps=0)
    result.restored_batchnorms = _restore_folded(model, dataset, loader, sampler, config, device)
    _train_mode(model, config.freeze_bn)
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_parameters)
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=True,
                                weight_decay=config.weight_decay)
    warmup = min(config.warmup_steps, max(total // 3, 1))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1))) * 0.99 + 0.01

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    ema = _make_ema(model, total) if config.ema else None
    bar = progress_bar(enabled=config.progress, total=total, desc="fine-tune", unit="step", leave=False)
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
            if ema is not None:
                ema.update(model)
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
    if ema is not None:
        model.load_state_dict(ema.module.state_dict())
        result.ema = True
    if config.imgsz and tuple(model.input_size) != (imgsz, imgsz):
        LOGGER.info("trained at %d: the model's input size (sidecar, exports) becomes %dx%d", imgsz, imgsz, imgsz)
        model.input_size = (imgsz, imgsz)
    model.eval()
    return result


def _train_mode(model: nn.Module, freeze_bn: bool) -> None:
    """Train mode; with ``freeze_bn`` every BatchNorm stays in eval mode (normalising by its
    running statistics, which then stay fixed): with a few hundred images and batches of 8, batch
    statistics of mosaic-augmented crops are a noisy stand-in for the statistics the network is
    evaluated with, and a pruned network whose statistics were just re-estimated starts from
    exactly the function it is evaluated as."""
    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def _restore_folded(model: nn.Module, dataset: Any, loader: Any, sampler: Any, config: FinetuneConfig,
                    device: torch.device) -> int:
    """Re-estimate folded (identity) BatchNorm statistics on ``config.restore_images`` training
    images (epoch-0 augmentation, as the trainer does); the loader is re-seeded per epoch, so the
    run that follows is unchanged. Returns the number of layers restored."""
    from litedet.layers.conv import is_identity_batchnorm, restore_folded_batchnorm

    if config.restore_images < 1 or not any(isinstance(m, nn.BatchNorm2d) and is_identity_batchnorm(m)
                                            for m in model.modules()):
        return 0
    dataset.set_epoch(0)
    sampler.set_epoch(0)
    limit = max(1, math.ceil(config.restore_images / config.batch))

    def batches() -> Iterator[torch.Tensor]:
        for index, (images, _, _) in enumerate(loader):
            if index >= limit:
                break
            yield images.to(device).float() / 255

    restored, seen = restore_folded_batchnorm(model, batches())
    LOGGER.info("%d folded BatchNorm layers given statistics on %d training images", restored, seen)
    return restored


def _make_ema(model: nn.Module, total: int) -> Any:
    """The trainer's ``ModelEMA`` (YOLOv5) sized to a short run: the decay ramps up over the
    first ~5 % of the steps and then averages over roughly the last 15 % (YOLOv5's fixed
    0.9999 / tau 2000 would leave a few-hundred-step fine-tune at its starting weights)."""
    from litedet.engine.trainer import ModelEMA

    window = max(0.15 * total, 2.0)
    return ModelEMA(model, decay=1 - 1 / window, tau=max(0.05 * total, 1.0))
