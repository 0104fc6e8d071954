"""Pruning correctness: the channels Torch-Pruning removes are exactly the ones it says it removes.

Diagnosis of issue 7 (L1 30 % collapse): a model pruned by the dependency graph must equal the
unpruned model with those output channels zeroed (conv weight, BN gamma/beta/mean); any index
mapping error across C3 concats, residual adds or upsampling would break the equality.
"""

from __future__ import annotations

import copy

import torch
import torch_pruning as tp
from torch import nn

from litedet.compress import prune as P
from litedet.models.registry import create_model

SIZE = 64


def _detector() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("v5lite-s", input_size=SIZE).eval()
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.weight.data = torch.rand(n, generator=generator) + 0.1
            module.bias.data = torch.randn(n, generator=generator) * 0.1
            module.running_mean = torch.randn(n, generator=generator) * 0.1
            module.running_var = torch.rand(n, generator=generator) + 0.5
    return model


def _flat(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([o.flatten() for o in model(x)])


def test_neck_pruning_equals_zeroing_the_removed_channels():
    model = _detector()
    zeroed = copy.deepcopy(model)
    x = torch.randn(1, 3, SIZE, SIZE)
    names = {id(m): n for n, m in model.named_modules()}
    twins = dict(zeroed.named_modules())
    features = P._capture_inputs(model, [model.neck], x)[0]
    pruner = tp.pruner.MetaPruner(
        model, [f.clone() for f in features], importance=P.create_importance("l1"), pruning_ratio=0.3,
        ignored_layers=[*P._head_layers(model), model.backbone],
        forward_fn=lambda net, maps: net.head(net.neck(maps)),
    )
    removed = 0
    with torch.no_grad():
        for group in pruner.step(interactive=True):
            for dep, idxs in group:
                module = dep.target.module
                if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)) and dep.handler.__name__ == "prune_out_channels":
                    twin = twins[names[id(module)]]
                    twin.weight[idxs] = 0
                    if twin.bias is not None:
                        twin.bias[idxs] = 0
                    if isinstance(twin, nn.BatchNorm2d):
                        twin.running_mean[idxs] = 0
                    removed += len(idxs)
            group.prune()
    assert removed > 0
    model.eval()
    torch.testing.assert_close(_flat(model, x), _flat(zeroed, x), rtol=1e-4, atol=1e-4)
