"""Named detectors: YOLOv5-Lite and the same PAN + YOLO head (or an SSDLite head) on zoo backbones.

Each builder is thin (STYLE: a registry with thin builders) and accepts ``num_classes``, ``names``
and ``input_size`` overrides; ``create_model("v5lite-s", num_classes=3, names=[...])``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

from torch import nn

from litedet.config import YOLOV5_ANCHORS
from litedet.models.backbones.shufflenetv2 import ShuffleNetV2
from litedet.models.detector import Detector
from litedet.models.heads.ssdlite import SSDLiteHead
from litedet.models.heads.yolo import YoloHead
from litedet.models.necks.pan import PAN_CONFIGS, PANConfig, YoloPAN
from litedet.models.necks.ssd import SSDLiteExtras
from litedet.models.registry import create_model, list_models, register_model


class YoloLiteConfig(NamedTuple):
    """One YOLOv5-Lite variant: backbone table, neck widths, default input size."""

    stem: int  # 3x3 s2 conv + 3x3 s2 max-pool (no Focus)
    stage_channels: tuple[int, int, int]  # ShuffleNetV2 stage2..4 outputs
    stage_repeats: tuple[int, int, int]  # units per stage, the first one stride 2
    neck: PANConfig
    input_size: int


# Read from the published ncnn graphs: ShuffleNetV2 1.0x widths (stage2 116 -> make_divisible 120),
# without conv5 and the final pooling; e has 2 units in stage4, s keeps 4.
YOLO_LITE_CONFIGS: dict[str, YoloLiteConfig] = {
    #                            stem  stage2..4          repeats    neck                    size
    "v5lite-e": YoloLiteConfig(32, (120, 232, 464), (4, 8, 2), PAN_CONFIGS["v5lite-e"], 320),
    "v5lite-s": YoloLiteConfig(32, (120, 232, 464), (4, 8, 4), PAN_CONFIGS["v5lite-s"], 416),
}


def _detector_kwargs(kwargs: dict[str, Any], default_size: int) -> tuple[int, Any, Any]:
    num_classes = kwargs.pop("num_classes", None)
    names = kwargs.pop("names", None)
    if num_classes is None:
        num_classes = len(names) if names is not None else 80
    input_size = kwargs.pop("input_size", None) or kwargs.pop("imgsz", None) or default_size
    kwargs.pop("imgsz", None)
    if kwargs:
        raise ValueError(f"unexpected detector options {sorted(kwargs)}; use num_classes, names, input_size, anchors")
    return num_classes, names, input_size


def build_yolo_lite(name: str, **kwargs: Any) -> Detector:
    """YOLOv5-Lite ``name`` ("v5lite-e" or "v5lite-s")."""
    if name not in YOLO_LITE_CONFIGS:
        raise ValueError(f"unknown YOLOv5-Lite variant {name!r}; choose one of {sorted(YOLO_LITE_CONFIGS)}")
    cfg = YOLO_LITE_CONFIGS[name]
    anchors = kwargs.pop("anchors", None) or YOLOV5_ANCHORS
    num_classes, names, input_size = _detector_kwargs(kwargs, cfg.input_size)
    backbone = ShuffleNetV2(
        cfg.stage_repeats,
        (cfg.stem, *cfg.stage_channels),
        num_classes=0,
        features_only=True,
        with_conv5=False,
    )
    neck = YoloPAN(backbone.out_channels, backbone.strides, cfg.neck)
    head = YoloHead(neck.out_channels, neck.strides, num_classes, anchors)
    return Detector(backbone, neck, head, names=names, input_size=input_size, model_name=name)


def _named(name: str, builder: Callable[..., Detector], doc: str) -> Callable[..., Detector]:
    builder.model_name = name  # type: ignore[attr-defined]
    builder.__name__ = name.replace("-", "_")
    builder.__doc__ = doc
    return builder


def _v5lite_e(**kwargs: Any) -> Detector:
    return build_yolo_lite("v5lite-e", **kwargs)


def _v5lite_s(**kwargs: Any) -> Detector:
    return build_yolo_lite("v5lite-s", **kwargs)


register_model(kind="detector")(
    _named("v5lite-e", _v5lite_e, "YOLOv5-Lite-e @320: 0.78M params, 0.73 GFLOPs (published).")
)
register_model(kind="detector")(
    _named("v5lite-s", _v5lite_s, "YOLOv5-Lite-s @416: 1.64M params, 1.66 GFLOPs (published).")
)


# ---- the same PAN + YOLO head on any zoo backbone -------------------------------------------------


def backbone_for_detection(backbone_name: str, strides: Sequence[int], **backbone_kwargs: Any) -> nn.Module:
    """A registered backbone in feature mode, returning the maps at ``strides`` (the deepest stage
    of each stride). ShuffleNetV2 drops conv5 as YOLOv5-Lite does."""
    extra: dict[str, Any] = dict(backbone_kwargs)
    if backbone_name.startswith("shufflenetv2"):
        extra.setdefault("with_conv5", False)
    probe = create_model(backbone_name, features_only=True, num_classes=0, **extra)
    stage_strides = list(getattr(probe, "stage_strides", probe.strides))
    indices = []
    for stride in strides:
        matches = [i for i, s in enumerate(stage_strides) if s == stride]
        if not matches:
            raise ValueError(f"backbone {backbone_name!r} has no stage at stride {stride} (stage strides {stage_strides})")
        indices.append(matches[-1])
    if list(probe.strides) == list(strides) and list(getattr(probe, "out_indices", indices)) == indices:
        return probe
    return create_model(backbone_name, features_only=True, num_classes=0, out_indices=indices, **extra)


def build_yolo_on(backbone_name: str, model_name: str, neck: PANConfig = PAN_CONFIGS["v5lite-s"], **kwargs: Any) -> Detector:
    """The v5lite-s PAN and the YOLOv5 head on the stride 8/16/32 maps of a zoo backbone."""
    anchors = kwargs.pop("anchors", None) or YOLOV5_ANCHORS
    num_classes, names, input_size = _detector_kwargs(kwargs, 416)
    backbone = backbone_for_detection(backbone_name, (8, 16, 32))
    pan = YoloPAN(backbone.out_channels, backbone.strides, neck)
    head = YoloHead(pan.out_channels, pan.strides, num_classes, anchors)
    return Detector(backbone, pan, head, names=names, input_size=input_size, model_name=model_name)


# detector name -> registered backbone name
YOLO_BACKBONES: dict[str, str] = {
    "yolo-shufflenetv2_x0_5": "shufflenetv2_x0_5",
    "yolo-shufflenetv2_x1_0": "shufflenetv2_x1_0",
    "yolo-mobilenetv1_x1_0": "mobilenetv1_x1_0",
    "yolo-mobilenetv2_x1_0": "mobilenetv2_x1_0",
    "yolo-mobilenetv3_small": "mobilenetv3_small_x1_0",
    "yolo-mobilenetv3_large": "mobilenetv3_large_x1_0",
    "yolo-vovnet27_slim": "vovnet27_slim",
}


def _make_yolo_builder(model_name: str, backbone_name: str) -> Callable[..., Detector]:
    def builder(**kwargs: Any) -> Detector:
        return build_yolo_on(backbone_name, model_name, **kwargs)

    return _named(model_name, builder, f"v5lite-s PAN + YOLOv5 head on {backbone_name} (stride 8/16/32 maps).")


# Only for backbones that exist in this build (importing the backbones package registered them).
_BACKBONES = set(list_models(kind="backbone"))
for _name, _backbone in YOLO_BACKBONES.items():
    if _backbone in _BACKBONES:
        register_model(kind="detector")(_make_yolo_builder(_name, _backbone))


# ---- SSDLite on MobileNetV2/V3 (MobileNetV2 paper §6.2) -------------------------------------------


def build_ssdlite(backbone_name: str, model_name: str, **kwargs: Any) -> Detector:
    """SSDLite: the stride 16/32 maps of ``backbone_name``, four extra blocks, depthwise-separable
    predictors; 320x320 input by default (the paper's setting)."""
    num_classes, names, input_size = _detector_kwargs(kwargs, 320)
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    backbone = backbone_for_detection(backbone_name, (16, 32))
    extras = SSDLiteExtras(backbone.out_channels, backbone.strides)
    head = SSDLiteHead(extras.out_channels, extras.strides, num_classes, input_size=size)
    return Detector(backbone, extras, head, names=names, input_size=size, model_name=model_name)


SSDLITE_BACKBONES: dict[str, str] = {
    "ssdlite-mobilenetv2": "mobilenetv2_x1_0",
    "ssdlite-mobilenetv3_large": "mobilenetv3_large_x1_0",
    "ssdlite-mobilenetv3_small": "mobilenetv3_small_x1_0",
}


def _make_ssdlite_builder(model_name: str, backbone_name: str) -> Callable[..., Detector]:
    def builder(**kwargs: Any) -> Detector:
        return build_ssdlite(backbone_name, model_name, **kwargs)

    return _named(model_name, builder, f"SSDLite on {backbone_name} (MobileNetV2 paper §6.2), 320x320.")


for _name, _backbone in SSDLITE_BACKBONES.items():
    if _backbone in _BACKBONES:
        register_model(kind="detector")(_make_ssdlite_builder(_name, _backbone))
