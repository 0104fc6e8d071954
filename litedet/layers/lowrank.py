"""Factor layers of low-rank decompositions (shapes only, random init).

``litedet.compress.lowrank`` fills them from a decomposition; ``litedet.models.checkpoint``
re-creates them on a registry model so a decomposed checkpoint's weights load strictly.
"""

from __future__ import annotations

from torch import nn


def svd_factor_modules(layer: nn.Module, rank: int, bias: bool | None = None) -> nn.Sequential:
    """Two factor layers (random init) with the shapes of a rank-``rank`` SVD of ``layer``; the
    second has a bias when ``bias`` (default: when ``layer`` has one)."""
    bias = layer.bias is not None if bias is None else bias
    if isinstance(layer, nn.Linear):
        return nn.Sequential(nn.Linear(layer.in_features, rank, bias=False), nn.Linear(rank, layer.out_features, bias=bias))
    if isinstance(layer, nn.Conv2d):
        first = nn.Conv2d(layer.in_channels, rank, 1, layer.stride, layer.padding, bias=False)
        second = nn.Conv2d(rank, layer.out_channels, 1, bias=bias)
        return nn.Sequential(first, second)
    raise ValueError(f"SVD applies to Linear and 1x1 Conv2d layers, got {type(layer).__name__}")


def cp_factor_modules(layer: nn.Conv2d, rank: int) -> nn.Sequential:
    """The four convs (random init) of a rank-``rank`` CP decomposition of a kxk ``layer``."""
    kh, kw = layer.kernel_size
    sh, sw = layer.stride
    ph, pw = layer.padding if isinstance(layer.padding, tuple) else (layer.padding, layer.padding)
    dh, dw = layer.dilation
    return nn.Sequential(
        nn.Conv2d(layer.in_channels, rank, 1, bias=False),
        nn.Conv2d(rank, rank, (kh, 1), (sh, 1), (ph, 0), (dh, 1), groups=rank, bias=False),
        nn.Conv2d(rank, rank, (1, kw), (1, sw), (0, pw), (1, dw), groups=rank, bias=False),
        nn.Conv2d(rank, layer.out_channels, 1, bias=layer.bias is not None),
    )
