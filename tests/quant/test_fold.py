"""BatchNorm folding is exact: the folded layer equals layer + BN in eval mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimtorch.models import create
from slimtorch.quant.algorithms.fold import find_conv_bn_pairs, fold_bn_, fold_bn_into_
from slimtorch.quant.workflows.ptq import trace_graph


def _randomize_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.2)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))


@pytest.mark.parametrize("bias", [True, False])
def test_fold_single_conv_exact(bias):
    conv, bn = nn.Conv2d(3, 8, 3, bias=bias), nn.BatchNorm2d(8)
    seq = nn.Sequential(conv, bn).eval()
    _randomize_bn(seq)
    x = torch.randn(4, 3, 10, 10)
    ref = seq(x)
    fold_bn_into_(conv, bn)
    assert torch.allclose(conv(x), ref, atol=1e-5)


def test_fold_linear_bn1d_exact():
    lin, bn = nn.Linear(6, 5), nn.BatchNorm1d(5)
    seq = nn.Sequential(lin, bn).eval()
    _randomize_bn(seq)
    x = torch.randn(7, 6)
    ref = seq(x)
    pairs = fold_bn_(seq)
    assert pairs == [("0", "1")] and isinstance(seq[1], nn.Identity)
    assert torch.allclose(seq(x), ref, atol=1e-5)


def test_fold_resnet20_whole_model_exact():
    model = create("resnet20").eval()
    _randomize_bn(model)
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    graph, _ = trace_graph(model)
    pairs = fold_bn_(model, graph=graph)
    assert len(pairs) == 19 + 2  # 19 convs with BN + 2 projection shortcuts
    assert ("layer2.0.shortcut.0", "layer2.0.shortcut.1") in pairs
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert torch.allclose(model(x), ref, atol=1e-4, rtol=1e-4)


def test_sequential_fallback_and_refusals():
    seq = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4))
    assert find_conv_bn_pairs(seq) == [("0", "1")]  # the second BN follows a ReLU: not foldable
    with pytest.raises(ValueError, match="has 4 output channels but the BatchNorm has 3"):
        fold_bn_into_(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match="without running statistics"):
        fold_bn_into_(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
