"""The Channel config: validation, allocation (uniform, global, overrides, round_to, MAC target), errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from slimtorch.metrics import count_macs
from slimtorch.models import create
from slimtorch.prune import METHODS, prune_
from slimtorch.prune.structured import Channel, allocate, build_dependency_graph, score_groups


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan")])
def test_ratio_outside_0_1_is_rejected(ratio: float) -> None:
    with pytest.raises(ValueError, match="ratio"):
        Channel(ratio=ratio)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"overrides": {"fc*": 1.0}}, r"overrides\['fc\*'\]"),
        ({"round_to": 0}, "round_to must be an integer >= 1"),
        ({"importance": "magic"}, "unknown importance 'magic'; valid: .*l1"),
        ({"allocation": "greedy"}, "allocation: 'greedy' is not one of"),
        ({"target_macs": -5}, "target_macs must be > 0"),
        ({"tracer": "jit"}, "tracer"),
        ({"target_speedup": 1.0}, r"target_speedup must be > 1 \(a speedup factor\), got 1.0"),
        ({"latency_runtimes": ("tvm",)}, "latency_runtimes: 'tvm' is not one of"),
        ({"latency_runtimes": ()}, "latency_runtimes must name at least one runtime"),
        ({"latency_batch": 0}, "latency_batch must be > 0"),
    ],
)
def test_bad_options_name_the_option(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Channel(**kwargs)


def test_config_round_trips_and_the_cli_builds_it_through_from_dict() -> None:
    from slimtorch.cli.main import build_parser
    from slimtorch.cli.prune import config_dict

    c = Channel(ratio=0.25, importance="fpgm", round_to=4, ignore=("fc",), overrides={"layer3*": 0.1})
    assert Channel.from_dict(c.to_dict()) == c
    assert METHODS.get("channel") is Channel
    assert not hasattr(Channel, "add_cli_arguments") and not hasattr(Channel, "from_cli_args")
    fields = {f.name for f in dataclasses.fields(Channel)}

    def build(*argv: str) -> Channel:
        args = build_parser().parse_args(["prune", "RUN", "--method", "channel", "--out", "o", *argv])
        return Channel.from_dict(config_dict(args, fields, {}))

    flags = build("--ratio", "0.4", "--importance", "taylor", "--round-to", "8", "--ignore", "fc")
    assert flags == Channel(ratio=0.4, importance="taylor", round_to=8, ignore=("fc",), max_batches=16)
    sets = build("--set", "ratio=0.4", "--set", "importance=taylor", "--set", "round_to=8", "--set", "exclude=[fc]")
    assert sets == flags
    assert build("--ratio", "0.4", "--set", "ratio=0.3", "--set", "overrides={layer3*: 0.1}") == Channel(
        ratio=0.3, overrides={"layer3*": 0.1}, max_batches=16
    )  # --set wins over a flag


def test_cli_prunes_channels(tmp_path) -> None:
    import slimtorch
    from slimtorch.cli.main import main

    slimtorch.save(create("mlp", in_features=64, hidden=(32, 16)), tmp_path / "run")
    code = main(["prune", str(tmp_path / "run"), "--method", "channel", "--ratio", "0.5", "--importance",
                 "taylor", "--calib-batches", "2", "--data", "digits", "--out", str(tmp_path / "p"),
                 "--no-progress"])
    assert code == 0
    pruned = slimtorch.load(tmp_path / "p")
    assert [m.out_features for m in pruned.net if isinstance(m, nn.Linear)] == [16, 8, 10]


def test_ratio_that_would_remove_every_channel_keeps_one_and_says_so() -> None:
    net = nn.Sequential(nn.Linear(4, 1), nn.ReLU(), nn.Linear(1, 2))
    with pytest.warns(UserWarning, match="would remove all 1 units"):
        report = prune_(net, Channel(ratio=0.5), example_inputs=torch.randn(1, 4))
    assert net[0].out_features == 1
    assert any("keeping 1" in w for w in report.extra["warnings"])


def test_round_to_keeps_multiples() -> None:
    model = create("resnet20")
    x = torch.randn(1, 3, 32, 32)
    prune_(model, Channel(ratio=0.3, round_to=8), example_inputs=x)
    # the nearest multiple of 8: 16*.7 -> 11 -> 8, 32*.7 -> 22 -> 24, 64*.7 -> 44 -> 48 (a tie rounds up)
    assert (
        model.conv1.out_channels,
        model.layer2[0].conv2.out_channels,
        model.layer3[0].conv2.out_channels,
    ) == (8, 24, 48)
    assert all(m.out_channels % 8 == 0 for m in model.modules() if isinstance(m, nn.Conv2d))


def test_overrides_and_ignore() -> None:
    model = create("resnet20")
    x = torch.randn(1, 3, 32, 32)
    prune_(
        model, Channel(ratio=0.5, overrides={"layer3.*": 0.0}, ignore=("layer1.0.conv1",)), example_inputs=x
    )
    assert model.layer1[0].conv1.out_channels == 16  # ignored: opaque, channels kept
    assert model.layer1[1].conv1.out_channels == 8
    assert model.layer3[1].conv1.out_channels == 64 and model.layer3[0].conv2.out_channels == 64
    assert model.layer2[1].conv1.out_channels == 16


def test_exclude_is_the_name_and_ignore_an_alias_of_it() -> None:
    assert Channel(ignore=("fc",)) == Channel(exclude=("fc",)) == Channel(exclude="fc")
    assert Channel(exclude=("a",), ignore=("b", "a")).exclude == ("a", "b")
    d = Channel(ignore=("fc",)).to_dict()
    assert d["exclude"] == ["fc"] and "ignore" not in d
    assert Channel.from_dict({"ignore": ["fc"]}) == Channel(exclude=("fc",))  # old recipes load


def test_exclude_and_filter_fn_keep_the_same_channels() -> None:
    x = torch.randn(1, 3, 32, 32)
    by_name, by_fn = create("resnet20"), create("resnet20")
    prune_(by_name, Channel(ratio=0.5, exclude=("layer1.0.conv1",)), example_inputs=x)
    prune_(by_fn, Channel(ratio=0.5, filter_fn=lambda m, fqn: fqn != "layer1.0.conv1"), example_inputs=x)
    assert by_fn.layer1[0].conv1.out_channels == by_name.layer1[0].conv1.out_channels == 16
    assert [p.shape for p in by_fn.parameters()] == [p.shape for p in by_name.parameters()]


def test_global_allocation_removes_the_lowest_normalized_units() -> None:
    model = create("resnet20")
    x = torch.randn(1, 3, 32, 32)
    config = Channel(ratio=0.4, allocation="global")
    graph = build_dependency_graph(model, x)
    scores = score_groups(model, graph, config)
    removed = allocate(graph, scores, config, 0.4)
    total = sum(g.n_units for g in graph.groups)
    assert sum(len(r) for r in removed) == int(total * 0.4)
    norm = [s / s.mean() for s in scores]
    cut = max(float(n[r].max()) for n, r in zip(norm, removed) if len(r))
    kept_min = min(
        float(n[[i for i in range(len(n)) if i not in set(r.tolist())]].min()) for n, r in zip(norm, removed)
    )
    assert cut <= kept_min  # nothing kept scores below anything removed
    report = prune_(model, config, example_inputs=x)
    assert report.macs_after < report.macs_before and model(x).shape == (1, 10)


@pytest.mark.parametrize("target", [0.5, 20_000_000])
def test_target_macs_reaches_the_target_with_the_smallest_ratio(target: float) -> None:
    model = create("resnet20")
    x = torch.randn(1, 3, 32, 32)
    macs0 = count_macs(model, x)
    goal = target * macs0 if target <= 1 else target
    report = prune_(model, Channel(target_macs=target), example_inputs=x)
    assert report.macs_after <= goal
    assert report.macs_after > 0.8 * goal  # not pruned far past the target
    looser = create("resnet20")
    r = prune_(looser, Channel(ratio=max(0.0, report.extra["ratio"] - 0.01)), example_inputs=x)
    assert r.macs_after > goal or r.macs_after == report.macs_after


def test_unreachable_mac_target_is_an_error() -> None:
    with pytest.raises(ValueError, match="out of reach"):
        prune_(create("mlp"), Channel(target_macs=10), example_inputs=torch.randn(1, 784))


def test_target_speedup_is_met_as_measured_and_prunes_no_more_than_needed() -> None:
    # Wide hidden layers: latency tracks the hidden width, so the search has a clear signal.
    model = create("mlp", in_features=256, hidden=[1024, 1024], num_classes=10).eval()
    x = torch.randn(1, 256)
    ref = model(x).shape
    config = Channel(target_speedup=1.5, latency_runtimes=("torch",), latency_batch=64, latency_repeats=5)
    report = prune_(model, config, example_inputs=x)
    measured = report.extra["measured_speedups"]
    assert set(measured) == {"torch"} and measured["torch"] >= 1.5
    assert model(x).shape == ref
    assert 0.0 < report.extra["ratio"] < 0.999
    assert report.macs_after < report.macs_before / 1.2  # latency fell because work fell


def test_target_speedup_and_target_macs_must_both_hold() -> None:
    model = create("mlp", in_features=256, hidden=[512], num_classes=10).eval()
    x = torch.randn(1, 256)
    macs0 = count_macs(model, x)
    report = prune_(model, Channel(target_macs=0.3, target_speedup=1.1, latency_repeats=3), example_inputs=x)
    assert report.macs_after <= 0.3 * macs0
    assert report.extra["measured_speedups"]["torch"] >= 1.1


def test_unreachable_speedup_is_an_error_with_the_measurement() -> None:
    model = create("mlp", in_features=64, hidden=[16], num_classes=10)
    with pytest.raises(ValueError, match=r"speedup >= 1000.0 on torch\) is out of reach.*measured speedups torch"):
        prune_(model, Channel(target_speedup=1000.0, latency_repeats=3), example_inputs=torch.randn(1, 64))


def test_untraceable_model_says_where_and_suggests_ignore() -> None:
    model = create("char_gpt", block_size=8, n_layer=1, n_head=2, n_embd=8)
    x = torch.zeros(1, 8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"torch.fx cannot trace CharGPT.*control flow.*ignore="):
        prune_(model, Channel(ratio=0.5, tracer="fx"), example_inputs=x)
    report = prune_(model, Channel(ratio=0.5, tracer="auto"), example_inputs=x)  # falls back to concrete
    assert report.extra["tracer"] == "concrete" and model(x).shape == (1, 8, 65)
    assert any("torch.fx failed" in n for n in report.extra["notes"])


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2_cifar", "vit_tiny"])
def test_fx_and_concrete_tracing_find_the_same_groups(name: str) -> None:
    model = create(name)
    x = torch.randn(1, *model.input_shape)
    fx = build_dependency_graph(model, x, tracer="fx")
    concrete = build_dependency_graph(model, x, tracer="concrete")
    assert fx.tracer == "fx" and concrete.tracer == "concrete"
    assert [(g.name, g.n_units, sorted(g.members)) for g in fx.groups] == [
        (g.name, g.n_units, sorted(g.members)) for g in concrete.groups
    ]


class Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def test_forward_failing_under_tracing_names_the_module() -> None:
    with pytest.raises(
        ValueError, match=r"cannot trace Broken: the forward raised in module 'b'.*ignore=\('b',\)"
    ):
        prune_(Broken(), Channel(ratio=0.5, tracer="concrete"), example_inputs=torch.randn(1, 4))


def test_report_lists_changed_layers() -> None:
    model = create("mlp", hidden=(8, 4))
    report = prune_(model, Channel(ratio=0.5), example_inputs=torch.randn(1, 784))
    rows = {r.name: (r.shape_before, r.shape_after) for r in report.layers}
    assert rows["net.1"] == ((8, 784), (4, 784)) and rows["net.3"] == ((4, 8), (2, 4))
    assert rows["net.5"] == ((10, 4), (10, 2))
    assert "Channel" in report.table()



def test_target_macs_gives_back_a_group_a_later_one_made_unnecessary() -> None:
    # hidden=[16, 16], round_to=8: both groups step 16 -> 8 at the same ratio. The second hidden layer's
    # weak half is cheap to cut but saves few MACs, so the refinement adds it first, misses the target,
    # then adds the first hidden layer (most MACs), which alone meets the target: the second is given back.
    torch.manual_seed(0)
    model = create("mlp", in_features=784, hidden=[16, 16], num_classes=10)
    with torch.no_grad():
        model.net[3].weight[8:] *= 1e-3  # second hidden layer: units 8..15 nearly unused
        model.net[5].weight[:, 8:] *= 1e-3
    x = torch.randn(1, 784)
    report = prune_(model, Channel(target_macs=0.51, round_to=8), example_inputs=x)
    assert (model.net[1].out_features, model.net[3].out_features) == (8, 16)
    assert report.macs_after <= 0.51 * report.macs_before


def test_target_macs_keeps_no_group_the_target_does_not_need() -> None:
    # round_to=8 on ResNet-20 moves whole groups in steps of 8 channels, so the refinement adds groups one by
    # one; the reverting pass must leave a plan from which no single group can be given back.
    from slimtorch.prune.structured.channel import _Constraints, _search_ratio

    model = create("resnet20")
    x = torch.randn(1, 3, 32, 32)
    config = Channel(target_macs=0.5, round_to=8)
    graph = build_dependency_graph(model, x)
    scores = score_groups(model, graph, config)
    goal = 0.5 * count_macs(model, x)
    meets = _Constraints(model, graph, config, x, goal)
    ratio, removed = _search_ratio(graph, scores, config, meets)
    assert meets(removed)
    below = allocate(graph, scores, config, ratio - 1e-3)
    for gi in range(len(removed)):
        if len(removed[gi]) > len(below[gi]):
            trial = list(removed)
            trial[gi] = below[gi]
            assert not meets(trial), f"group {graph.groups[gi].name} is pruned past what the target needs"
