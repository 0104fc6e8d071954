"""Loading published ImageNet weights onto litedet backbones (local files only, never pickles)."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from litedet.layers import ShuffleV2Block, SqueezeExcite
from litedet.models.backbones.shufflenetv2 import SHUFFLENETV2_CONFIGS, ShuffleNetV2

logger = logging.getLogger(__name__)


@dataclass
class LoadReport:
    """What a loader placed: tensors loaded, file keys it could not place, model keys left unset."""

    loaded: list[str] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    # ShuffleNetV2 from Megvii weights, torchvision routing: per stage output (stage2..4),
    # ``ours[:, j] == megvii[:, perm[j]]``; empty when the model's routing needs no permutation.
    feature_permutations: list[list[int]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every tensor of the file landed (the model may still have keys the file lacks)."""
        return not self.unplaced

    def summary(self) -> str:
        return (
            f"{len(self.loaded)} tensors loaded, {len(self.unplaced)} file keys not placed"
            f"{' ' + str(self.unplaced[:5]) if self.unplaced else ''}, {len(self.missing)} model keys not in the file"
            f"{' ' + str(self.missing[:5]) if self.missing else ''}"
        )


def load_pickle_safely(path: Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain data only, no code is run. A file
    that is not ``what`` is one ``ValueError`` naming it (torch's own advice to retry without
    ``weights_only`` is left out: for a file of unknown origin that would run its code)."""
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about the file before raising
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{path}: not {what} (it holds Python objects beyond tensors and plain data; "
                         "litedet does not unpickle them)") from None
    except Exception as err:  # noqa: BLE001 - torch raises several types for bytes that are no checkpoint
        first = (str(err).strip().splitlines() or [""])[0]
        raise ValueError(f"{path}: not {what} ({type(err).__name__}{': ' + first if first else ''})") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a .pth/.pt (``weights_only=True``: no code is unpickled) or .safetensors file,
    unwrapping a ``state_dict``/``model`` key and a DataParallel ``module.`` prefix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = load_pickle_safely(path, "a readable PyTorch state dict")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a dict of tensors (a state dict)")
    return {re.sub(r"^module\.", "", k): v for k, v in state.items()}


def _megvii_to_litedet(key: str) -> str:
    """Megvii ShuffleNetV2 names -> ours: ``first_conv.0`` -> ``conv1.conv``, ``branch_main`` ->
    ``branch2``, ``branch_proj`` -> ``branch1`` (sequential indices coincide)."""
    key = re.sub(r"^first_conv\.0\.", "conv1.conv.", key)
    key = re.sub(r"^first_conv\.1\.", "conv1.bn.", key)
    key = re.sub(r"^conv_last\.0\.", "conv5.conv.", key)
    key = re.sub(r"^conv_last\.1\.", "conv5.bn.", key)
    key = re.sub(r"^classifier\.0\.", "fc.", key)
    key = key.replace(".branch_main.", ".branch2.").replace(".branch_proj.", ".branch1.")
    return key


@dataclass
class StagePermutation:
    """How one ShuffleNetV2 stage of the torchvision routing reproduces the Megvii routing.

    Channel lists follow the convention ``ours[:, j] == megvii[:, perm[j]]``.

    Attributes:
        input: stage input channels (identity for stage2, the previous stage's ``output`` after).
        proj_rows: output rows of the stride-2 unit's ``branch1`` (Megvii ``branch_proj``).
        main_rows: output rows of each unit's ``branch2`` (Megvii ``branch_main``), unit 0 first.
        main_cols: input channels of each stride-1 unit's ``branch2`` (``None`` for unit 0,
            which sees the whole stage input, permuted by ``input``).
        output: stage output channels.
    """

    input: list[int]
    proj_rows: list[int]
    main_rows: list[list[int]]
    main_cols: list[list[int] | None]
    output: list[int]


def _interleave(labels: list) -> list:
    """``channel_shuffle(x, 2)`` on a list: [a0..a(h-1), b0..b(h-1)] -> [a0, b0, a1, b1, ...]."""
    half = len(labels) // 2
    return [label for pair in zip(labels[:half], labels[half:]) for label in pair]


def _route_stage(channels: int, units: int, order: str) -> tuple[dict[int, list], list]:
    """Follow channel labels ``(unit, branch, row)`` through one stage of either routing.

    Returns, per stride-1 unit, the labels its ``branch2`` consumes (in input order), and the
    labels of the stage output. torchvision: a stride-1 unit keeps the first half, feeds the
    second half to the branch and shuffles its output; Megvii: it keeps the even channels, feeds
    the odd ones, and does not shuffle.
    """
    half = channels // 2
    x = [(0, "proj", i) for i in range(half)] + [(0, "main", i) for i in range(half)]
    if order == "torchvision":
        x = _interleave(x)
    consumed = {}
    for unit in range(1, units):
        keep, branch = (x[:half], x[half:]) if order == "torchvision" else (x[0::2], x[1::2])
        consumed[unit] = branch
        x = keep + [(unit, "main", i) for i in range(half)]
        if order == "torchvision":
            x = _interleave(x)
    return consumed, x


def megvii_to_torchvision_permutations(
    stage_repeats: Sequence[int], stage_channels: Sequence[int]
) -> list[StagePermutation]:
    """Weight permutations that make a torchvision-routed ShuffleNetV2 compute what Megvii's does.

    The two routings send different channels down the identity path, but in both each stride-1
    unit keeps half of what each earlier unit produced and consumes the other half, so every
    channel has the same *fate* in both networks: born in unit u's branch, consumed by unit v's
    branch (or surviving to the stage output), with equal counts for every (u, v). Matching
    channels of equal fate gives a bijection; permuting the rows of each branch's last 1x1 conv
    (+ BN) and the input columns of each branch's first conv then makes the two networks compute
    the same function. Stage outputs are equal up to the ``output`` channel permutation (absorbed
    by the next stage's convs, and by conv5 in a classifier). Checked exactly, not assumed: a
    fate that has no partner raises (it does not happen for any Table 5 width).
    """
    plans = []
    previous_output: list[int] | None = None
    for repeats, channels in zip(stage_repeats, stage_channels):
        ours_consumed, ours_out = _route_stage(channels, repeats, "torchvision")
        theirs_consumed, theirs_out = _route_stage(channels, repeats, "megvii")

        def fates(consumed: dict[int, list], output: list) -> dict[tuple, object]:
            fate: dict[tuple, object] = {label: unit for unit, labels in consumed.items() for label in labels}
            fate.update({label: repeats for label in output})  # "survives" sorts after every unit
            return fate

        ours_fate, theirs_fate = fates(ours_consumed, ours_out), fates(theirs_consumed, theirs_out)
        # For every branch output (unit, branch), pair our rows with Megvii rows of the same fate.
        match: dict[tuple, tuple] = {}
        for unit in range(repeats):
            for branch in (("proj", "main") if unit == 0 else ("main",)):
                rows = range(channels // 2)
                ours = sorted(rows, key=lambda r: (ours_fate[(unit, branch, r)], r))
                theirs = sorted(rows, key=lambda r: (theirs_fate[(unit, branch, r)], r))
                for a, b in zip(ours, theirs):
                    if ours_fate[(unit, branch, a)] != theirs_fate[(unit, branch, b)]:
                        raise ValueError(
                            f"no exact Megvii -> torchvision mapping for a stage of {channels} channels x {repeats} units"
                        )
                    match[(unit, branch, a)] = (unit, branch, b)

        def columns(ours_labels: list, theirs_labels: list) -> list[int]:
            position = {label: index for index, label in enumerate(theirs_labels)}
            return [position[match[label]] for label in ours_labels]

        def rows_of(unit: int, branch: str) -> list[int]:  # our row r takes Megvii's row rows[r]
            return [match[(unit, branch, r)][2] for r in range(channels // 2)]

        plans.append(
            StagePermutation(
                input=list(previous_output) if previous_output is not None else [],
                proj_rows=rows_of(0, "proj"),
                main_rows=[rows_of(unit, "main") for unit in range(repeats)],
                main_cols=[None] + [columns(ours_consumed[u], theirs_consumed[u]) for u in range(1, repeats)],
                output=columns(ours_out, theirs_out),
            )
        )
        previous_output = plans[-1].output
    return plans


def _permute_megvii_state(
    state: dict[str, torch.Tensor], stage_repeats: Sequence[int], stage_channels: Sequence[int]
) -> tuple[dict[str, torch.Tensor], list[list[int]]]:
    """Megvii-named tensors -> the same names, permuted for the torchvision routing."""
    plans = megvii_to_torchvision_permutations(stage_repeats, stage_channels)
    state = dict(state)

    def take(key: str, index: list[int], dim: int) -> None:
        if key in state and state[key].ndim > dim:
            state[key] = state[key].index_select(dim, torch.as_tensor(index, dtype=torch.long))

    def rows(conv: str, index: list[int]) -> None:  # a conv's output rows and the BN right after it
        parent, position = conv.rsplit(".", 1)
        take(f"{conv}.weight", index, 0)
        for name in ("weight", "bias", "running_mean", "running_var"):
            take(f"{parent}.{int(position) + 1}.{name}", index, 0)

    for stage, (repeats, plan) in enumerate(zip(stage_repeats, plans), start=2):
        if plan.input:  # the stride-2 unit reads every input channel, in both branches
            rows(f"stage{stage}.0.branch_proj.0", plan.input)  # depthwise: one filter per channel
            take(f"stage{stage}.0.branch_proj.2.weight", plan.input, 1)
            take(f"stage{stage}.0.branch_main.0.weight", plan.input, 1)
        rows(f"stage{stage}.0.branch_proj.2", plan.proj_rows)
        for unit in range(repeats):
            if plan.main_cols[unit] is not None:
                take(f"stage{stage}.{unit}.branch_main.0.weight", plan.main_cols[unit], 1)
            rows(f"stage{stage}.{unit}.branch_main.5", plan.main_rows[unit])
    take("conv_last.0.weight", plans[-1].output, 1)
    return state, [plan.output for plan in plans]


def _routing(model: ShuffleNetV2) -> str:
    orders = {m.channel_order for m in model.modules() if isinstance(m, ShuffleV2Block)}
    if len(orders) != 1:
        raise ValueError(f"expected one channel routing in the model, got {sorted(orders)}")
    return orders.pop()


def load_megvii_shufflenetv2(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> LoadReport:
    """Load Megvii-layout ShuffleNetV2 weights (``first_conv``, ``stage2..4``, ``branch_main`` /
    ``branch_proj``, optional ``conv_last``/``classifier``) into a ShuffleNetV2.

    Megvii's reference code routes channels differently from torchvision (a stride-1 unit keeps
    the even channels and feeds the odd ones to its branch, and no unit shuffles its output). For
    a model with the default torchvision routing (our ``shufflenetv2_*``, YOLOv5-Lite) the loader
    permutes the weights (``megvii_to_torchvision_permutations``) so the model computes exactly
    what Megvii's network computes; its stage outputs are then Megvii's maps with channels
    permuted as ``report.feature_permutations`` says (``ours[:, j] == megvii[:, perm[j]]``). A
    model built with ``channel_order="megvii"`` gets the tensors unchanged.

    Only widths where Megvii's and torchvision's layouts have the same shapes load (0.5x: its
    stride-2 units split 24 -> 24 + 24, while at 1.0x Megvii's first unit makes 24 + 92).

    Returns a report; with ``strict`` a file tensor that finds no place is a ValueError; a shape
    mismatch always is, naming the key and both shapes.
    """
    if not isinstance(model, ShuffleNetV2):
        raise ValueError(f"expected a ShuffleNetV2, got {type(model).__name__}")
    if any(isinstance(m, SqueezeExcite) for m in model.modules()):
        raise ValueError("Megvii ShuffleNetV2 weights have no SE layers; build the model with se=False")
    source = read_state_dict(path)
    target = model.state_dict()
    report = LoadReport()
    repeats = list(model.stage_repeats)
    for key, tensor in source.items():  # shapes first: a wrong width must fail before permuting
        ours = _megvii_to_litedet(key)
        if ours in target and tuple(target[ours].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{path}: tensor {key!r} has shape {tuple(tensor.shape)} but {ours!r} in the model has "
                f"{tuple(target[ours].shape)} (wrong width for this model?)"
            )
    if _routing(model) == "torchvision":
        source, report.feature_permutations = _permute_megvii_state(source, repeats, model.stage_channels[1:4])
    new_state = {}
    for key, tensor in source.items():
        ours = _megvii_to_litedet(key)
        if ours not in target:
            report.unplaced.append(key)
            continue
        new_state[ours] = tensor
        report.loaded.append(key)
    report.missing = sorted(set(target) - set(new_state))
    if strict and report.unplaced:
        raise ValueError(f"{path}: {len(report.unplaced)} tensors could not be placed, e.g. {report.unplaced[:5]}")
    model.load_state_dict(new_state, strict=False)
    logger.info("loaded %s: %s", path, report.summary())
    return report


def megvii_shufflenetv2(
    width: float = 0.5,
    weights: str | os.PathLike | None = None,
    channel_order: str = "torchvision",
    **kwargs,
) -> ShuffleNetV2:
    """A ShuffleNetV2 of ``width`` (Table 5), optionally loaded from Megvii-layout ``weights``.

    With the default torchvision routing this is exactly our ``shufflenetv2_x0_5`` (and the
    YOLOv5-Lite backbone) with the weights permuted onto it; ``channel_order="megvii"`` builds
    Megvii's routing instead and loads the tensors unchanged. For a detector backbone pass
    ``features_only=True, with_conv5=False`` (the shared 0.5x ImageNet file has stages 2-4 only).
    """
    if width not in SHUFFLENETV2_CONFIGS:
        raise ValueError(f"ShuffleNetV2 width must be one of {sorted(SHUFFLENETV2_CONFIGS)}, got {width!r}")
    config = SHUFFLENETV2_CONFIGS[width]
    model = ShuffleNetV2(config.stage_repeats, config.stage_out_channels, channel_order=channel_order, **kwargs)
    if weights is not None:
        load_megvii_shufflenetv2(model, weights)
    return model


def imagenet_shufflenetv2_backbone(
    weights: str | os.PathLike, width: float = 0.5, out_indices: Sequence[int] | None = None
) -> ShuffleNetV2:
    """The detector backbone (``features_only=True, with_conv5=False``, stride 8/16/32 maps) with
    Megvii's ImageNet weights, in the standard torchvision routing YOLOv5-Lite uses."""
    return megvii_shufflenetv2(
        width, weights, features_only=True, with_conv5=False, num_classes=0, out_indices=out_indices
    )


def load_torchvision_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor] | str | os.PathLike
) -> LoadReport:
    """Load a torchvision classifier's weights (``shufflenet_v2_x*``, ``mobilenet_v2``,
    ``mobilenet_v3_large/small``) into the litedet backbone of the same architecture.

    Our layouts register the same tensors as torchvision's, in the same order (only the module
    names differ: ``features.3.conv.1.0`` vs ``stages.2.0.block.1.conv``), so tensors are paired
    by position and every pair must have the same shape (else a ValueError names both keys).
    A feature extractor takes the leading tensors; the classifier's are reported as unplaced.
    ``state`` is a state dict or a file (read with ``weights_only=True``).
    """
    source = read_state_dict(state) if isinstance(state, (str, os.PathLike)) else dict(state)
    target = model.state_dict()
    report = LoadReport()
    new_state = {}
    source_items = list(source.items())
    for (ours, expected), (theirs, tensor) in zip(target.items(), source_items):
        if tuple(expected.shape) != tuple(tensor.shape):
            raise ValueError(
                f"torchvision tensor {theirs!r} {tuple(tensor.shape)} does not fit {ours!r} {tuple(expected.shape)}: "
                "not the same architecture (check the model name and width)"
            )
        new_state[ours] = tensor
        report.loaded.append(theirs)
    report.unplaced = [key for key, _ in source_items[len(new_state):]]
    report.missing = [key for key in target if key not in new_state]
    model.load_state_dict(new_state, strict=False)
    logger.info("loaded torchvision weights: %s", report.summary())
    return report
