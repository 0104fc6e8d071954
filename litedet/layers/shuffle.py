"""ShuffleNetV2 units (Ma et al., ECCV 2018, Fig. 3c/3d) and channel shuffle."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from litedet.layers.activations import ActLayer, create_act
from litedet.layers.attention import SqueezeExcite


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` channel groups: [B, g*c, H, W] -> [B, c*g, H, W] (ShuffleNet §3.1)."""
    batch, channels, height, width = x.shape
    if channels % groups:
        raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
    x = x.view(batch, groups, channels // groups, height, width).transpose(1, 2)
    return x.reshape(batch, channels, height, width)


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class ShuffleV2Block(nn.Module):
    """The ShuffleNetV2 unit.

    stride 1 (Fig. 3c): channel split, identity on one half, 1x1-dw3x3-1x1 on the other, concat,
    shuffle. stride 2 (Fig. 3d): no split; both branches see the whole input and downsample.
    Children follow torchvision's layout (``branch1``, ``branch2`` as Sequentials) so weights map
    one to one. ``se=True`` adds SE after the last 1x1 of ``branch2`` (paper appendix, Table 8).

    ``channel_order`` picks between the two published routings, which have the same weights but
    send different channels down each path: ``"torchvision"`` (split in halves, shuffle at the
    output; also YOLOv5-Lite's) and ``"megvii"`` (the paper authors' reference code: a stride-1
    unit takes the even channels as identity and the odd ones into the branch, and no unit
    shuffles its output). The same weights compute different functions under the two routings,
    but the routings are equivalent up to a permutation of channels: every channel has the same
    fate (born in unit u, consumed by unit v) in both, so ``litedet.models.pretrained`` loads
    Megvii weights onto the torchvision routing by permuting conv rows/columns, exactly.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        act: ActLayer = "relu",
        se: bool = False,
        channel_order: str = "torchvision",
    ) -> None:
        super().__init__()
        if channel_order not in ("torchvision", "megvii"):
            raise ValueError(f"channel_order must be 'torchvision' or 'megvii', got {channel_order!r}")
        self.channel_order = channel_order
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if out_channels % 2:
            raise ValueError(f"out_channels must be even, got {out_channels}")
        branch_features = out_channels // 2
        if stride == 1 and in_channels != out_channels:
            raise ValueError(f"a stride-1 unit needs in_channels == out_channels, got {in_channels} -> {out_channels}")
        self.stride = stride
        self.in_channels = in_channels
        self.out_channels = out_channels
        if stride == 2:
            self.branch1 = nn.Sequential(
                *_conv_bn(in_channels, in_channels, 3, stride, groups=in_channels),
                *_conv_bn(in_channels, branch_features, 1),
                create_act(act),
            )
        else:
            self.branch1 = nn.Sequential()
        branch2_in = in_channels if stride == 2 else branch_features
        layers = [
            *_conv_bn(branch2_in, branch_features, 1),
            create_act(act),
            *_conv_bn(branch_features, branch_features, 3, stride, groups=branch_features),
            *_conv_bn(branch_features, branch_features, 1),
            create_act(act),
        ]
        if se:
            layers.append(SqueezeExcite(branch_features))
        self.branch2 = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_order == "megvii":
            if self.stride == 1:
                return torch.cat((x[:, 0::2], self.branch2(x[:, 1::2])), dim=1)
            return torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


# --- Folding the channel shuffles away (export) ------------------------------------------------
#
# A shuffle only decides *where* each channel sits; the convolutions around it do not care, as
# long as their weights follow the channels. So an exported stage need not move any channel: we
# pick a storage order for every feature map, permute the rows of the conv that produces each
# channel and the columns of the conv that consumes it, and let every stride-1 unit take its
# branch input as one contiguous piece of its input. In a ShuffleNetV2 stage each channel is born
# in one unit (a branch output) and consumed by one later unit's branch (or leaves the stage), so
# ordering the pass-through channels by descending consumer and the new ones by ascending consumer
# puts the channels the next unit consumes side by side, at the seam of the concat. The
# Reshape-Transpose-Reshape of ``channel_shuffle`` disappears; what is left per unit is the split
# and concat every ShuffleNetV2 unit has anyway (the split now into a few more, still contiguous,
# pieces). Exact: only weights are reordered, no arithmetic changes.


class FoldedShuffleUnit(nn.Module):
    """A ``ShuffleV2Block`` whose shuffle was folded into its neighbours' weights (export only).

    stride 2: ``cat(branch1(x), branch2(x))``. stride 1: ``x`` is split into contiguous pieces of
    ``split_sizes`` channels; piece ``branch_piece`` goes through ``branch2``; the output is the
    other pieces in ``concat_order`` followed by the branch output. Built by ``fold_shuffle_stage``.
    """

    def __init__(self, block: ShuffleV2Block, split_sizes: Sequence[int] = (), branch_piece: int = 0,
                 concat_order: Sequence[int] = ()) -> None:
        super().__init__()
        self.stride = block.stride
        self.in_channels = block.in_channels
        self.out_channels = block.out_channels
        self.branch1 = block.branch1
        self.branch2 = block.branch2
        self.split_sizes = [int(v) for v in split_sizes]
        self.branch_piece = int(branch_piece)
        self.concat_order = [int(v) for v in concat_order]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            return torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        pieces = torch.split(x, self.split_sizes, dim=1)
        kept = [pieces[i] for i in self.concat_order]
        return torch.cat((*kept, self.branch2(pieces[self.branch_piece])), dim=1)


def _index(order: Sequence[int]) -> torch.Tensor:
    return torch.as_tensor(list(order), dtype=torch.long)


@torch.no_grad()
def permute_input_channels(module: nn.Module, order: Sequence[int], offset: int = 0) -> None:
    """Make ``module`` read its input channels ``offset + i`` from storage position ``offset + i``
    where storage position ``offset + p`` holds the true channel ``offset + order[p]``.

    ``module`` is a Conv2d, a ``ConvBnAct``-like Sequential, or a ShuffleNetV2 branch: leading
    depthwise convs (and their BatchNorms) are permuted whole, the first dense conv by columns.
    """
    index = _index(order)
    span = slice(offset, offset + len(index))
    for layer in (module.modules() if not isinstance(module, nn.Conv2d) else [module]):
        if isinstance(layer, nn.Conv2d):
            if layer.groups == 1:
                weight = layer.weight.data
                weight[:, span] = weight[:, span][:, index]
                return
            if layer.groups != layer.in_channels or layer.in_channels != layer.out_channels or offset:
                raise ValueError(f"cannot permute the input of a grouped conv {layer}")
            layer.weight.data = layer.weight.data[index]
            if layer.bias is not None:
                layer.bias.data = layer.bias.data[index]
        elif isinstance(layer, nn.BatchNorm2d):
            _permute_batchnorm(layer, index)
    raise ValueError(f"no dense conv consumes the permuted channels in {type(module).__name__}")


@torch.no_grad()
def _permute_batchnorm(layer: nn.BatchNorm2d, index: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        tensor = getattr(layer, name)
        if tensor is not None:
            tensor.data = tensor.data[index]


@torch.no_grad()
def permute_output_channels(branch: nn.Sequential, order: Sequence[int]) -> None:
    """Make ``branch`` write its true output channel ``order[p]`` at position ``p``: the rows of
    its last dense conv and every per-channel layer after it (BatchNorm, SE) follow."""
    index = _index(order)
    layers = list(branch)
    last = max((i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)), default=None)
    if last is None:
        raise ValueError("a ShuffleNetV2 branch without a conv cannot be permuted")
    conv = layers[last]
    conv.weight.data = conv.weight.data[index]
    if conv.bias is not None:
        conv.bias.data = conv.bias.data[index]
    for layer in layers[last + 1 :]:
        if isinstance(layer, nn.BatchNorm2d):
            _permute_batchnorm(layer, index)
        elif isinstance(layer, SqueezeExcite):
            layer.fc1.weight.data = layer.fc1.weight.data[:, index]
            layer.fc2.weight.data = layer.fc2.weight.data[index]
            layer.fc2.bias.data = layer.fc2.bias.data[index]
        elif any(True for _ in layer.parameters()):
            raise ValueError(f"cannot permute the channels of {type(layer).__name__} after the last conv of a branch")


def _runs(positions: Sequence[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive positions: [4, 5, 6, 0, 1] -> [(4, 7), (0, 2)]."""
    runs: list[tuple[int, int]] = []
    for p in positions:
        if runs and runs[-1][1] == p:
            runs[-1] = (runs[-1][0], p + 1)
        else:
            runs.append((p, p + 1))
    return runs


def _true_routing(block: ShuffleV2Block, inputs: list[int], next_id: int) -> tuple[list[int], list[list[int]], list[int]]:
    """What a unit does to channel ids in true order: (ids its branches consume, the new ids each
    branch makes, output ids in true order)."""
    half = block.out_channels // 2
    made = [list(range(next_id, next_id + half)), list(range(next_id + half, next_id + 2 * half))]
    if block.stride == 2:
        first, second = made
        consumed = list(inputs)
        if block.channel_order == "megvii":
            outputs = first + second
        else:
            outputs = [c for pair in zip(first, second) for c in pair]
        return consumed, made, outputs
    new = made[0]
    if block.channel_order == "megvii":
        kept, consumed = inputs[0::2], inputs[1::2]
        outputs = kept + new
    else:
        kept, consumed = inputs[:half], inputs[half:]
        outputs = [c for pair in zip(kept, new) for c in pair]
    return consumed, [new], outputs


def fold_shuffle_stage(units: Sequence[ShuffleV2Block], input_order: Sequence[int] | None = None) -> tuple[list[FoldedShuffleUnit], list[int]]:
    """Fold the channel shuffles of consecutive ShuffleNetV2 units (one stage) into their weights.

    ``input_order[p]`` is the true input channel stored at position ``p`` (None: true order).
    Returns the folded units (they share, and permute in place, the blocks' branches) and the
    stage's output order: output position ``p`` holds the true output channel ``order[p]``; the
    consumer of the stage output absorbs it (``permute_input_channels``).
    """
    blocks = list(units)
    if not blocks:
        return [], list(input_order or [])
    channels = blocks[0].in_channels
    # Pass 1: route channel ids through the true graph to learn who consumes each channel.
    true_inputs, routing = list(range(channels)), []
    next_id, ids = channels, list(range(channels))
    consumer: dict[int, int] = {}
    for u, block in enumerate(blocks):
        consumed, made, outputs = _true_routing(block, ids, next_id)
        next_id += sum(len(m) for m in made)
        routing.append((ids, consumed, made, outputs))
        consumer.update({c: u for c in consumed})
        ids = outputs
    consumer.update({c: len(blocks) for c in ids})  # leaves the stage
    # Pass 2: choose storage orders and permute weights accordingly.
    storage = [true_inputs[p] for p in (input_order if input_order is not None else range(channels))]
    folded = []
    for u, (block, (inputs, consumed, made, outputs)) in enumerate(zip(blocks, routing)):
        if block.stride == 2:
            # Both branches read every input channel: permute their first layers' inputs.
            column = {c: i for i, c in enumerate(inputs)}
            order = [column[c] for c in storage]
            permute_input_channels(block.branch1, order)
            permute_input_channels(block.branch2, order)
            first = sorted(made[0], key=lambda c: -consumer[c])  # soonest consumed last ...
            second = sorted(made[1], key=lambda c: consumer[c])  # ... and first: side by side
            for branch, ids_made, arranged in ((block.branch1, made[0], first), (block.branch2, made[1], second)):
                row = {c: i for i, c in enumerate(ids_made)}
                permute_output_channels(branch, [row[c] for c in arranged])
            folded.append(FoldedShuffleUnit(block))
            storage = first + second
            continue
        taken = [p for p, c in enumerate(storage) if consumer[c] == u]
        if not taken or taken[-1] - taken[0] + 1 != len(taken):
            raise RuntimeError(f"unit {u}: the consumed channels are not contiguous (a bug in the fold)")
        column = {c: i for i, c in enumerate(consumed)}
        permute_input_channels(block.branch2, [column[storage[p]] for p in taken])
        kept = [c for c in storage if consumer[c] != u]
        kept.sort(key=lambda c: consumer[c] == u + 1)  # the next unit's channels last; stable: few pieces
        new = sorted(made[0], key=lambda c: consumer[c])
        row = {c: i for i, c in enumerate(made[0])}
        permute_output_channels(block.branch2, [row[c] for c in new])
        position = {c: p for p, c in enumerate(storage)}
        kept_runs = _runs([position[c] for c in kept])
        pieces = sorted(kept_runs + [(taken[0], taken[-1] + 1)])
        piece_index = {run: i for i, run in enumerate(pieces)}
        folded.append(FoldedShuffleUnit(
            block,
            split_sizes=[end - start for start, end in pieces],
            branch_piece=piece_index[(taken[0], taken[-1] + 1)],
            concat_order=[piece_index[run] for run in kept_runs],
        ))
        storage = kept + new
    final = {c: i for i, c in enumerate(routing[-1][3])}
    return folded, [final[c] for c in storage]
