"""Low-rank decomposition of convolutions and linear layers.

- **SVD** of 1x1 convs and linear layers (Denton et al., "Exploiting Linear Structure Within
  Convolutional Networks", NeurIPS 2014, §3.2; Jaderberg et al. 2014): ``W [out, in] ~= U_r S_r
  V_r^T`` becomes two layers ``in -> r`` (``sqrt(S_r) V_r^T``) and ``r -> out`` (``U_r sqrt(S_r)``,
  with the bias).
- **CP** of kxk convs (Lebedev et al., "Speeding-up Convolutional Neural Networks Using Fine-tuned
  CP-Decomposition", ICLR 2015, §3): ``W [out, in, kh, kw] ~= sum_r a_out ⊗ a_in ⊗ a_h ⊗ a_w`` via
  ``tensorly.decomposition.parafac``, run as four convs: 1x1 ``in -> R``, depthwise ``kh x 1``,
  depthwise ``1 x kw`` (stride and padding split between them), 1x1 ``R -> out`` (+ bias).

- **Data-aware SVD** of 1x1 convs and linear layers (Zhang et al., "Accelerating Very Deep
  Convolutional Networks for Classification and Detection", TPAMI 2016, §3.1: reconstruct the
  layer's *responses*, not its weights) when calibration images are given: with ``y = W x + b``
  measured on them, ``y ~= ybar + P_r P_r^T (y - ybar)`` where ``P_r`` are the top-r eigenvectors
  of the response covariance ``W C_x W^T``; the layers become ``in -> r`` (``P_r^T W``) and
  ``r -> out`` (``P_r``, bias ``ybar - P_r P_r^T W xbar``). It keeps the directions the data
  excites; weight SVD keeps those the weights are large in, whatever the inputs. ``energy`` then
  means the share of the response variance kept. Statistics come from the unmodified network
  (``litedet.compress.prune.input_statistics``, every input pixel a sample).

The rank is given directly (``rank``: an int, or a float in (0, 1] meaning that share of the full
rank) or chosen by ``energy``: the smallest rank whose singular values keep that share of
``sum(S^2)`` (for CP, of the weight unfolded to [out, in*kh*kw], a heuristic). A layer is only
replaced when the factors have fewer parameters than the original.

A conv inside ``ConvBnAct`` has its BatchNorm folded first (eval statistics), so the factor
layers end with the folded bias and Conv+BN fusion at export has nothing left to fuse there.
The replaced layers are recorded (``model.compression["lowrank"]``) so a saved checkpoint can be
rebuilt (``litedet.models.checkpoint.load_detector``).
"""

from __future__ import annotations

import fnmatch
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn
from litedet.progress import progress_bar

from litedet.compress.checkpoint import model_record
from litedet.compress.prune import InputStats, input_statistics
from litedet.layers.conv import ConvBnAct, fuse_conv_bn
from litedet.layers.lowrank import cp_factor_modules, svd_factor_modules

LOGGER = logging.getLogger(__name__)

KINDS = ("svd", "cp")


@dataclass
class DecomposeResult:
    """Parameters before/after and what was done to each layer."""

    params_before: int
    params_after: int
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


# ------------------------------------------------------------------------------- layer level


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _matrix(layer: nn.Module) -> torch.Tensor:
    return layer.weight.detach().reshape(layer.weight.shape[0], -1).double()


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest r with ``sum(S[:r]^2) >= energy * sum(S^2)``."""
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    power = singular_values.double() ** 2
    cumulative = torch.cumsum(power, 0) / power.sum().clamp_min(1e-30)
    return int(torch.searchsorted(cumulative, torch.tensor(energy - 1e-12, dtype=cumulative.dtype)).item()) + 1


def _choose_rank(layer: nn.Module, rank: int | float | None, energy: float | None,
                 stats: InputStats | None = None) -> int:
    matrix = _matrix(layer)
    full = min(matrix.shape)
    if (rank is None) == (energy is None):
        raise ValueError("give exactly one of rank (int or share of full rank) and energy (share kept)")
    if energy is not None:
        if stats is not None:  # share of the response variance: eigenvalues are squared singular values
            return min(full, rank_for_energy(_response_basis(layer, stats)[0].sqrt(), energy))
        return min(full, rank_for_energy(torch.linalg.svdvals(matrix), energy))
    if isinstance(rank, float):
        if not 0 < rank <= 1:
            raise ValueError(f"a fractional rank must be in (0, 1], got {rank}")
        return max(1, int(round(rank * full)))
    if int(rank) < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    return int(rank)


@torch.no_grad()
def svd_decompose(layer: nn.Module, rank: int) -> nn.Sequential:
    """Replace a Linear or 1x1 conv (groups 1) by two factor layers of rank ``rank``."""
    if isinstance(layer, nn.Conv2d) and (layer.kernel_size != (1, 1) or layer.groups != 1):
        raise ValueError(f"SVD needs a 1x1 conv with groups=1, got kernel {layer.kernel_size} groups {layer.groups}")
    matrix = _matrix(layer)
    rank = min(rank, min(matrix.shape))
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    root = s[:rank].sqrt()
    first_w = (root[:, None] * vh[:rank]).to(layer.weight.dtype)
    second_w = (u[:, :rank] * root[None]).to(layer.weight.dtype)
    factors = svd_factor_modules(layer, rank).to(layer.weight.device)
    factors[0].weight.copy_(first_w.reshape(factors[0].weight.shape))
    factors[1].weight.copy_(second_w.reshape(factors[1].weight.shape))
    if layer.bias is not None:
        factors[1].bias.copy_(layer.bias)
    return factors


def _response_basis(layer: nn.Module, stats: InputStats) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors of the response covariance ``W C_x W^T``."""
    weight = _matrix(layer).cpu()
    covariance = weight @ stats.cov @ weight.t()
    values, vectors = torch.linalg.eigh((covariance + covariance.t()) / 2)
    order = torch.argsort(values, descending=True)
    return values[order].clamp_min(0), vectors[:, order]


@torch.no_grad()
def svd_decompose_data_aware(layer: nn.Module, rank: int, stats: InputStats) -> nn.Sequential:
    """Replace a Linear or 1x1 conv by two layers of rank ``rank`` that reconstruct its responses
    on the calibration data (see the module docstring); the second layer always has a bias."""
    if isinstance(layer, nn.Conv2d) and (layer.kernel_size != (1, 1) or layer.groups != 1):
        raise ValueError(f"SVD needs a 1x1 conv with groups=1, got kernel {layer.kernel_size} groups {layer.groups}")
    weight = _matrix(layer).cpu()
    bias = layer.bias.detach().double().cpu() if layer.bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
    rank = min(rank, min(weight.shape))
    _, vectors = _response_basis(layer, stats)
    basis = vectors[:, :rank]  # [out, r]
    first_w = basis.t() @ weight  # [r, in]
    mean_response = weight @ stats.mean + bias
    second_b = mean_response - basis @ (first_w @ stats.mean)
    factors = svd_factor_modules(layer, rank, bias=True).to(layer.weight.device)
    dtype = layer.weight.dtype
    factors[0].weight.copy_(first_w.to(dtype).reshape(factors[0].weight.shape))
    factors[1].weight.copy_(basis.to(dtype).reshape(factors[1].weight.shape))
    factors[1].bias.copy_(second_b.to(dtype))
    return factors


@torch.no_grad()
def cp_decompose(layer: nn.Conv2d, rank: int, n_iter_max: int = 300, seed: int = 0) -> nn.Sequential:
    """Replace a kxk conv (groups 1) by the four CP factor convs of rank ``rank`` (tensorly parafac)."""
    import tensorly as tl
    from tensorly.decomposition import parafac

    if not isinstance(layer, nn.Conv2d) or layer.groups != 1 or layer.kernel_size == (1, 1):
        raise ValueError(f"CP needs a kxk conv (k > 1) with groups=1, got {layer}")
    tl.set_backend("pytorch")
    weight = layer.weight.detach().double().cpu()
    with warnings.catch_warnings():
        # tensorly warns when the rank exceeds a mode's size and completes the SVD init randomly.
        warnings.filterwarnings("ignore", message="Trying to compute SVD", category=UserWarning)
        # SVD initialisation; random_state fixes the random completion beyond a mode's size.
        cp = parafac(weight, rank=rank, init="svd", n_iter_max=n_iter_max, tol=1e-7, random_state=seed)
    weights, (a_out, a_in, a_h, a_w) = cp
    a_out = a_out * weights[None, :]
    factors = cp_factor_modules(layer, rank).to(layer.weight.device)
    dtype = layer.weight.dtype
    factors[0].weight.copy_(a_in.t().reshape(rank, layer.in_channels, 1, 1).to(dtype))
    factors[1].weight.copy_(a_h.t().reshape(rank, 1, -1, 1).to(dtype))
    factors[2].weight.copy_(a_w.t().reshape(rank, 1, 1, -1).to(dtype))
    factors[3].weight.copy_(a_out.reshape(layer.out_channels, rank, 1, 1).to(dtype))
    if layer.bias is not None:
        factors[3].bias.copy_(layer.bias)
    return factors


# ------------------------------------------------------------------------------- model level


def _kind_of(layer: nn.Module) -> str | None:
    if isinstance(layer, nn.Linear):
        return "svd"
    if isinstance(layer, nn.Conv2d) and layer.groups == 1:
        return "svd" if layer.kernel_size == (1, 1) else "cp"
    return None


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _parent(model: nn.Module, name: str) -> nn.Module:
    parent_name = name.rpartition(".")[0]
    return model.get_submodule(parent_name) if parent_name else model


# include / exclude defaults: any layer, and not a detector head's (a model without a head is fine)
DEFAULT_PATTERNS = ("*", "head.*")


def decompose(
    model: nn.Module,
    method: str = "svd",
    rank: int | float | None = None,
    energy: float | None = None,
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = ("head.*",),
    min_reduction: float = 0.0,
    progress: bool = False,
    calibration: Sequence[torch.Tensor] | None = None,
) -> DecomposeResult:
    """Decompose the eligible layers of ``model`` in place.

    ``method``: ``svd`` (1x1 convs and linears), ``cp`` (kxk convs) or ``both``. ``include`` /
    ``exclude`` are glob patterns on module names (by default the detection head's prediction
    convs are kept). A layer is replaced only when its factors have fewer parameters than it by
    more than ``min_reduction`` (a share). Call with the model in eval mode (BatchNorm folding).
    ``calibration`` (batches of pre-processed images): SVD layers are factorised data-aware,
    reconstructing their responses on these images (``energy`` = response variance kept); CP
    stays data-free.
    """
    if method not in (*KINDS, "both"):
        raise ValueError(f"unknown decomposition {method!r}; choose svd, cp or both")
    kinds = KINDS if method == "both" else (method,)
    model.eval()
    result = DecomposeResult(params_before=_params(model), params_after=0)
    record = model_record(model)
    names = [name for name, _ in model.named_modules() if name]
    for pattern in (*include, *exclude):  # a typo in a pattern would silently change what is decomposed
        if pattern not in DEFAULT_PATTERNS and not any(fnmatch.fnmatch(name, pattern) for name in names):
            raise ValueError(f"pattern {pattern!r} matches no layer of {getattr(model, 'model_name', 'the model')} "
                             f"(layer names look like {', '.join(names[:3])}, ...)")
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if _kind_of(module) in kinds
        and any(fnmatch.fnmatch(name, pattern) for pattern in include)
        and not any(fnmatch.fnmatch(name, pattern) for pattern in exclude)
    ]
    if not candidates:
        raise ValueError(f"no layer to decompose with method {method!r}, include {list(include)}, exclude {list(exclude)}")
    statistics: dict[str, InputStats] = {}
    if calibration is not None:
        if not len(calibration):
            raise ValueError("calibration is empty: give batches of images, or None for data-free SVD")
        svd_layers = {name: module for name, module in candidates if _kind_of(module) == "svd"}
        by_module = input_statistics(model, calibration, list(svd_layers.values()))
        statistics = {name: by_module[module] for name, module in svd_layers.items() if module in by_module}
    for name, layer in progress_bar(candidates, enabled=progress, desc=f"decompose ({method})"):
        kind = _kind_of(layer)
        parent = _parent(model, name)
        fold_bn = isinstance(parent, ConvBnAct) and name.endswith(".conv") and isinstance(parent.bn, nn.BatchNorm2d)
        source = fuse_conv_bn(layer, parent.bn) if fold_bn else layer
        stats = statistics.get(name) if kind == "svd" else None
        chosen = _choose_rank(source, rank, energy, stats)
        factors = (svd_factor_modules(source, chosen, bias=True if stats else None) if kind == "svd"
                   else cp_factor_modules(source, chosen))
        before, after = _params(layer) + (_params(parent.bn) if fold_bn else 0), _params(factors)
        if after >= before * (1 - min_reduction):
            result.skipped[name] = f"rank {chosen}: {after} factor params >= {before}"
            continue
        if kind == "cp":
            factors = cp_decompose(source, chosen)
        elif stats is not None:
            factors = svd_decompose_data_aware(source, chosen, stats)
        else:
            factors = svd_decompose(source, chosen)
        _set_module(model, name, factors)
        if fold_bn:
            parent.bn = nn.Identity()
        spec = {"kind": kind, "rank": chosen, "fold_bn": fold_bn, "bias": factors[-1].bias is not None}
        record["lowrank"][name] = spec
        result.layers[name] = {**spec, "params_before": before, "params_after": after}
    record["steps"].append({"step": "decompose", "method": method, "rank": rank, "energy": energy,
                            "data_aware": bool(statistics)})
    result.params_after = _params(model)
    return result
