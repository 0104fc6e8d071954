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
# long as their weights follow the channels. In a ShuffleNetV2 stage each channel is born in one
# unit (a branch output) and consumed by one later unit's branch (or leaves the stage), so an
# exported stage need not keep its map whole at all. It keeps *pieces*: the channels one branch
# makes for one later reader. A branch's last conv writes its channels grouped by reader (its
# rows permuted), one split cuts them into pieces, and a unit's branch input is the concat of the
# pieces it reads (its first conv's columns permuted to match). The Reshape-Transpose-Reshape of
# ``channel_shuffle`` disappears, and each stride-1 unit moves only its own half of the map (the
# split of what it makes, the concat of what it reads) where splitting and concatenating the
# whole map at every unit moves all of it; the stage's map is concatenated once, at its end.
# Exact: only weights are reordered, no arithmetic changes.


def _cat(pieces: Sequence[torch.Tensor]) -> torch.Tensor:
    return pieces[0] if len(pieces) == 1 else torch.cat(list(pieces), dim=1)


def _split(x: torch.Tensor, sizes: Sequence[int]) -> list[torch.Tensor]:
    return [x] if len(sizes) == 1 else list(torch.split(x, list(sizes), dim=1))


class FoldedShuffleStage(nn.Module):
    """The units of one ShuffleNetV2 stage with their shuffles folded into the weights (export only).

    The stage works on numbered pieces of channels. Pieces ``0..k-1`` are the stage input split
    into ``input_sizes``; unit ``u`` concatenates pieces ``reads[u]`` into its branch input, and
    each of its branches (``branch1`` then ``branch2`` for a stride-2 unit, ``branch2`` alone for a
    stride-1 one) appends its output split into ``makes[u][b]`` as the next pieces. The stage
    returns pieces ``output`` concatenated. Built by ``fold_shuffle_stage``.
    """

    def __init__(self, blocks: Sequence[ShuffleV2Block], input_sizes: Sequence[int], reads: Sequence[Sequence[int]],
                 makes: Sequence[Sequence[Sequence[int]]], output: Sequence[int]) -> None:
        super().__init__()
        if not (len(blocks) == len(reads) == len(makes)):
            raise ValueError("one reads and one makes entry per unit")
        self.units = nn.ModuleList(
            nn.ModuleList([b.branch1, b.branch2] if b.stride == 2 else [b.branch2]) for b in blocks)
        self.strides = [int(b.stride) for b in blocks]
        self.in_channels = int(blocks[0].in_channels)
        self.out_channels = int(blocks[-1].out_channels)
        self.input_sizes = [int(v) for v in input_sizes]
        self.reads = [[int(i) for i in r] for r in reads]
        self.makes = [[[int(v) for v in sizes] for sizes in m] for m in makes]
        self.output = [int(i) for i in output]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pieces = _split(x, self.input_sizes)
        for branches, reads, makes in zip(self.units, self.reads, self.makes):
            inputs = _cat([pieces[i] for i in reads])
            for branch, sizes in zip(branches, makes):
                pieces.extend(_split(branch(inputs), sizes))
        return _cat([pieces[i] for i in self.output])


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


def _run_lengths(keys: Sequence[int]) -> list[int]:
    """Lengths of the runs of equal consecutive keys: [3, 3, 1, 1, 1, 3] -> [2, 3, 1]."""
    lengths: list[int] = []
    for i, key in enumerate(keys):
        if i and keys[i - 1] == key:
            lengths[-1] += 1
        else:
            lengths.append(1)
    return lengths


def fold_shuffle_stage(units: Sequence[ShuffleV2Block], input_order: Sequence[int] | None = None) -> tuple[FoldedShuffleStage, list[int]]:
    """Fold the channel shuffles of consecutive ShuffleNetV2 units (one stage) into their weights.

    ``input_order[p]`` is the true input channel stored at position ``p`` (None: true order).
    Returns the folded stage (it shares, and permutes in place, the blocks' branches) and its
    output order: output position ``p`` holds the true output channel ``order[p]``; the consumer
    of the stage output absorbs it (``permute_input_channels``).
    """
    blocks = list(units)
    if not blocks:
        raise ValueError("a stage needs at least one unit")
    channels = blocks[0].in_channels
    # Pass 1: route channel ids through the true graph to learn who consumes each channel.
    routing = []
    next_id, ids = channels, list(range(channels))
    consumer: dict[int, int] = {}
    for u, block in enumerate(blocks):
        consumed, made, outputs = _true_routing(block, ids, next_id)
        next_id += sum(len(m) for m in made)
        routing.append((ids, consumed, made, outputs))
        consumer.update({c: u for c in consumed})
        ids = outputs
    leaving = len(blocks)
    consumer.update({c: leaving for c in ids})
    # Pass 2: cut every producer's channels into pieces by reader and permute weights to match.
    stored = list(input_order) if input_order is not None else list(range(channels))
    input_sizes = _run_lengths([consumer[c] for c in stored])
    pieces: list[list[int]] = []
    for size in input_sizes:
        pieces.append(stored[:size])
        stored = stored[size:]
    live = list(range(len(pieces)))
    reads, makes = [], []
    for u, (block, (inputs, consumed, made, _)) in enumerate(zip(blocks, routing)):
        taken = [i for i in live if consumer[pieces[i][0]] == u]
        live = [i for i in live if i not in taken]
        storage = [c for i in taken for c in pieces[i]]
        if sorted(storage) != sorted(consumed):
            raise RuntimeError(f"unit {u}: its pieces do not hold the channels it reads (a bug in the fold)")
        column = {c: i for i, c in enumerate(inputs if block.stride == 2 else consumed)}
        order = [column[c] for c in storage]
        branches = [block.branch1, block.branch2] if block.stride == 2 else [block.branch2]
        unit_makes = []
        for branch, ids_made in zip(branches, made):
            permute_input_channels(branch, order)
            arranged = sorted(ids_made, key=lambda c: consumer[c])  # stable: grouped by reader
            row = {c: i for i, c in enumerate(ids_made)}
            permute_output_channels(branch, [row[c] for c in arranged])
            sizes = _run_lengths([consumer[c] for c in arranged])
            unit_makes.append(sizes)
            for size in sizes:
                live.append(len(pieces))
                pieces.append(arranged[:size])
                arranged = arranged[size:]
        reads.append(taken)
        makes.append(unit_makes)
    if any(consumer[pieces[i][0]] != leaving for i in live):
        raise RuntimeError("pieces left unread inside the stage (a bug in the fold)")
    final = {c: i for i, c in enumerate(routing[-1][3])}
    order_out = [final[c] for i in live for c in pieces[i]]
    return FoldedShuffleStage(blocks, input_sizes, reads, makes, live), order_out
