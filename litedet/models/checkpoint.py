"""Detector weights on disk: ``model.safetensors`` + the ``model.json`` config sidecar.

``load_detector`` is the one place a torch detector is opened from a file: plain checkpoints,
compressed ones (pruned or decomposed: the sidecar's ``extra["compression"]`` record says how to
rebuild the structure) and published ncnn graphs (``litedet.models.ncnn_import``). Never
unpickles anything: weights are safetensors (or an ncnn ``.param``/``.bin`` pair), the sidecar is
JSON.

The compression record (written by ``litedet.compress``):

- ``"lowrank"``: ``{module name: {"kind": "svd" | "cp", "rank": r, "fold_bn", "bias"}}``, the
  layers replaced by factor layers (re-created before the weights are loaded);
- ``"pruned"``: True when channels were removed; the new widths are read from the tensor shapes
  stored in the safetensors file itself;
- ``"steps"``: the history (method, settings) for reports.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from litedet.config import ModelConfig, find_config, sidecar_path, write_bytes_atomic
from litedet.layers.lowrank import cp_factor_modules, svd_factor_modules
from litedet.models.detector import Detector

logger = logging.getLogger(__name__)

# Registered detectors tried, in order, when an ncnn graph is given without an architecture.
_NCNN_GUESSES = ("v5lite-s", "v5lite-e")

# ModelConfig.extra key of the compression record (see the module docstring).
COMPRESSION_KEY = "compression"


def compression_record(config: ModelConfig | None) -> dict[str, Any]:
    """The ``extra["compression"]`` record of a config (empty when the model is uncompressed)."""
    if config is None:
        return {}
    return dict(config.extra.get(COMPRESSION_KEY, {}))


def save_checkpoint_weights(model: Detector, path: str | os.PathLike, config: ModelConfig | None = None) -> Path:
    """Write ``model``'s weights as safetensors and its config sidecar (``X.safetensors`` ->
    ``X.json``), each atomically. A pruned or decomposed model's compression record
    (``model.compression``) goes into the sidecar, so ``load_detector`` can rebuild it. Returns
    the weights path."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"weights path must end in .safetensors, got {path}")
    config = config or model.config
    record = getattr(model, "compression", None)
    if record and not compression_record(config):
        config = copy.deepcopy(config)
        config.extra = {**config.extra, COMPRESSION_KEY: copy.deepcopy(record)}
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    metadata = {"format": "litedet", "model": config.model}
    write_bytes_atomic(path, save_safetensors_bytes(state, metadata=metadata))
    config.save(sidecar_path(path))
    return path


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    data = path.read_bytes()
    try:
        tensors = load_safetensors_bytes(data)
    except (SafetensorError, ValueError, RuntimeError, OSError) as err:
        raise ValueError(f"{path}: not a litedet/ncnn model (not a readable safetensors file: {err})") from None
    # The header is a little-endian u64 length + JSON; its "__metadata__" names the model.
    metadata: dict[str, str] = {}
    try:
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__", {}) or {}
    except (ValueError, AttributeError):
        metadata = {}
    return tensors, metadata


def _check_state(model: Detector, tensors: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    """Raise ValueError naming the first tensor of the wrong shape (both shapes), else the first
    missing or extra one."""
    expected = model.state_dict()
    for key, value in expected.items():
        if key in tensors and tuple(tensors[key].shape) != tuple(value.shape):
            raise ValueError(
                f"{path} does not fit {arch}: tensor {key!r} has shape {list(tensors[key].shape)} in the file, "
                f"{arch} expects {list(value.shape)}"
            )
    missing = [key for key in expected if key not in tensors]
    extra = [key for key in tensors if key not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{arch} needs {missing[0]!r} {list(expected[missing[0]].shape)}, missing from the file")
        if extra:
            parts.append(f"the file has {extra[0]!r} {list(tensors[extra[0]].shape)}, unknown to {arch}")
        raise ValueError(
            f"{path} does not fit {arch} ({len(missing)} tensors missing, {len(extra)} unexpected): "
            + "; ".join(parts)
        )


def _build(model_name: str, config: ModelConfig | None, num_classes: int | None) -> Detector:
    from litedet.models.registry import create_model, model_kind

    if model_kind(model_name) != "detector":
        raise ValueError(f"{model_name!r} is a backbone, not a detector")
    kwargs: dict[str, Any] = {}
    if config is not None:
        kwargs.update(num_classes=config.num_classes, names=config.names, input_size=tuple(config.input_size))
        if config.head == "yolo":
            kwargs["anchors"] = config.anchors
    elif num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = create_model(model_name, **kwargs)
    if not isinstance(model, Detector):
        raise ValueError(f"{model_name!r} does not build a Detector")
    if config is not None:
        model.preprocess = config.preprocess
        model.source = config.source
    return model


def _load_ncnn(param: Path, model_name: str | None, num_classes: int | None) -> tuple[Detector, ModelConfig]:
    from litedet.models.ncnn_import import import_ncnn

    candidates = (model_name,) if model_name else _NCNN_GUESSES
    errors = []
    for arch in candidates:
        try:
            model = import_ncnn(param, arch)
        except ValueError as err:
            if "does not fit" not in str(err):
                raise
            errors.append(str(err))
            continue
        if num_classes is not None and num_classes != model.num_classes:
            model.reset_head(num_classes)
        return model, model.config
    raise ValueError(errors[0] if len(errors) == 1 else f"{param} fits none of {list(candidates)}; pass --model. {errors[0]}")


def _parent(model: nn.Module, name: str) -> nn.Module:
    parent_name = name.rpartition(".")[0]
    return model.get_submodule(parent_name) if parent_name else model


def apply_lowrank_structure(model: nn.Module, layers: dict[str, dict[str, Any]]) -> nn.Module:
    """Re-create recorded factor layers (random init) on a fresh registry model, so a decomposed
    checkpoint's weights load strictly."""
    for name, spec in layers.items():
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"decomposed layer {name!r} not found in the model; the checkpoint belongs to another model") from None
        kind, rank = spec["kind"], int(spec["rank"])
        if spec.get("fold_bn"):
            parent = _parent(model, name)
            layer = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                              layer.dilation, layer.groups, bias=True)
            parent.bn = nn.Identity()
        factors = svd_factor_modules(layer, rank, spec.get("bias")) if kind == "svd" else cp_factor_modules(layer, rank)
        model.set_submodule(name, factors)
    return model


def resize_to_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> int:
    """Resize Conv2d / BatchNorm2d / Linear layers of ``model`` in place to the shapes in ``state``
    (the widths a pruned checkpoint was saved with). Depthwise convs stay depthwise. Returns the
    number of layers changed."""
    changed = 0
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        weight = state.get(prefix + "weight")
        if weight is None:
            continue
        if isinstance(module, nn.Conv2d):
            out_c, in_per_group = weight.shape[:2]
            depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
            groups = out_c if depthwise else module.groups
            in_c = in_per_group * groups
            if (out_c, in_c) != (module.out_channels, module.in_channels):
                module.out_channels, module.in_channels, module.groups = out_c, in_c, groups
                module.weight = nn.Parameter(torch.empty_like(weight))
                if module.bias is not None:
                    module.bias = nn.Parameter(torch.empty(out_c))
                changed += 1
        elif isinstance(module, nn.BatchNorm2d):
            features = weight.shape[0]
            if features != module.num_features:
                module.num_features = features
                module.weight = nn.Parameter(torch.empty(features))
                module.bias = nn.Parameter(torch.empty(features))
                module.running_mean = torch.zeros(features)
                module.running_var = torch.ones(features)
                changed += 1
        elif isinstance(module, nn.Linear):
            out_f, in_f = weight.shape
            if (out_f, in_f) != (module.out_features, module.in_features):
                module.out_features, module.in_features = out_f, in_f
                module.weight = nn.Parameter(torch.empty_like(weight))
                if module.bias is not None:
                    module.bias = nn.Parameter(torch.empty(out_f))
                changed += 1
    return changed


def apply_compression_structure(model: nn.Module, record: dict[str, Any], state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Give a freshly built registry model the structure a compression ``record`` describes
    (factor layers; pruned widths from ``state``) and keep the record on it (``model.compression``)
    so that saving it again keeps the history."""
    lowrank = record.get("lowrank") or {}
    if lowrank:
        apply_lowrank_structure(model, lowrank)
    if state is not None and record.get("pruned"):
        resize_to_state_dict(model, state)
    model.compression = copy.deepcopy(record)  # type: ignore[attr-defined]
    return model


def _load_compressed(path: Path, config: ModelConfig) -> tuple[Detector, ModelConfig]:
    """A pruned or decomposed checkpoint: the registry model rebuilt, the recorded structure
    re-applied, the weights loaded strictly."""
    tensors, _ = _read_safetensors(path)
    model = _build(config.model, config, None)
    apply_compression_structure(model, compression_record(config), tensors)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not match the compressed {config.model!r} its sidecar describes "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model.eval(), config


def _refuse_other_files(path: Path) -> None:
    """One line for the files people hand to a verb that needs litedet weights: a training run's
    resume state, a PyTorch pickle, or a model already exported for an engine."""
    suffix = path.suffix.lower()
    if path.name == "last.pt" and (path.parent / "last.safetensors").is_file():
        raise ValueError(f"{path} is the resume state of a training run; its weights are "
                         f"{path.parent / 'best.safetensors'} (best mAP) and {path.parent / 'last.safetensors'}")
    if suffix in (".pt", ".pth", ".ckpt"):
        raise ValueError(f"{path}: a PyTorch pickle, which litedet does not open (unpickling runs code); "
                         "give litedet .safetensors weights (`litedet import` converts the published YOLOv5-Lite ncnn .param + .bin)")
    if suffix in (".onnx", ".xml") or (suffix == ".bin" and path.with_suffix(".xml").is_file()):
        raise ValueError(f"{path} is already exported for an engine: run it with `litedet detect` / `litedet val`; "
                         "this takes the .safetensors weights it was exported from")


def load_detector(
    weights: str | os.PathLike,
    model_name: str | None = None,
    num_classes: int | None = None,
) -> tuple[Detector, ModelConfig]:
    """Load a detector for inference or fine-tuning; returns ``(model in eval mode, config)``.

    ``weights`` is a ``.safetensors`` file with its ``.json`` sidecar (``model_name`` must agree
    with the sidecar, or stands in for a missing one), a pruned or decomposed checkpoint (its
    sidecar records the structure), or an ncnn ``.param`` (``.bin`` beside it; ``model_name`` picks
    the architecture, else v5lite-s then v5lite-e are tried). ``num_classes`` different from the
    stored one replaces the head (fine-tuning on new classes).

    Raises FileNotFoundError naming a missing file, ValueError for a file that is not a model
    ("not a litedet/ncnn model"), that belongs to another architecture (first mismatched tensor)
    or whose sidecar names another model than ``model_name``.
    """
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.name.endswith(".param"):
        return _load_ncnn(path, model_name, num_classes)
    head = path.read_bytes()[:8]
    if head.startswith(str(7767517).encode()):
        raise ValueError(f"{path} is an ncnn .param file; name it *.param (its .bin beside it) to import it")
    _refuse_other_files(path)
    config = find_config(path)
    if compression_record(config):
        # Pruned/decomposed weights: the registry model must first take the recorded structure.
        if model_name and model_name != config.model:
            raise ValueError(f"{path} is a compressed {config.model!r} (see {sidecar_path(path)}), not {model_name!r}")
        model, config = _load_compressed(path, config)
        if num_classes is not None and num_classes != model.num_classes:
            model.reset_head(num_classes)
            return model, model.config
        return model, config
    tensors, metadata = _read_safetensors(path)
    arch = model_name or (config.model if config else None) or metadata.get("model")
    if not arch:
        raise ValueError(
            f"{path}: no config sidecar {sidecar_path(path)} and no model name; pass --model (see `litedet models`)"
        )
    if config is not None and model_name and model_name != config.model:
        raise ValueError(f"--model {model_name!r} does not match {sidecar_path(path)}, which says {config.model!r}")
    model = _build(arch, config, num_classes if config is None else None)
    _check_state(model, tensors, path, arch)
    model.load_state_dict(tensors, strict=True)
    model.eval()
    if num_classes is not None and num_classes != model.num_classes:
        model.reset_head(num_classes)
    return model, (config if config is not None and num_classes in (None, config.num_classes) else model.config)
