"""Masks survive optimizer steps; make_permanent_ keeps the zeros and drops the parametrization."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import slimtorch
from slimtorch.core.errors import SlimtorchError
from slimtorch.models import create
from slimtorch.prune import Magnitude, apply_mask_, get_mask, make_permanent_, masked_layers, prune_


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def _train_steps(net: nn.Module, opt: torch.optim.Optimizer, steps: int = 5) -> None:
    for _ in range(steps):
        x, y = torch.randn(8, 2, 6, 6), torch.randint(0, 3, (8,))
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True),
        lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    ],
)
def test_masked_weights_stay_exactly_zero_and_get_zero_grad(make_opt):
    net = _net()
    opt = make_opt(net.parameters())
    _train_steps(net, opt, 3)  # momentum / Adam state is nonzero everywhere before pruning
    prune_(net, Magnitude(0.7))
    masks = {n: get_mask(m).mask.clone() for n, m in masked_layers(net)}
    _train_steps(net, opt, 5)
    for name, m in masked_layers(net):
        pruned = ~masks[name]
        assert pruned.sum() > 0
        assert (m.weight[pruned] == 0).all()  # the weight the forward uses
        grad = m.parametrizations.weight.original.grad
        assert (grad[pruned] == 0).all()
        assert (m.weight[masks[name]] != 0).all()  # the kept ones still train


def test_make_permanent_keeps_zeros_and_removes_masks(tmp_path):
    net = create("lenet5")
    prune_(net, Magnitude(0.8))
    x = torch.randn(2, 1, 28, 28)
    net.eval()
    out = net(x)
    zeros = {n: (m.weight == 0).clone() for n, m in masked_layers(net)}
    make_permanent_(net)
    assert not any(parametrize.is_parametrized(m) for m in net.modules())
    assert masked_layers(net) == []
    for name, z in zeros.items():
        w = net.get_submodule(name).weight
        assert isinstance(w, nn.Parameter)
        assert torch.equal(w == 0, z)
        assert not torch.signbit(w[w == 0]).any()  # no -0.0
    assert torch.equal(net(x), out)
    back = slimtorch.load(slimtorch.save(net, tmp_path / "p.safetensors"))
    assert torch.equal(back(x), out)


def test_saving_a_masked_model_asks_for_make_permanent(tmp_path):
    net = create("mlp", in_features=8, hidden=(4,))
    prune_(net, Magnitude(0.5))
    with pytest.raises(SlimtorchError, match="make_permanent_"):
        slimtorch.save(net, tmp_path / "m.safetensors")


def test_make_permanent_on_a_deepcopy_leaves_the_original_intact():
    # torch shares the injected Parametrized class between a module and its deepcopy
    net = _net()
    prune_(net, Magnitude(0.5))
    copy_ = make_permanent_(copy.deepcopy(net))
    assert torch.equal(copy_[0].weight, net[0].weight.detach())  # original still has its property
    make_permanent_(net)
    assert torch.equal(copy_[3].weight, net[3].weight)


def test_masks_only_grow_and_original_is_zeroed():
    lin = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 3.0, -4.0]]))
    apply_mask_(lin, torch.tensor([[False, True, True, True]]))
    apply_mask_(lin, torch.tensor([[True, False, True, True]]))
    assert lin.weight.tolist() == [[0.0, 0.0, 3.0, -4.0]]
    assert lin.parametrizations.weight.original.tolist() == [[0.0, -0.0, 3.0, -4.0]]
    assert float(get_mask(lin).ref_std) == pytest.approx(float(torch.tensor([1.0, -2.0, 3.0, -4.0]).std()))
    with pytest.raises(ValueError, match=r"mask shape \(3,\) does not match weight shape \(1, 4\)"):
        apply_mask_(lin, torch.ones(3, dtype=torch.bool))
