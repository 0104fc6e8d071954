"""Activation factory: a string or a class in, an export-safe module out."""

from __future__ import annotations

from typing import Callable, Union

from torch import nn

ActLayer = Union[str, type[nn.Module], Callable[..., nn.Module], None]

# Hardswish/Hardsigmoid are the MobileNetV3 piece-wise approximations (paper §5.2);
# torch's built-ins export to ONNX as HardSwish/HardSigmoid, which every engine here runs.
_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "hard_swish": nn.Hardswish,
    "hswish": nn.Hardswish,
    "hard_sigmoid": nn.Hardsigmoid,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "identity": nn.Identity,
}


def get_act_layer(act: ActLayer) -> type[nn.Module] | Callable[..., nn.Module]:
    """Resolve ``act`` (a name such as ``"hard_swish"``, a module class or None) to a class."""
    if act is None:
        return nn.Identity
    if isinstance(act, str):
        key = act.lower()
        if key not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; choose one of {sorted(_ACTIVATIONS)}")
        return _ACTIVATIONS[key]
    return act


def create_act(act: ActLayer, inplace: bool = False) -> nn.Module:
    """Instantiate an activation; in-place only where asked (in-place ops break some tracers)."""
    layer = get_act_layer(act)
    if layer in (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU):
        return layer(inplace=inplace)
    return layer()
