"""Weight sharing: per-layer bits, pruned weights stay zero, shared gradients (Han et al. 2016 eq. 3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from slimtorch.models import create
from slimtorch.share import (
    SharedWeight,
    WeightSharing,
    bake_,
    cluster_,
    shared_layers,
    shared_lookup,
    sharing_summary,
)


def _pruned(model: nn.Module, keep: float = 0.2, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_((torch.rand(p.shape, generator=g) < keep).to(p.dtype))
    return model


def test_bits_per_kind_and_pruned_weights_stay_zero():
    model = _pruned(create("lenet5"))
    zeros = {n: (m.weight == 0).clone() for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    cluster_(model, bits={"conv": 3, "fc": 2})
    layers = shared_layers(model)
    assert set(layers) == set(zeros)
    for name, sw in layers.items():
        w = model.get_submodule(name).weight
        k = 8 if "features" in name else 4
        assert sw.centroids.numel() == k and sw.bits == (3 if k == 8 else 2)
        assert torch.equal(w == 0, zeros[name])
        assert torch.unique(w[w != 0]).numel() <= k
        assert set(torch.unique(w[w != 0]).tolist()) <= set(sw.centroids.tolist())


def test_pattern_keys_win_over_kinds_and_unmatched_layers_stay_plain():
    model = create("lenet5")
    cluster_(model, bits={"classifier.3": 1, "fc": 4})
    layers = shared_layers(model)
    assert sorted(layers) == ["classifier.1", "classifier.3"]
    assert layers["classifier.3"].centroids.numel() == 2 and layers["classifier.1"].centroids.numel() == 16


def test_include_exclude_and_nothing_selected():
    model = create("lenet_300_100")
    cluster_(model, bits=4, exclude=["net.5"])
    assert sorted(shared_layers(model)) == ["net.1", "net.3"]
    with pytest.raises(ValueError, match="no layer selected in MLP"):
        cluster_(create("lenet_300_100"), bits={"conv": 4})


@pytest.mark.parametrize("bits", [0, 17, -1, 2.5, True])
def test_bits_outside_range(bits):
    with pytest.raises(ValueError, match="bits"):
        cluster_(create("lenet_300_100"), bits=bits)
    with pytest.raises(ValueError, match=r"bits\['fc'\]"):
        cluster_(create("lenet_300_100"), bits={"fc": bits})


def test_bad_options():
    with pytest.raises(ValueError, match="init: 'kmeans' is not one of"):
        WeightSharing(init="kmeans")
    with pytest.raises(ValueError, match="mapping is empty"):
        WeightSharing(bits={})
    with pytest.raises(ValueError, match="pass options inside the WeightSharing config"):
        cluster_(create("mlp"), WeightSharing(bits=2), init="density")


def test_config_round_trip():
    cfg = WeightSharing(bits={"conv": 8, "fc": 5}, init="density", exclude=("fc",))
    assert WeightSharing.from_dict(cfg.to_dict()) == cfg


def test_shared_gradient_is_the_sum_of_member_gradients():
    torch.manual_seed(0)
    model = _pruned(create("lenet5")).double()
    cluster_(model, bits={"conv": 4, "fc": 3})
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (6,))
    nn.functional.cross_entropy(model(x), y).backward()
    # Reference: the same network with plain weights; dL/dW scatter-added by cluster.
    plain = create("lenet5").double()
    plain.load_state_dict(_baked_state(model))
    nn.functional.cross_entropy(plain(x), y).backward()
    for name, sw in shared_layers(model).items():
        g = plain.get_submodule(name).weight.grad
        expected = torch.zeros(sw.centroids.numel() + 1, dtype=g.dtype).index_add_(
            0, sw.codes.reshape(-1), g.reshape(-1)
        )[1:]
        torch.testing.assert_close(sw.centroids.grad, expected, rtol=1e-10, atol=1e-12)
        assert model.get_submodule(name).parametrizations.weight.original.grad is None


def _baked_state(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, m in model.named_modules():
        for pname, p in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            if ".parametrizations" not in f".{name}":
                out[f"{name}.{pname}" if name else pname] = p.detach()
        if parametrize.is_parametrized(m, "weight"):
            out[f"{name}.weight"] = m.weight.detach()
    return out


def test_finetuning_keeps_pruned_zero_and_sharing():
    model = _pruned(create("lenet_300_100"), keep=0.3)
    cluster_(model, bits=3)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.5, momentum=0.9, weight_decay=1e-3)
    zero_before = {n: model.get_submodule(n).weight == 0 for n in shared_layers(model)}
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(16, 784)), torch.randint(0, 10, (16,))).backward()
        opt.step()
    for name in shared_layers(model):
        w = model.get_submodule(name).weight
        assert torch.equal(w == 0, zero_before[name])
        assert torch.unique(w[w != 0]).numel() <= 8


def test_reads_an_existing_mask_parametrization():
    class Mask(nn.Module):
        def __init__(self, mask: torch.Tensor) -> None:
            super().__init__()
            self.register_buffer("mask", mask)

        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return w * self.mask

    model = create("lenet_300_100")
    mask = (torch.rand(300, 784) < 0.1).float()
    parametrize.register_parametrization(model.net[1], "weight", Mask(mask))
    cluster_(model, bits={"net.1": 4})
    w = model.net[1].weight
    assert torch.equal(w != 0, mask.bool())
    assert [type(p) for p in model.net[1].parametrizations.weight] == [SharedWeight]


def test_bake_and_summary():
    model = _pruned(create("lenet_300_100"), keep=0.5)
    cluster_(model, bits=2, init="random")
    before = model(torch.ones(1, 784))
    summary = sharing_summary(model)
    assert [s.name for s in summary] == ["net.1", "net.3", "net.5"]
    assert all(s.clusters_used <= 4 and s.kept <= s.weights for s in summary)
    bake_(model)
    assert not shared_layers(model)
    assert torch.equal(model(torch.ones(1, 784)), before)


def test_all_pruned_layer():
    model = create("lenet_300_100")
    with torch.no_grad():
        model.net[5].weight.zero_()
    cluster_(model, bits=2)
    assert torch.equal(model.net[5].weight, torch.zeros(10, 100))


def test_shared_lookup_gradient_formula():
    table = torch.tensor([0.0, 1.5, -2.0], dtype=torch.float64, requires_grad=True)
    codes = torch.tensor([[0, 1, 2], [2, 2, 1]])
    w = shared_lookup(table, codes)
    assert w.tolist() == [[0.0, 1.5, -2.0], [-2.0, -2.0, 1.5]]
    g = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)
    w.backward(g)
    # dL/dtable[k] = sum of dL/dW over the weights with code k.
    assert table.grad.tolist() == [1.0, 2.0 + 6.0, 3.0 + 4.0 + 5.0]
    assert torch.autograd.gradcheck(lambda t: shared_lookup(t, codes), (table.detach().requires_grad_(),))
