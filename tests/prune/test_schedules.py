"""Schedules: AGP's cubic formula exactly, iterative rounds, and both ways of driving them."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from slimtorch.prune import (
    AGP,
    Iterative,
    Magnitude,
    MaskPruner,
    OneShot,
    agp_sparsity,
    iterative_prune_,
    iterative_sparsity,
    prune_,
)


@pytest.mark.parametrize(
    "t,expected",
    [
        (99, 0.0),
        (100, 0.0),
        (105, 0.0),
        (110, 0.4625),
        (119, 0.4625),
        (120, 0.7),
        (130, 0.7875),
        (140, 0.8),
        (10_000, 0.8),
    ],
)
def test_agp_formula_values(t, expected):
    # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 with s_i=0, s_f=0.8, t0=100, n=4, dt=10
    assert agp_sparsity(t, 0.0, 0.8, 100, 4, 10) == pytest.approx(expected, abs=1e-12)


def test_agp_with_initial_sparsity():
    assert agp_sparsity(100, 0.2, 0.8, 100, 4, 10) == pytest.approx(0.2)
    assert agp_sparsity(120, 0.2, 0.8, 100, 4, 10) == pytest.approx(0.8 + (0.2 - 0.8) * 0.5**3)
    sched = AGP(initial_sparsity=0.2, start_step=100, frequency=10, num_prunes=4)
    assert sched.sparsity_at(0.8, 120) == pytest.approx(0.725)
    assert sched.sparsity_at(0.1, 100) == pytest.approx(0.1)  # s_i capped at a layer's own target
    assert sched.end_step == 140
    assert [t for t in range(90, 150) if sched.is_pruning_step(t)] == [100, 110, 120, 130, 140]


def test_agp_resolves_its_length_from_the_run():
    assert AGP(frequency=10).resolved(1000).num_prunes == 75  # ends at 3/4 of training
    assert AGP(frequency=10, start_step=50, ramp_fraction=0.5).resolved(1000).num_prunes == 45
    with pytest.raises(ValueError, match="num_prunes is None"):
        AGP().sparsity_at(0.5, 3)


def test_iterative_sparsity_geometric_and_linear():
    assert [iterative_sparsity(0.875, k, 3) for k in (1, 2, 3)] == pytest.approx([0.5, 0.75, 0.875])
    assert [iterative_sparsity(0.9, k, 3, "linear") for k in (1, 2, 3)] == pytest.approx([0.3, 0.6, 0.9])
    assert OneShot().sparsity_at(0.9, 123) == 0.9


def test_mask_pruner_step_follows_agp_from_a_user_loop():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 10, bias=False))
    cfg = Magnitude(0.8, schedule=AGP(start_step=2, frequency=3, num_prunes=4))
    pruner = MaskPruner(net, cfg)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    seen = []
    for _ in range(16):
        opt.zero_grad()
        net(torch.randn(4, 10)).sum().backward()
        opt.step()
        seen.append(pruner.step())
    expected = [round(agp_sparsity(t, 0.0, 0.8, 2, 4, 3) * 100) / 100 for t in range(1, 17)]
    assert seen == pytest.approx(expected)
    assert seen[-1] == pytest.approx(0.8)


def test_agp_driven_by_fit_through_prune():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    data = TensorDataset(torch.randn(64, 8), torch.randint(0, 3, (64,)))
    seen: dict[int, float] = {}

    class Spy:
        def on_step_end(self, state):
            w = state.model[0].weight
            seen[state.step] = float((w == 0).float().mean())

    cfg = Magnitude(
        0.5,
        scope="layer",
        schedule=AGP(
            frequency=2, num_prunes=3, epochs=2, finetune={"batch_size": 16, "lr": 0.01, "callbacks": [Spy()]}
        ),
    )
    rep = prune_(net, cfg, data=data)
    assert sorted(seen) == list(range(1, 9))  # 4 steps per epoch, 2 epochs
    for t, s in seen.items():
        assert s == pytest.approx(round(agp_sparsity(t, 0.0, 0.5, 0, 3, 2) * 128) / 128)
    assert rep.layer("0").sparsity == 0.5 and rep.layer("2").sparsity == 0.5


def test_iterative_with_a_user_finetune_loop():
    net = nn.Sequential(nn.Linear(8, 8, bias=False))
    rounds = []

    def finetune(model, k):
        rounds.append((k, float((model[0].weight == 0).float().mean())))

    rep = iterative_prune_(net, Magnitude(0.875, schedule=Iterative(rounds=3)), finetune)
    assert rounds == [(1, 0.5), (2, 0.75), (3, 0.875)]
    assert [r["sparsity"] for r in rep.extra["rounds"]] == [0.5, 0.75, 0.875]


def test_iterative_driven_by_fit():
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    data = TensorDataset(torch.randn(32, 8), torch.randint(0, 3, (32,)))
    rep = prune_(
        net, Magnitude(0.75, schedule=Iterative(rounds=2, epochs=1, finetune={"batch_size": 16})), data=data
    )
    assert rep.sparsity == pytest.approx(0.75)
    assert rep.extra["rounds"][0]["sparsity"] == pytest.approx(0.5)


def test_training_schedules_need_data():
    net = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="AGP prunes while training: pass data="):
        prune_(net, Magnitude(0.5, schedule=AGP(num_prunes=2)))
    with pytest.raises(ValueError, match="Iterative fine-tunes between rounds: pass data="):
        prune_(net, Magnitude(0.5, schedule=Iterative()))
    with pytest.raises(ValueError, match="AGP\\(num_prunes=None\\) needs the run length"):
        MaskPruner(net, Magnitude(0.5, schedule=AGP())).step()


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        ({"initial_sparsity": 1.0}, r"initial_sparsity: 1\.0 is not in \[0, 1\)"),
        ({"frequency": 0}, r"frequency must be >= 1, got 0"),
        ({"num_prunes": 0}, r"num_prunes must be >= 1, got 0"),
        ({"start_step": -1}, r"start_step must be >= 0"),
        ({"ramp_fraction": 0.0}, r"ramp_fraction: 0\.0 is not in \(0, 1\]"),
    ],
)
def test_bad_agp(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        AGP(**kwargs)


def test_bad_iterative():
    with pytest.raises(ValueError, match=r"rounds must be >= 1, got 0"):
        Iterative(rounds=0)
    with pytest.raises(ValueError, match=r"spacing: 'cubic' is not one of \['geometric', 'linear'\]"):
        Iterative(spacing="cubic")
    with pytest.raises(ValueError, match="schedule must be OneShot"):
        Magnitude(0.5, schedule="agp")


def test_fit_fn_replaces_the_default_training_loop():
    """prune_ never imports the trainer: a schedule that trains runs the loop it is given."""
    net = nn.Sequential(nn.Linear(8, 8, bias=False))
    data = TensorDataset(torch.randn(16, 8), torch.randint(0, 8, (16,)))
    calls = []

    def my_fit(model, data_, epochs, callbacks=(), **kwargs):
        calls.append((epochs, kwargs, float((model[0].weight == 0).float().mean())))

    cfg = Magnitude(0.75, schedule=Iterative(rounds=2, epochs=3, finetune={"lr": 0.5}))
    rep = prune_(net, cfg, data=data, fit_fn=my_fit)
    assert calls == [(3, {"progress": False, "lr": 0.5}, 0.5), (3, {"progress": False, "lr": 0.5}, 0.75)]
    assert rep.sparsity == pytest.approx(0.75)
