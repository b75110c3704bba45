"""Magnitude pruning: global vs per-layer thresholds and Han et al.'s std rule on hand-made tensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimtorch.prune import Magnitude, global_masks, layer_masks, lowest_k_mask, prune_
from slimtorch.prune.magnitude import num_to_prune, std_scores


def two_layer_net(w1: list[list[float]], w2: list[list[float]]) -> nn.Sequential:
    net = nn.Sequential(
        nn.Linear(len(w1[0]), len(w1), bias=False), nn.Linear(len(w2[0]), len(w2), bias=False)
    )
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(w1))
        net[1].weight.copy_(torch.tensor(w2))
    return net


def test_lowest_k_mask_removes_exactly_k_with_threshold():
    scores = torch.tensor([0.1, 0.5, 0.3, 0.2])
    mask, thr = lowest_k_mask(scores, 2)
    assert mask.tolist() == [False, True, True, False]
    assert thr == pytest.approx(0.2)
    assert lowest_k_mask(scores, 0)[0].all()


def test_ties_go_to_the_lower_index():
    mask, _ = lowest_k_mask(torch.tensor([1.0, 1.0, 1.0, 2.0]), 2)
    assert mask.tolist() == [False, False, True, True]


def test_num_to_prune_rounds():
    assert num_to_prune(10, 0.9) == 9
    assert num_to_prune(3, 0.5) == 2  # round half to even: 1.5 -> 2
    assert num_to_prune(1000, 0.0) == 0


def test_global_threshold_spans_layers():
    # layer a holds the 3 smallest magnitudes of the 8 weights: a 50% global cut prunes a 3/4, b 1/4
    scores = {"a": torch.tensor([0.1, 0.2, 0.3, 0.9]), "b": torch.tensor([0.4, 0.8, 0.7, 0.6])}
    masks, thr = global_masks(scores, 0.5)
    assert masks["a"].tolist() == [False, False, False, True]
    assert masks["b"].tolist() == [False, True, True, True]
    assert thr == pytest.approx(0.4)


def test_layer_scope_prunes_each_layer_to_target():
    scores = {"a": torch.tensor([0.1, 0.2, 0.3, 0.9]), "b": torch.tensor([0.4, 0.8, 0.7, 0.6])}
    masks, thr = layer_masks(scores, {"a": 0.5, "b": 0.5})
    assert masks["a"].tolist() == [False, False, True, True]
    assert masks["b"].tolist() == [False, True, True, False]
    assert thr == {"a": pytest.approx(0.2), "b": pytest.approx(0.6)}


def test_prune_global_vs_layer_on_a_model():
    net = two_layer_net([[0.1, -0.2], [0.3, 0.9]], [[0.4, -0.8], [0.7, 0.6]])
    rep = prune_(net, Magnitude(sparsity=0.5, scope="global"))
    assert (net[0].weight != 0).tolist() == [[False, False], [False, True]]
    assert (net[1].weight != 0).tolist() == [[False, True], [True, True]]
    assert rep.layer("0").sparsity == 0.75 and rep.layer("1").sparsity == 0.25
    assert rep.sparsity == 0.5
    net = two_layer_net([[0.1, -0.2], [0.3, 0.9]], [[0.4, -0.8], [0.7, 0.6]])
    rep = prune_(net, Magnitude(sparsity=0.5, scope="layer"))
    assert rep.layer("0").sparsity == 0.5 and rep.layer("1").sparsity == 0.5
    assert (net[1].weight != 0).tolist() == [[False, True], [True, False]]


def test_std_criterion_is_han_quality_threshold():
    # layer 0 has large weights (std 10x layer 1's); magnitude would prune layer 1 only, the std rule
    # normalises by each layer's std, so the global cut is |w| < q * sigma_l with one q for both.
    w0 = torch.tensor([[1.0, 2.0, 3.0, 40.0]])
    w1 = torch.tensor([[0.1, 0.2, 0.3, 4.0]])
    net = nn.Sequential(nn.Linear(4, 1, bias=False), nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(w0)
        net[1].weight.copy_(w1)
    rep = prune_(net, Magnitude(sparsity=0.5, criterion="std"))
    # both layers have the same |w|/sigma profile: each loses its 2 smallest
    assert (net[0].weight != 0).tolist() == [[False, False, True, True]]
    assert (net[1].weight != 0).tolist() == [[False, False, True, True]]
    q = rep.extra["threshold"]
    assert q == pytest.approx(2.0 / float(w0.std()))
    assert torch.allclose(std_scores(w0, float(w0.std())), w0.abs() / w0.std())
    net2 = nn.Sequential(nn.Linear(4, 1, bias=False), nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        net2[0].weight.copy_(w0)
        net2[1].weight.copy_(w1)
    prune_(net2, Magnitude(sparsity=0.5, criterion="magnitude"))
    assert (net2[1].weight != 0).sum() == 1  # plain magnitude takes 3 of layer 1's 4


def test_overrides_prune_their_layers_to_their_own_target():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 5))
    rep = prune_(net, Magnitude(sparsity=0.8, overrides={"2": 0.2}))
    assert rep.layer("2").sparsity == pytest.approx(0.2)
    assert rep.layer("0").sparsity == pytest.approx(0.8)


def test_include_exclude_and_filter_fn_select_layers():
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4), nn.Conv1d(1, 1, 1))
    rep = prune_(net, Magnitude(sparsity=0.5, exclude=("2",)))
    assert [r.name for r in rep.layers] == ["0", "3"]
    rep = prune_(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)), Magnitude(0.5, include=("1",)))
    assert [r.name for r in rep.layers] == ["1"]
    net = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    rep = prune_(net, Magnitude(0.5, filter_fn=lambda m, n: m.out_features > 2))
    assert [r.name for r in rep.layers] == ["0"]


def test_zero_sparsity_changes_nothing():
    net = nn.Sequential(nn.Linear(6, 3))
    before = net[0].weight.detach().clone()
    rep = prune_(net, Magnitude(0.0))
    assert torch.equal(net[0].weight, before)
    assert rep.nonzeros_after == rep.nonzeros_before


@pytest.mark.parametrize("value", [1.5, 1.0, -0.1, float("nan")])
def test_bad_sparsity_is_rejected(value):
    with pytest.raises(
        ValueError, match=r"sparsity: .* is not in \[0, 1\)|sparsity must be a number"
    ):
        Magnitude(sparsity=value)


def test_sparsity_message_is_exact():
    with pytest.raises(ValueError, match=r"^sparsity: 1\.5 is not in \[0, 1\)$"):
        Magnitude(sparsity=1.5)


def test_bad_options_name_the_allowed_values():
    with pytest.raises(ValueError, match=r"scope: 'all' is not one of \['global', 'layer'\]"):
        Magnitude(0.5, scope="all")
    with pytest.raises(ValueError, match=r"criterion: 'l3' is not one of"):
        Magnitude(0.5, criterion="l3")
    with pytest.raises(ValueError, match=r"overrides\['fc'\]: 1\.2 is not in \[0, 1\)"):
        Magnitude(0.5, overrides={"fc": 1.2})


def test_override_matching_nothing_and_empty_selection_are_errors():
    net = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"overrides \['fc9'\] match no selected layer"):
        prune_(net, Magnitude(0.5, overrides={"fc9": 0.1}))
    with pytest.raises(ValueError, match=r"no layer of Sequential is selected.*\['0'\]"):
        prune_(net, Magnitude(0.5, exclude=("0",)))


def test_config_round_trips_through_dict():
    from slimtorch.prune import AGP

    cfg = Magnitude(0.9, scope="layer", schedule=AGP(frequency=5, num_prunes=3), overrides={"fc": 0.5})
    back = Magnitude.from_dict(cfg.to_dict())
    assert back == cfg
