"""Convolution blocks: ConvBnAct, depthwise-separable conv, and Conv+BN fusion."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from litedet.layers.activations import ActLayer, create_act


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never dropping below 90 % of it.

    The rule of the MobileNet reference code (and YOLOv5's width multiple), so that scaled
    channel counts stay hardware friendly.
    """
    if divisor <= 0:
        raise ValueError(f"divisor must be > 0, got {divisor}")
    min_value = divisor if min_value is None else min_value
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


class ConvBnAct(nn.Sequential):
    """Conv2d -> BatchNorm2d -> activation, with 'same' padding for odd kernels.

    Children are named ``conv``, ``bn``, ``act`` so weight loaders and fusion can find them.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: ActLayer = "relu",
        padding: int | None = None,
        bias: bool = False,
    ) -> None:
        padding = (kernel_size - 1) // 2 if padding is None else padding
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = create_act(act)
        self.in_channels = in_channels
        self.out_channels = out_channels


class DepthwiseSeparableConv(nn.Sequential):
    """Depthwise kxk conv-BN-act then pointwise 1x1 conv-BN-act (MobileNetV1 §3.1, Fig. 3)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        act: ActLayer = "relu6",
        pw_act: ActLayer | str = "same",
    ) -> None:
        super().__init__()
        self.dw = ConvBnAct(in_channels, in_channels, kernel_size, stride, groups=in_channels, act=act)
        self.pw = ConvBnAct(in_channels, out_channels, 1, act=act if pw_act == "same" else pw_act)
        self.in_channels = in_channels
        self.out_channels = out_channels


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Return a new Conv2d whose weights fold ``bn`` (eval statistics) into ``conv``."""
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(conv.weight.device, conv.weight.dtype)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((conv_bias - bn.running_mean) * scale + bn.bias)
    return fused


def fuse_model(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a conv into that conv, in place; returns ``model``.

    Covers ``ConvBnAct`` and (Conv2d, BatchNorm2d) neighbours inside any ``nn.Sequential`` (the
    ShuffleNetV2 branches), so no BatchNorm is left for an engine or an eager benchmark. Call on
    a model in eval mode (fusion uses running statistics).
    """
    for module in model.modules():
        if isinstance(module, ConvBnAct) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn(module.conv, module.bn)
            module.bn = nn.Identity()
        elif isinstance(module, nn.Sequential) and not isinstance(module, ConvBnAct):
            children = list(module._modules.items())
            for (name, conv), (bn_name, bn) in zip(children, children[1:]):
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                    module._modules[name] = fuse_conv_bn(conv, bn)
                    module._modules[bn_name] = nn.Identity()
    return model


def is_identity_batchnorm(bn: nn.BatchNorm2d) -> bool:
    """True for a BatchNorm that computes ``x + bias`` in eval mode: zero mean, unit variance
    (``running_var + eps == 1``), unit scale. That is what an import from a deployed model (ncnn,
    ONNX) leaves behind: the statistics were folded into the preceding convolution."""
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None or bn.weight is None:
        return False
    ones = torch.ones_like(bn.running_var)
    return (bool(torch.all(bn.running_mean == 0)) and bool(torch.allclose(bn.running_var + bn.eps, ones, atol=1e-4))
            and bool(torch.allclose(bn.weight.detach(), ones, atol=1e-6)))


@torch.no_grad()
def restore_folded_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> tuple[int, int]:
    """Give identity BatchNorms (see ``is_identity_batchnorm``) real statistics, without changing
    what the model computes in eval mode, so that training (batch statistics) starts from the
    same function.

    A folded network in train mode normalises every conv output by its batch statistics although
    its weights expect none: fine-tuning imported weights then starts from a different, broken
    function and the running statistics drift to the batch ones (COCO fine-tune of the imported
    v5lite-s: mAP50-95 0.335 -> 0.0003 after one epoch). For each such layer with input ``z`` (the
    folded conv output, measured in eval mode on ``batches``, float [B, 3, H, W] in the model's
    input scale): running_mean = E[z], running_var = Var[z], weight = sqrt(Var[z] + eps),
    bias += E[z]. Eval mode is then ``weight * (z - E[z]) / sqrt(Var[z] + eps) + bias + E[z] =
    z + bias`` as before, and train mode normalises by batch statistics close to these (Ioffe &
    Szegedy 2015, §3.1, the BN transform and its inference form). Returns (layers restored, images seen)."""
    layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and is_identity_batchnorm(m)]
    if not layers:
        return 0, 0
    sums: dict[nn.Module, list[torch.Tensor | int]] = {}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        z = inputs[0].detach().double().transpose(0, 1).reshape(inputs[0].shape[1], -1)
        acc = sums.setdefault(module, [torch.zeros_like(z[:, 0]), torch.zeros_like(z[:, 0]), 0])
        acc[0] += z.sum(1)
        acc[1] += (z * z).sum(1)
        acc[2] += z.shape[1]

    handles = [layer.register_forward_pre_hook(hook) for layer in layers]
    was_training = model.training
    model.eval()
    images = 0
    try:
        for batch in batches:
            model(batch)
            images += len(batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    restored = 0
    for layer in layers:
        if layer not in sums:  # not on the forward path
            continue
        total, squares, count = sums[layer]
        mean = total / count
        var = (squares / count - mean * mean).clamp_min(0)
        layer.running_mean.copy_(mean.to(layer.running_mean.dtype))
        layer.running_var.copy_(var.to(layer.running_var.dtype))
        layer.weight.copy_(torch.sqrt(var + layer.eps).to(layer.weight.dtype))
        layer.bias.add_(mean.to(layer.bias.dtype))
        restored += 1
    return restored, images
