"""N:M sparsity: at most N nonzeros in every group of M input weights; bad N/M rejected with reasons."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimtorch.models import create
from slimtorch.prune import NM, check_nm, nm_mask, prune_


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 4), (1, 2), (4, 8), (2, 8)])
def test_every_group_keeps_its_n_largest(n, m):
    torch.manual_seed(n * 10 + m)
    w = torch.randn(6, 4 * m)
    mask = nm_mask(w, n, m)
    groups = mask.reshape(6, -1, m)
    assert (groups.sum(-1) == n).all()
    # the kept entries are the n largest |w| of their group
    absg = w.abs().reshape(6, -1, m)
    kept_min = torch.where(groups, absg, torch.inf).amin(-1)
    dropped_max = torch.where(groups, -torch.inf, absg).amax(-1)
    assert (kept_min >= dropped_max).all()
    assert check_nm(w * mask, n, m)
    assert not check_nm(w, n, m)


def test_hand_example_2_4():
    w = torch.tensor([[0.1, -0.9, 0.5, 0.2, 3.0, 1.0, -2.0, 0.0]])
    assert nm_mask(w, 2, 4).tolist() == [[False, True, True, False, True, False, True, False]]


def test_conv_groups_follow_flattened_in_kh_kw_order():
    conv = nn.Conv2d(2, 3, 2)  # 2*2*2 = 8 inputs per filter: 2 groups of 4
    mask = nm_mask(conv.weight, 2, 4)
    flat = mask.reshape(3, 8)
    assert (flat[:, :4].sum(1) == 2).all() and (flat[:, 4:].sum(1) == 2).all()
    # group 0 of a filter is input channel 0's 2x2 kernel, in PyTorch memory order
    assert torch.equal(flat[:, :4], mask[:, 0].reshape(3, 4))


def test_prune_nm_on_a_model_and_report():
    net = create("mlp", in_features=16, hidden=(8,), num_classes=4)
    rep = prune_(net, NM(2, 4), example_inputs=torch.zeros(1, 16))
    for r in rep.layers:
        assert r.sparsity == 0.5
        assert r.macs_after * 2 == r.macs_before
    assert check_nm(net.net[1].weight, 2, 4) and check_nm(net.net[3].weight, 2, 4)


def test_nm_stays_after_training_steps():
    net = nn.Sequential(nn.Linear(8, 4))
    prune_(net, NM(1, 4))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(5, 8)).pow(2).sum().backward()
        opt.step()
    assert check_nm(net[0].weight, 1, 4)


@pytest.mark.parametrize(
    "n,m,msg",
    [
        (5, 4, r"n=5 must be < m=4"),
        (4, 4, r"n=4 must be < m=4"),
        (0, 4, r"n must be >= 1 .* got n=0"),
        (-1, 4, r"n must be >= 1"),
        (2.0, 4, r"n must be an integer"),
    ],
)
def test_bad_n_m(n, m, msg):
    with pytest.raises(ValueError, match=msg):
        NM(n, m)
    with pytest.raises(ValueError, match=msg):
        nm_mask(torch.randn(2, 8), n, m)


def test_m_not_dividing_the_input_size_names_the_layer():
    net = create("lenet5")  # conv1 has 1*5*5 = 25 inputs per filter
    with pytest.raises(
        ValueError,
        match=r"layer 'features.0' \(Conv2d\) has 25 input elements .* not a multiple of m=4.*exclude",
    ):
        prune_(net, NM(2, 4))
    rep = prune_(net, NM(2, 4, exclude=("features.0",)))
    assert [r.name for r in rep.layers] == ["features.3", "classifier.1", "classifier.3"]
    with pytest.raises(ValueError, match=r"has 6 input elements .* m=4"):
        check_nm(torch.randn(3, 6), 2, 4)
