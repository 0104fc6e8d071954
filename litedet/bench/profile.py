"""Counting a model: parameters, multiply-adds, memory access cost (MAC) and activation memory.

Counted with forward hooks on leaf modules during one forward pass at a given input size, so the
same code counts classifiers and detectors (any output structure).

Definitions (say which when you report them):
- ``madds``: multiply-accumulate operations of Conv2d and Linear layers (bias excluded).
  FLOPs = 2 x madds; the ShuffleNetV2/MobileNet papers report madds and call them "FLOPs"/"MFLOPs".
- ``mac``: memory access cost as in ShuffleNetV2 §2 (G1): for every Conv2d/Linear layer, input
  feature-map elements + output feature-map elements + weight elements. For a 1x1 conv this is
  hw(c1 + c2) + c1c2. Elements, not bytes (x4 for fp32).
- ``mac_all``: the same sum over every leaf module (BN, activations, pooling included), closer to
  what an unfused engine reads and writes. Functional ops (concat, add, split, shuffle) have no
  module and are not counted in either.
- ``peak_activation_bytes``: the largest (input + output) of any single leaf layer, in bytes at
  fp32 - a lower bound of the activation memory an engine that runs layer by layer must hold.
- ``activation_bytes``: sum of every leaf layer's output, at fp32 (what training keeps for the
  backward pass, roughly).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
from torch import nn


@dataclass
class LayerProfile:
    """One leaf module's execution."""

    name: str
    type: str
    input_shape: list[int]
    output_shape: list[int]
    params: int
    madds: int
    mac: int


@dataclass
class ModelProfile:
    """Counts for one model at one input size (see the module docstring for definitions)."""

    params: int
    madds: int
    mac: int
    mac_all: int
    peak_activation_bytes: int
    activation_bytes: int
    input_size: tuple[int, int]
    batch: int
    layers: list[LayerProfile] = field(default_factory=list)

    @property
    def flops(self) -> int:
        """2 x multiply-adds."""
        return 2 * self.madds

    def to_dict(self, with_layers: bool = False) -> dict[str, Any]:
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        data["flops"] = self.flops
        if not with_layers:
            data.pop("layers")
        return data


def _numel(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    if isinstance(value, dict):
        return _first_tensor(list(value.values()))
    return None


def _layer_madds(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def normalize_input_size(input_size: int | Sequence[int]) -> tuple[int, int]:
    """``320`` or ``(h, w)`` -> ``(h, w)``, rejecting non-positive sizes."""
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(int(v) for v in input_size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"input size must be a positive int or (height, width), got {input_size!r}")
    return size  # type: ignore[return-value]


@torch.no_grad()
def profile_model(
    model: nn.Module,
    input_size: int | Sequence[int] = 224,
    batch: int = 1,
    in_channels: int = 3,
) -> ModelProfile:
    """Count params, multiply-adds, MAC and activation memory of ``model`` at ``input_size``.

    The model runs once in eval mode on zeros of shape [batch, in_channels, H, W] on the device
    of its parameters; its training mode is restored afterwards.
    """
    height, width = normalize_input_size(input_size)
    if batch <= 0:
        raise ValueError(f"batch must be > 0, got {batch}")
    layers: list[LayerProfile] = []
    mac_all = 0
    handles = []
    names = {module: name for name, module in model.named_modules()}

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        nonlocal mac_all
        tensor_in = _first_tensor(inputs)
        tensor_out = _first_tensor(output)
        if tensor_in is None or tensor_out is None:
            return
        params = sum(p.numel() for p in module.parameters(recurse=False))
        in_elems, out_elems = tensor_in.numel(), tensor_out.numel()
        mac_all += in_elems + out_elems + params
        is_compute = isinstance(module, (nn.Conv2d, nn.Linear))
        layers.append(
            LayerProfile(
                name=names.get(module, type(module).__name__),
                type=type(module).__name__,
                input_shape=list(tensor_in.shape),
                output_shape=list(tensor_out.shape),
                params=params,
                madds=_layer_madds(module, tensor_out),
                mac=in_elems + out_elems + params if is_compute else 0,
            )
        )

    for module in model.modules():
        if not list(module.children()):
            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        model.eval()
        model(torch.zeros(batch, in_channels, height, width, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    peak = max(((_numel(l.input_shape) + _numel(l.output_shape)) for l in layers), default=0)
    return ModelProfile(
        params=sum(p.numel() for p in model.parameters()),
        madds=sum(l.madds for l in layers),
        mac=sum(l.mac for l in layers),
        mac_all=mac_all,
        peak_activation_bytes=4 * peak,
        activation_bytes=4 * sum(_numel(l.output_shape) for l in layers),
        input_size=(height, width),
        batch=batch,
        layers=layers,
    )
