"""Importance criteria against hand formulas, and every registered criterion end to end."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from slimtorch.models import create
from slimtorch.prune import prune_
from slimtorch.prune.structured import (
    IMPORTANCE,
    NEEDS_GRADIENTS,
    Channel,
    CoupledTensor,
    build_dependency_graph,
    coupled_tensors,
    fpgm_scores,
    group_reduce,
    l1_scores,
    l2_scores,
    lamp_scores,
    taylor_scores,
)

W = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 3.0], [-1.0, 1.0, 1.0], [2.0, 2.0, -2.0]], dtype=torch.float64)


def test_l1_and_l2_match_hand_sums() -> None:
    assert l1_scores(W).tolist() == [3.5, 3.0, 3.0, 6.0]
    torch.testing.assert_close(
        l2_scores(W), torch.tensor([math.sqrt(5.25), 3.0, math.sqrt(3), math.sqrt(12)], dtype=torch.float64)
    )


def test_fpgm_is_the_sum_of_distances_to_the_other_filters() -> None:
    expect = [sum(float(torch.linalg.norm(W[u] - W[v])) for v in range(4)) for u in range(4)]
    torch.testing.assert_close(fpgm_scores(W), torch.tensor(expect, dtype=torch.float64))


def test_lamp_matches_its_definition() -> None:
    sq = (W**2).sum(1)
    expect = [float(sq[u] / sq[sq >= sq[u]].sum()) for u in range(4)]
    torch.testing.assert_close(lamp_scores(W), torch.tensor(expect, dtype=torch.float64))
    assert float(lamp_scores(W).max()) == 1.0  # the largest unit always scores 1


def test_taylor_sums_abs_weight_times_grad_over_batches() -> None:
    g1, g2 = torch.ones_like(W), -0.5 * W
    expect = [sum(abs(float(W[u, j] * g[u, j])) for g in (g1, g2) for j in range(3)) for u in range(4)]
    torch.testing.assert_close(taylor_scores(W, [g1, g2]), torch.tensor(expect, dtype=torch.float64))
    with pytest.raises(ValueError, match="needs gradients"):
        taylor_scores(W, [])


def test_group_score_is_the_mean_or_sum_over_coupled_tensors() -> None:
    other = torch.arange(8, dtype=torch.float64).reshape(4, 2)
    ts = [CoupledTensor(W, "weight"), CoupledTensor(other, "weight"), CoupledTensor(other * 100, "bias")]
    mean = IMPORTANCE.get("l1")(ts)
    torch.testing.assert_close(mean, (l1_scores(W) + l1_scores(other)) / 2)  # biases are not scored
    torch.testing.assert_close(IMPORTANCE.get("l1")(ts, reduce="sum"), l1_scores(W) + l1_scores(other))
    torch.testing.assert_close(group_reduce([l1_scores(W)]), l1_scores(W))


def test_bn_scale_uses_the_norm_scale_and_falls_back_to_l1() -> None:
    gamma = torch.tensor([[0.5], [-2.0], [0.1], [1.0]], dtype=torch.float64)
    ts = [CoupledTensor(W, "weight"), CoupledTensor(gamma, "norm")]
    assert IMPORTANCE.get("bn_scale")(ts).tolist() == [0.5, 2.0, 0.1, 1.0]
    assert IMPORTANCE.get("bn_scale")(ts[:1]).tolist() == l1_scores(W).tolist()


def test_random_is_reproducible_per_seed() -> None:
    ts = [CoupledTensor(W, "weight")]
    f = IMPORTANCE.get("random")
    assert torch.equal(f(ts, seed=3), f(ts, seed=3)) and not torch.equal(f(ts, seed=3), f(ts, seed=4))


def test_coupled_tensors_of_a_conv_bn_group() -> None:
    net = nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 1, 1))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
    graph = build_dependency_graph(net, torch.randn(1, 2, 2, 2))
    (group,) = graph.groups
    ts = {t.role: [] for t in coupled_tensors(net, group)}
    for t in coupled_tensors(net, group):
        ts[t.role].append(t.values)
    # conv filters (3, 2), BN scale (3, 1), next conv's columns (3, 1); BN shift and conv bias as "bias"
    assert sorted(v.shape for v in ts["weight"]) == [(3, 1), (3, 2)]
    assert ts["norm"][0].ravel().tolist() == [1.0, 2.0, 3.0]
    torch.testing.assert_close(ts["weight"][0], net[0].weight.detach().double().reshape(3, 2))


def _calibration(n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(n)
    ]


@pytest.mark.parametrize("importance", IMPORTANCE.names())
def test_every_criterion_prunes_resnet20(importance: str) -> None:
    torch.manual_seed(0)
    model = create("resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    data = _calibration() if importance in NEEDS_GRADIENTS else None
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = prune_(model, Channel(ratio=0.5, importance=importance), example_inputs=x, data=data)
    assert model(x).shape == (1, 10)
    assert report.macs_after < report.macs_before
    assert all(p.grad is None for p in model.parameters())  # scoring left no gradients behind
    assert model.conv1.weight.shape[0] == 8 and before["conv1.weight"].shape[0] == 16


def test_taylor_prefers_channels_that_matter_to_the_loss() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        net[2].weight[:, [1, 4]] = 0  # hidden units 1 and 4 cannot change the loss: zero gradient
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(3)]
    w1 = net[0].weight.detach().clone()
    prune_(net, Channel(ratio=1 / 3, importance="taylor"), example_inputs=torch.randn(1, 4), data=data)
    kept = [i for i in range(6) if i not in (1, 4)]
    assert torch.equal(net[0].weight, w1[kept])


def test_taylor_without_data_is_an_error() -> None:
    with pytest.raises(ValueError, match="taylor.*data="):
        prune_(create("mlp"), Channel(ratio=0.5, importance="taylor"), example_inputs=torch.randn(1, 784))


def test_group_taylor_squares_the_summed_change_per_batch() -> None:
    from slimtorch.prune.structured import group_taylor_scores

    g1, g2 = torch.ones_like(W), -0.5 * W
    expect = [sum(sum(float(W[u, j] * g[u, j]) for j in range(3)) ** 2 for g in (g1, g2)) / 2 for u in range(4)]
    torch.testing.assert_close(group_taylor_scores(W, [g1, g2]), torch.tensor(expect, dtype=torch.float64))
    # opposite contributions inside one unit cancel (the per-weight taylor criterion would count both)
    w = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    assert float(group_taylor_scores(w, [torch.tensor([[1.0, -1.0]], dtype=torch.float64)])[0]) == 0.0
    assert float(taylor_scores(w, [torch.tensor([[1.0, -1.0]], dtype=torch.float64)])[0]) == 2.0
    with pytest.raises(ValueError, match="taylor_group importance needs gradients"):
        group_taylor_scores(W, [])
    assert "taylor_group" in NEEDS_GRADIENTS
