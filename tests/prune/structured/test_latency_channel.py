"""``Channel(allocation="latency")`` end to end: argument errors, a deterministic (injected) latency measurer
on zoo CNNs and hidden-architecture kinds, the table cache, and one real-measurement smoke run."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from slimtorch.metrics import count_macs
from slimtorch.models import create
from slimtorch.prune import prune_
from slimtorch.prune.structured import Channel


def simulated_ms(model: nn.Module, x: torch.Tensor | None = None) -> float:
    """A deterministic stand-in for a runtime, from the layers' shapes alone: 1 ms + 1 ms per 10k weights of
    conv / linear layers (per output pixel), + 0.2 ms per layer whose output width is not a multiple of 4 (a
    blocked kernel's padding)."""
    ms = 1.0
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            ms += m.weight.numel() / 1e4
            out = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            ms += 0.2 * (out % 4 != 0)
    return ms


class Counter:
    """An injected measurer that counts the models it is asked to time."""

    def __init__(self) -> None:
        self.models = 0

    def __call__(self, models, inputs, runtime, threads, repeats):  # noqa: ANN001
        self.models += len(models)
        scale = 0.5 if runtime == "onnxruntime" else 1.0  # two "runtimes" with different speeds
        return [scale * simulated_ms(m) for m in models]


def _config(**kw) -> Channel:
    base = {"allocation": "latency", "latency_runtimes": ("torch",), "latency_batch": 2, "latency_cache": False,
            "latency_measurer": Counter()}
    return Channel(**{**base, **kw})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"allocation": "latency"}, "allocation='latency' needs a target: target_speedup=1.6"),
        ({"allocation": "latency", "target_speedup": 1.5, "latency_budget_ms": 3.0},
         r"give target_speedup \(1.5\) or latency_budget_ms \(3.0\), not both"),
        ({"latency_budget_ms": 3.0}, "latency_budget_ms needs allocation='latency' \\(got allocation='uniform'\\)"),
        ({"allocation": "latency", "latency_budget_ms": 0.0}, "latency_budget_ms must be > 0"),
        ({"allocation": "latency", "target_speedup": 1.0}, r"target_speedup must be > 1"),
        ({"allocation": "latency", "target_speedup": 0.5}, r"target_speedup must be > 1"),
        ({"allocation": "latency", "target_speedup": 1.5, "target_macs": 0.5}, "drop target_macs"),
        ({"allocation": "latency", "target_speedup": 1.5, "latency_runtimes": ("tensorrt",)},
         r"latency_runtimes: 'tensorrt' is not one of \[.*'onnxruntime-int8'"),
        ({"allocation": "latency", "target_speedup": 1.5, "latency_points": 1},
         "latency_points must be an integer >= 2"),
        ({"allocation": "latency", "target_speedup": 1.5, "latency_solver": "dp"},
         "latency_solver: 'dp' is not one of"),
        ({"allocation": "latency", "target_speedup": 1.5, "latency_combine": "max"}, "latency_combine: 'max' is not"),
        ({"allocation": "latency", "target_speedup": 1.5, "latency_corrections": -1},
         "latency_corrections must be an integer >= 0"),
        ({"allocation": "latency", "target_speedup": 1.5, "latency_measurer": 3}, "latency_measurer must be callable"),
    ],
)
def test_bad_latency_options_name_the_option(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Channel(**kwargs)


def _check_plan(model: nn.Module, report, config: Channel, x: torch.Tensor, target: float) -> None:
    lat = report.latency
    assert lat is not None and lat.runtimes == list(config.latency_runtimes)
    for r in lat.runtimes:
        # the plan's measured speedup (the injected measurer is exact) meets the target
        assert lat.measured_speedup[r] >= target
        assert lat.measured_speedup[r] == pytest.approx(lat.measured_dense_ms[r] / lat.measured_ms[r])
        assert lat.predicted_speedup[r] == pytest.approx(lat.base_ms[r] / lat.predicted_ms[r])
        assert lat.prediction_error[r] == pytest.approx(lat.predicted_speedup[r] / lat.measured_speedup[r] - 1)
        scale = 0.5 if r == "onnxruntime" else 1.0
        assert lat.measured_ms[r] == pytest.approx(scale * simulated_ms(model))
    for g in lat.groups:  # round_to, the minimum width and the group sizes are respected
        assert g["kept"] == g["units"] or (g["kept"] % config.round_to == 0 and g["kept"] >= config.round_to)
        assert 1 <= g["kept"] <= g["units"]
    assert report.macs_after == lat.macs_after == count_macs(model, x)
    assert lat.macs_after < lat.macs_before
    assert report.extra["measured_speedups"] == lat.measured_speedup
    assert "latency-aware allocation" in report.table() and "prediction error" in str(lat)
    assert report.to_dict()["latency"]["groups"] == lat.groups


def test_resnet20_meets_a_simulated_speedup_with_round_to() -> None:
    model = create("resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    y = model(x).shape
    config = _config(target_speedup=1.6, round_to=4, latency_points=3)
    report = prune_(model, config, example_inputs=x)
    _check_plan(model, report, config, x, 1.6)
    assert model(x).shape == y
    # the widths in the model are the plan's
    kept = {g["name"]: g["kept"] for g in report.latency.groups}
    assert model.conv1.out_channels == kept["conv1"]


@pytest.mark.parametrize("solver", ["knapsack", "greedy"])
def test_lenet_meets_a_simulated_speedup_with_either_solver(solver: str) -> None:
    model = create("lenet5").eval()
    x = torch.randn(1, 1, 28, 28)
    config = _config(target_speedup=1.5, round_to=2, latency_solver=solver)
    report = prune_(model, config, example_inputs=x)
    _check_plan(model, report, config, x, 1.5)
    assert solver in report.latency.objective


@pytest.mark.parametrize("solver", ["knapsack", "greedy"])
def test_latency_budget_in_ms_and_two_runtimes(solver: str) -> None:
    model = create("lenet5").eval()
    x = torch.randn(1, 1, 28, 28)
    dense = simulated_ms(model)
    config = _config(latency_budget_ms=0.8 * dense, latency_runtimes=("torch", "onnxruntime"), round_to=2,
                     latency_solver=solver)
    report = prune_(model, config, example_inputs=x)
    lat = report.latency
    assert lat.target_speedup is None and lat.budget_ms == {"torch": 0.8 * dense, "onnxruntime": 0.8 * dense}
    # the slower runtime (torch, twice the simulated time of "onnxruntime") binds
    assert lat.measured_ms["torch"] <= 0.8 * dense
    assert lat.measured_ms["onnxruntime"] == pytest.approx(0.5 * lat.measured_ms["torch"])


def test_mobilenetv2_and_overrides_fix_a_group() -> None:
    model = create("mobilenetv2_cifar", num_classes=10, width_mult=0.25).eval()
    x = torch.randn(1, 3, 32, 32)
    config = _config(target_speedup=1.3, round_to=1, overrides={"features.2.*": 0.0}, latency_points=3)
    report = prune_(model, config, example_inputs=x)
    _check_plan(model, report, config, x, 1.3)
    fixed = [g for g in report.latency.groups if g["name"].startswith("features.2.")]
    assert fixed and all(g["kept"] == g["units"] for g in fixed)
    assert any(g["kept"] < g["units"] for g in report.latency.groups)


class Hidden(nn.Module):
    """Concat of two branches, a grouped conv, a depthwise conv and a squeeze-and-excitation block."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(3, 16, 3, padding=1)
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=2)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.se1 = nn.Conv2d(32, 16, 1)
        self.se2 = nn.Conv2d(16, 32, 1)
        self.pw = nn.Conv2d(32, 24, 1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        h = torch.relu(self.dw(torch.relu(self.grouped(h))))
        s = torch.sigmoid(self.se2(torch.relu(self.se1(h.mean((2, 3), keepdim=True)))))
        h = torch.relu(self.pw(h * s))
        return self.fc(h.mean((2, 3)))


def test_hidden_architecture_kinds_prune_to_a_consistent_model() -> None:
    model = Hidden().eval()
    x = torch.randn(1, 3, 16, 16)
    config = _config(target_speedup=1.05, round_to=4)  # the simulated time is mostly the fixed 1 ms here
    report = prune_(model, config, example_inputs=x)
    _check_plan(model, report, config, x, 1.05)
    assert model(x).shape == (1, 10)
    assert model.dw.groups == model.dw.out_channels == model.grouped.out_channels
    assert model.se2.out_channels == model.dw.out_channels
    assert model.grouped.in_channels == model.a.out_channels + model.b.out_channels


def test_tables_are_cached_per_runtime_batch_and_measurer(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SLIMTORCH_CACHE", str(tmp_path))
    x = torch.randn(1, 1, 28, 28)
    counter = Counter()

    def run(**kw):
        before = counter.models
        cfg = Channel(**{"allocation": "latency", "target_speedup": 1.3, "latency_batch": 2, "round_to": 2,
                         "latency_measurer": counter, **kw})
        rep = prune_(create("lenet5").eval(), cfg, example_inputs=x)
        return counter.models - before, rep.latency

    first, lat1 = run()
    files = list((tmp_path / "latency").glob("*.json"))
    assert len(files) == 1 and not lat1.from_cache["torch"]
    again, lat2 = run()
    assert lat2.from_cache["torch"] and lat2.groups == lat1.groups
    # only the verification runs were timed (dense and pruned, once per distinct plan)
    assert again < first and again == 2 * len({tuple(a["keeps"]) for a in lat2.attempts})
    other, lat3 = run(latency_batch=4)  # another batch: another table
    assert not lat3.from_cache["torch"] and other == first
    assert len(list((tmp_path / "latency").glob("*.json"))) == 2
    off, lat4 = run(latency_batch=4, latency_cache=False)
    assert not lat4.from_cache["torch"] and off == first


def test_an_unreachable_latency_target_is_an_error() -> None:
    # one group: its narrowest width is measured, so the prediction is exact (and above the budget)
    model = create("mlp", in_features=64, hidden=[16], num_classes=10).eval()
    with pytest.raises(ValueError, match=r"latency target is out of reach: even the narrowest allowed widths are "
                                         r"predicted at torch 1\.\d+ ms \(dense 1\.32 ms, budget 0\.66 ms\)"):
        prune_(model, _config(target_speedup=2.0), example_inputs=torch.randn(1, 64))


def test_real_measurement_smoke() -> None:
    """Real timing (nothing about speed is asserted: it depends on the machine): it runs and returns a plan."""
    model = create("mlp", in_features=64, hidden=[128, 128], num_classes=10).eval()
    x = torch.randn(1, 64)
    config = Channel(allocation="latency", target_speedup=1.2, latency_runtimes=("torch",), latency_batch=16,
                     latency_repeats=3, latency_points=3, latency_corrections=1, latency_cache=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a missed target on a loaded machine is a warning
        report = prune_(model, config, example_inputs=x)
    lat = report.latency
    assert len(lat.groups) == 2 and all(1 <= g["kept"] <= g["units"] for g in lat.groups)
    assert lat.measured_ms["torch"] > 0 and lat.predicted_ms["torch"] > 0
    assert model(x).shape == (1, 10)


def test_vit_heads_and_ffn_widths_are_allocated() -> None:
    model = create("vit_tiny").eval()
    x = torch.randn(1, *model.input_shape)
    config = _config(target_speedup=1.3, latency_points=3)
    report = prune_(model, config, example_inputs=x)
    _check_plan(model, report, config, x, 1.3)
    kept = {g["name"]: g["kept"] for g in report.latency.groups}
    heads = [name for name in kept if name.endswith(".attn")]  # head groups: a unit is a whole head
    assert heads and any(f"{name}.fc1" in kept for name in (h.rsplit(".", 1)[0] for h in heads))  # FFN groups too
    for i, block in enumerate(model.blocks):
        assert block.attn.num_heads == kept[f"blocks.{i}.attn"]
        assert block.fc1.out_features == kept.get(f"blocks.{i}.fc1", block.fc1.out_features)
    assert any(block.attn.num_heads < 3 for block in model.blocks)
    assert model(x).shape == (1, 10)


def test_a_residual_stream_unit_weighs_as_many_layers_as_it_is_cut_from() -> None:
    from slimtorch.prune.structured import build_dependency_graph
    from slimtorch.prune.structured.latency_search import coupled_layers

    model = create("resnet20").eval()
    graph = build_dependency_graph(model, torch.zeros(1, 3, 32, 32))
    by_name = {g.name: coupled_layers(model, g) for g in graph.groups}
    assert by_name["layer1.0.conv1"] == 2  # a block's inner channel: conv1's output, conv2's input
    # the stage-3 stream (shortcut B): layer3.0's projection and conv2 write it; three blocks' conv1 and
    # layer3.1/3.2's conv2 read or write it, and the classifier reads it
    stream = by_name["layer3.0.conv2"]
    assert stream == sum(1 for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
                         and (n.startswith("layer3.") and (n.endswith("conv2") or n.endswith("shortcut.0"))
                              or n in ("layer3.1.conv1", "layer3.2.conv1", "fc")))


def test_an_optimistic_table_falls_back_to_measuring_the_narrowest_plan() -> None:
    """A runtime with a context cost the per-group table cannot see (+20% of the dense time as soon as two
    layers are narrowed; each table variant narrows one group): the solved plans miss the target, the
    tightened budget has no plan in the table, and the narrowest plan is measured, meets it and is returned
    (before: the closest miss, with a warning)."""
    model = create("resnet20").eval()
    penalty = 0.2 * simulated_ms(model)
    dense = {n: m.weight.shape[0] for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}

    def measurer(models, inputs, runtime, threads, repeats):  # noqa: ANN001
        out = []
        for m in models:
            narrowed = sum(1 for n, layer in m.named_modules()
                           if n in dense and layer.weight.shape[0] != dense[n])
            out.append(simulated_ms(m) + (penalty if narrowed >= 2 else 0.0))
        return out

    config = _config(target_speedup=2.0, round_to=2, latency_measurer=measurer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no measured plan met the target" warning
        report = prune_(model, config, example_inputs=torch.randn(1, 3, 32, 32))
    lat = report.latency
    assert lat.measured_speedup["torch"] >= 2.0
    narrowest = [a["keeps"] for a in lat.attempts if all(k == 2 for k in a["keeps"])]
    assert narrowest and lat.attempts[0]["keeps"] != narrowest[0]
    assert all(a["measured_dense_ms"]["torch"] / a["measured_ms"]["torch"] < 2.0 for a in lat.attempts[:-1])
