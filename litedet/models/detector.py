"""``Detector(backbone, neck, head)``: a backbone's feature list -> neck -> raw head maps."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from litedet.config import COCO_NAMES, ModelConfig, Preprocess


class Detector(nn.Module):
    """A single-stage detector that stops at raw head maps (decode/NMS live in ``litedet.ops``).

    The backbone runs in ``features_only`` mode and declares ``out_channels``/``strides``; the neck
    reads those and declares its own; the head predicts from the neck's maps. ``forward`` returns
    the head's list of raw maps (see the head's docstring for the layout).

    Args:
        backbone, neck, head: the three parts.
        names: class names (``len(names) == head.num_classes``); COCO names by default for 80.
        input_size: (height, width) the model is meant to run at.
        model_name: the registry name, recorded in the config sidecar.
        preprocess: how images become inputs (YOLOv5: RGB, /255, letterbox pad 114).
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        head: nn.Module,
        names: Sequence[str] | None = None,
        input_size: int | Sequence[int] = 640,
        model_name: str = "detector",
        preprocess: Preprocess | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.model_name = model_name
        size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"input_size must be an int or (height, width) > 0, got {input_size!r}")
        self.input_size: tuple[int, int] = (int(size[0]), int(size[1]))
        self.preprocess = preprocess or Preprocess()
        self.names = self._check_names(names, head.num_classes)
        self.source = ""  # where the weights came from (e.g. an imported ncnn file), for the sidecar

    @staticmethod
    def _check_names(names: Sequence[str] | None, num_classes: int) -> list[str]:
        if names is None:
            return list(COCO_NAMES) if num_classes == len(COCO_NAMES) else [f"class{i}" for i in range(num_classes)]
        names = [str(n) for n in names]
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} class names given for {num_classes} classes: {names[:5]}...")
        return names

    @property
    def num_classes(self) -> int:
        """Classes the head predicts."""
        return self.head.num_classes

    @property
    def strides(self) -> list[int]:
        """Stride of each output level."""
        return list(self.head.strides)

    @property
    def anchors(self) -> list[list[list[float]]]:
        """Per level, (w, h) anchors (YOLO) or prior boxes (SSDLite) in input pixels."""
        return [[list(pair) for pair in level] for level in self.head.anchors]

    @property
    def config(self) -> ModelConfig:
        """The sidecar describing this model (input size, names, anchors, preprocessing, layout)."""
        extra: dict[str, Any] = dict(self.head.config_extra())
        return ModelConfig(
            model=self.model_name,
            num_classes=self.num_classes,
            names=list(self.names),
            input_size=self.input_size,
            strides=self.strides,
            anchors=self.anchors,
            head=self.head.kind,
            preprocess=Preprocess(**vars(self.preprocess)),
            source=self.source,
            extra=extra,
        )

    def reset_head(self, num_classes: int, names: Sequence[str] | None = None, keep_box_obj: bool = True,
                   keep_classes: Sequence[int] | None = None) -> bool:
        """New prediction layers for ``num_classes`` classes (fine-tuning); the rest is kept. The
        head also keeps its class-agnostic rows (``keep_box_obj``: YOLO's box and objectness,
        SSDLite's box predictors) and, with ``keep_classes`` (per new class, the old class index),
        those classes' rows (see ``YoloHead.reset``, ``SSDLiteHead.reset``); returns whether rows
        were kept."""
        names = self._check_names(names, num_classes)
        options = {"keep_classes": keep_classes} if keep_classes is not None else {}
        kept = self.head.reset(num_classes, keep_box_obj=keep_box_obj, **options)
        self.head.train(self.training)  # new layers follow the model's train/eval mode
        self.names = names
        return bool(kept)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.head(self.neck(self.backbone(x)))
