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
  fp32 - roughly what an engine that runs layer by layer must hold at once (an in-place layer's
  input and output count twice; skip connections are not counted: see ``peak_live_bytes``).
- ``peak_live_bytes``: the most activation memory alive at once during this eager forward pass
  (inference, no autograd): the input plus every tensor the pass allocated and had not yet freed
  (skip connections, concat inputs and the outputs included; weights excluded), tracked at the
  ATen level. An engine that fuses or reuses buffers needs less; one that plans no reuse, more.
- ``activation_bytes``: sum of every leaf layer's output, at fp32 (what training keeps for the
  backward pass, roughly).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import weakref

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


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
    peak_live_bytes: int = 0

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


class _LiveActivations(TorchDispatchMode):
    """Track bytes of tensor storage allocated during a forward pass and still referenced.

    Every tensor an ATen op returns holds a reference on its storage (views share it); the
    storage counts as freed when the last such tensor is garbage (``weakref.finalize``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, int] = {}
        self._bytes: dict[int, int] = {}

    def _release(self, key: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key]
            self.live -= self._bytes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if key == 0 or nbytes == 0:
                continue
            if key not in self._refs:
                if any(arg is not None and _shares_storage(arg, key) for arg in tree_flatten((args, kwargs))[0]):
                    continue  # an in-place op or a view of an input that was not allocated here
                self._refs[key] = 0
                self._bytes[key] = nbytes
                self.live += nbytes
                self.peak = max(self.peak, self.live)
            self._refs[key] += 1
            weakref.finalize(tensor, self._release, key)
        return out


def _shares_storage(value: Any, key: int) -> bool:
    return isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() == key


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
        sample = torch.zeros(batch, in_channels, height, width, device=device)
        tracker = _LiveActivations()
        with tracker:
            output = model(sample)
        del output  # the outputs counted while alive; freeing them now keeps the tracker consistent
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
        peak_live_bytes=sample.numel() * sample.element_size() + tracker.peak,
    )
