"""Pruning: structured channel pruning with Torch-Pruning, and unstructured magnitude pruning.

Structured pruning (Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023) removes
whole channels; Torch-Pruning's ``DependencyGraph`` finds every layer coupled to a channel (the
BN after a conv, the convs that read a concat, both sides of a residual add) so the pruned network
is smaller *and* still runs. What stays fixed:

- the detection head's prediction convs (their outputs are the anchor/class layout);
- the outputs of ShuffleNetV2 units: channel split + shuffle (a view/transpose/reshape)
  interleave the two branches, which no channel index mapping expresses, so each unit's
  ``branch2`` bottleneck (1x1 -> dw 3x3 -> 1x1) is pruned inside on its own graph, and a
  detector's neck + head on the graph traced from the backbone's feature maps.

Importance criteria are chosen by name behind Torch-Pruning's ``Importance.__call__(group)``:

- ``l1``: L1 norm of the filters of a group (Li et al., "Pruning Filters for Efficient ConvNets",
  ICLR 2017, §3.1);
- ``bn_scale``: |gamma| of the BatchNorms (Liu et al., "Network Slimming", ICCV 2017, §3.2),
  after a short sparse-training phase with an L1 penalty on gamma (``BNSparsity``);
- ``magnitude``: unstructured (``torch.nn.utils.prune``): weights set to zero, shapes unchanged,
  so a dense engine runs exactly as fast and the dense file is exactly as big (reported as such).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune as torch_prune

from litedet.compress.checkpoint import model_record
from litedet.layers.shuffle import ShuffleV2Block

LOGGER = logging.getLogger(__name__)

STRUCTURED_METHODS = ("l1", "bn_scale")
METHODS = (*STRUCTURED_METHODS, "magnitude")


def create_importance(name: str) -> tp.importance.Importance:
    """A Torch-Pruning importance criterion by name (``l1`` or ``bn_scale``)."""
    factories: dict[str, Callable[[], tp.importance.Importance]] = {
        "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
        "bn_scale": lambda: tp.importance.BNScaleImportance(),
    }
    if name not in factories:
        raise ValueError(f"unknown structured pruning importance {name!r}; choose one of {sorted(factories)}")
    return factories[name]()


def check_ratio(ratio: float, what: str = "pruning ratio") -> float:
    """A fraction strictly between 0 and 1."""
    if not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) < 1.0:
        raise ValueError(f"{what} must be in (0, 1), got {ratio!r}")
    return float(ratio)


# ----------------------------------------------------------------------------- network slimming


class BNSparsity:
    """L1 sparsity on BatchNorm scales (Network Slimming §3.2: ``L = loss + lambda * sum |gamma|``).

    Use either as a loss term (``loss = loss + sparsity.loss()``) or as a gradient hook after
    ``backward()`` (``sparsity.add_subgradient()``, the reference implementation's
    ``grad += lambda * sign(gamma)``), not both. ``exclude`` names module prefixes whose BNs are
    kept dense (e.g. layers whose channels can never be pruned).
    """

    def __init__(self, model: nn.Module, strength: float = 1e-4, exclude: Sequence[str] = ()) -> None:
        if strength < 0:
            raise ValueError(f"BN sparsity strength must be >= 0, got {strength}")
        self.strength = float(strength)
        self.norms = [
            module
            for name, module in model.named_modules()
            if isinstance(module, nn.BatchNorm2d) and module.affine and not any(name.startswith(p) for p in exclude)
        ]
        if not self.norms:
            raise ValueError("BN sparsity needs a model with BatchNorm2d layers; none were found")

    def loss(self) -> torch.Tensor:
        """``strength * sum |gamma|`` over the tracked BatchNorms."""
        return self.strength * sum(bn.weight.abs().sum() for bn in self.norms)

    @torch.no_grad()
    def add_subgradient(self) -> None:
        """Add ``strength * sign(gamma)`` to every gamma's gradient (call after ``backward``)."""
        for bn in self.norms:
            if bn.weight.grad is not None:
                bn.weight.grad.add_(self.strength * torch.sign(bn.weight))

    def __call__(self, model: nn.Module | None = None) -> torch.Tensor:
        return self.loss()


# ------------------------------------------------------------------------------ structured


@dataclass
class PruneResult:
    """What a pruning step did: parameter counts and MACs before/after, channels removed."""

    method: str
    ratio: float
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    channels_before: int
    channels_after: int
    sparsity: float | None = None  # unstructured: share of prunable weights that are zero
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def count_conv_channels(model: nn.Module) -> int:
    """Sum of output channels over every Conv2d (what structured pruning reduces)."""
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def _head_layers(model: nn.Module) -> list[nn.Module]:
    """Layers whose outputs are a fixed layout: a detector head's prediction convs, a classifier's fc."""
    fixed: list[nn.Module] = []
    head = getattr(model, "head", None)
    if head is not None and hasattr(head, "convs"):
        fixed.extend(head.convs)
    fc = getattr(model, "fc", None)
    if isinstance(fc, nn.Linear):
        fixed.append(fc)
    if not fixed:
        # A plain network: keep the last conv/linear (its outputs are the model's outputs).
        last = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        fixed.extend(last[-1:])
    return fixed


def _example_input(model: nn.Module, imgsz: int | tuple[int, int] | None) -> torch.Tensor:
    size = imgsz or getattr(model, "input_size", None) or 224
    height, width = (size, size) if isinstance(size, int) else size
    device = next(model.parameters()).device
    return torch.randn(1, 3, int(height), int(width), device=device)


def _capture_inputs(model: nn.Module, modules: Sequence[nn.Module], example: torch.Tensor) -> list[torch.Tensor]:
    """The input each of ``modules`` sees when ``model`` runs ``example``."""
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        module.register_forward_pre_hook(lambda mod, args, key=id(module): seen.setdefault(key, args[0]))
        for module in modules
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return [seen[id(module)] for module in modules]  # type: ignore[misc]


def structured_prune(
    model: nn.Module,
    ratio: float,
    importance: str = "l1",
    imgsz: int | tuple[int, int] | None = None,
    round_to: int | None = None,
) -> PruneResult:
    """Remove ``ratio`` of the channels of every prunable group of ``model`` in place.

    ``importance`` is ``l1`` or ``bn_scale``. ``round_to`` keeps channel counts multiples of
    that number (hardware-friendly widths). The model keeps its output shapes.
    """
    check_ratio(ratio)
    criterion = create_importance(importance)
    was_training = model.training
    model.eval()
    example = _example_input(model, imgsz)
    params_before = count_params(model)
    macs_before, _ = tp.utils.count_ops_and_params(model, example)
    channels_before = count_conv_channels(model)
    units = [m for m in model.modules() if isinstance(m, ShuffleV2Block)]
    if units:
        _prune_around_shuffle_units(model, units, example, importance, ratio, round_to)
    else:
        tp.pruner.MetaPruner(
            model, example, importance=criterion, pruning_ratio=ratio, ignored_layers=_head_layers(model),
            round_to=round_to,
        ).step()
    macs_after, _ = tp.utils.count_ops_and_params(model, example)
    model.train(was_training)
    result = PruneResult(
        method=importance, ratio=ratio, params_before=params_before, params_after=count_params(model),
        macs_before=int(macs_before), macs_after=int(macs_after),
        channels_before=channels_before, channels_after=count_conv_channels(model),
    )
    record = model_record(model)
    record["pruned"] = True
    record["steps"].append({"step": "prune", "method": importance, "ratio": ratio})
    LOGGER.info("pruned %s: params %d -> %d", importance, result.params_before, result.params_after)
    return result


def _prune_around_shuffle_units(
    model: nn.Module,
    units: Sequence[ShuffleV2Block],
    example: torch.Tensor,
    importance: str,
    ratio: float,
    round_to: int | None,
) -> None:
    """Channel split + shuffle (a view/transpose/reshape) cannot be expressed as a channel index
    mapping, so the network is pruned in parts that can: every unit's ``branch2`` bottleneck on
    its own graph (its last 1x1 keeps the unit's width), and, for a detector, the neck + head
    traced from the backbone's feature maps (the maps' widths are the units' widths, kept)."""
    tracked = [unit.branch2 for unit in units]
    has_neck = hasattr(model, "neck") and hasattr(model, "head") and hasattr(model, "backbone")
    inputs = _capture_inputs(model, [*tracked, *([model.neck] if has_neck else [])], example)
    for branch, branch_input in zip(tracked, inputs):
        convs = [m for m in branch.modules() if isinstance(m, nn.Conv2d)]
        tp.pruner.MetaPruner(
            branch, torch.randn_like(branch_input), importance=create_importance(importance), pruning_ratio=ratio,
            ignored_layers=[convs[-1]], round_to=round_to,
        ).step()
    if has_neck:
        features = [torch.randn_like(f) for f in inputs[-1]]  # type: ignore[union-attr]
        tp.pruner.MetaPruner(
            model, features, importance=create_importance(importance), pruning_ratio=ratio,
            ignored_layers=[*_head_layers(model), model.backbone], round_to=round_to,
            forward_fn=lambda net, maps: net.head(net.neck(maps)),
        ).step()


# ----------------------------------------------------------------------------- unstructured


def magnitude_prune(model: nn.Module, ratio: float, include_head: bool = False) -> PruneResult:
    """Zero the ``ratio`` smallest-magnitude weights over all convs and linears (global, L1),
    made permanent (``torch.nn.utils.prune.remove``). Shapes, file size of a dense file and dense
    latency are unchanged; ``sparsity`` in the result is the share of zeros reached."""
    check_ratio(ratio)
    fixed = set() if include_head else {id(m) for m in _head_layers(model)}
    targets = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in fixed]
    if not targets:
        raise ValueError("magnitude pruning found no Conv2d/Linear weights to prune")
    params = count_params(model)
    channels = count_conv_channels(model)
    torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured, amount=ratio)
    for module, name in targets:
        torch_prune.remove(module, name)
    result = PruneResult(
        method="magnitude", ratio=ratio, params_before=params, params_after=count_params(model),
        macs_before=0, macs_after=0, channels_before=channels, channels_after=count_conv_channels(model),
        sparsity=weight_sparsity(model, [m for m, _ in targets]),
        notes=["unstructured: tensors keep their shapes; a dense engine runs the same MACs and a dense file "
               "has the same size unless stored sparse or compressed"],
    )
    model_record(model)["steps"].append({"step": "prune", "method": "magnitude", "ratio": ratio})
    return result


def weight_sparsity(model: nn.Module, modules: Sequence[nn.Module] | None = None) -> float:
    """Share of exactly-zero weights over ``modules`` (default: every Conv2d and Linear)."""
    modules = modules or [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    total = sum(m.weight.numel() for m in modules)
    zeros = sum(int((m.weight == 0).sum()) for m in modules)
    return zeros / total if total else 0.0


def prune(model: nn.Module, ratio: float, method: str = "l1", imgsz: int | tuple[int, int] | None = None,
          round_to: int | None = None) -> PruneResult:
    """Prune by ``method``: ``l1`` / ``bn_scale`` (structured) or ``magnitude`` (unstructured)."""
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose one of {list(METHODS)}")
    if method == "magnitude":
        return magnitude_prune(model, ratio)
    return structured_prune(model, ratio, method, imgsz=imgsz, round_to=round_to)


def prune_to_latency(
    model: nn.Module,
    target_ms: float,
    measure: Callable[[nn.Module], float],
    method: str = "l1",
    step: float = 0.1,
    max_ratio: float = 0.9,
    imgsz: int | tuple[int, int] | None = None,
) -> tuple[list[dict[str, float]], PruneResult | None]:
    """Prune in steps of ``step`` (of the remaining channels) until ``measure(model)`` (median ms
    on the named engine) is at or below ``target_ms`` or ``max_ratio`` of the original channels
    are gone. Returns the measured trajectory and the last step's result."""
    if method not in STRUCTURED_METHODS:
        raise ValueError(f"--target-latency needs a structured method ({list(STRUCTURED_METHODS)}), got {method!r}")
    if target_ms <= 0:
        raise ValueError(f"target latency must be > 0 ms, got {target_ms}")
    check_ratio(step, "pruning step")
    channels0 = count_conv_channels(model)
    latency = measure(model)
    trajectory = [{"removed": 0.0, "latency_ms": latency, "params": count_params(model)}]
    last = None
    while latency > target_ms:
        removed = 1 - count_conv_channels(model) / channels0
        if removed + step > max_ratio:
            LOGGER.warning("stopped at %.0f%% channels removed without reaching %.2f ms", 100 * removed, target_ms)
            break
        last = structured_prune(model, step, method, imgsz=imgsz)
        latency = measure(model)
        trajectory.append({"removed": 1 - count_conv_channels(model) / channels0, "latency_ms": latency,
                           "params": count_params(model)})
    return trajectory, last
