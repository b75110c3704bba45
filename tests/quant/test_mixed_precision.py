"""Mixed precision: sensitivity table, greedy allocation under the budget, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from slimtorch.quant import quantize_
from slimtorch.quant.modules.packed import WeightOnlyLinear
from slimtorch.quant.workflows.mixed_precision import MixedPrecision, allocate_bits, layer_sensitivity
from slimtorch.quant.workflows.weight_only import WeightOnly


def test_allocation_by_hand():
    numels = {"a": 100, "b": 100, "c": 200}
    sens = {
        "a": {2: 5.0, 4: 0.5, 8: 0.0},  # very sensitive at 2 bits
        "b": {2: 0.2, 4: 0.1, 8: 0.0},
        "c": {2: 1.0, 4: 0.2, 8: 0.0},
    }
    # budget 4 bits/weight = 1600 bits; start at 2 bits = 800 bits.
    # gains per bit: a 2->4: 4.5/200, c 2->4: 0.8/400, b 2->4: 0.1/200 -> a, then c (800+200+400 = 1400);
    # then a 4->8 costs 400 (too much), b 2->4 costs 200 -> 1600.
    assert allocate_bits(numels, sens, (2, 4, 8), 4.0) == {"a": 4, "b": 4, "c": 4}
    bits = allocate_bits(numels, sens, (2, 4, 8), 3.0)  # 1200 bits: a 2->4 (1000), then b (1200)
    assert bits == {"a": 4, "b": 4, "c": 2}
    assert sum(numels[n] * bits[n] for n in numels) <= 3.0 * 400
    assert allocate_bits(numels, sens, (2, 4, 8), 8.0) == {"a": 8, "b": 8, "c": 8}


def _data(seed: int = 0) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    x = torch.randn(256, 32, generator=g)
    y = model(x).argmax(1)  # labels the float model gets right
    return model, [(x[i : i + 64], y[i : i + 64]) for i in range(0, 256, 64)]


def _loss(model: nn.Module, batches) -> float:
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    with torch.no_grad():
        return nn.functional.cross_entropy(model(x), y).item()


def test_sensitivity_table_is_the_one_layer_loss_change():
    model, batches = _data()
    base, table = layer_sensitivity(model, ["0", "2", "4"], batches, (2, 8), group_size=None)
    assert base == pytest.approx(_loss(model, batches), rel=1e-6)
    assert set(table) == {"0", "2", "4"} and set(table["2"]) == {2, 8}
    for name in ("0", "4"):
        trial = copy.deepcopy(model)
        quantize_(trial, WeightOnly(bits=2, group_size=None, include=(name,)))
        assert table[name][2] == pytest.approx(_loss(trial, batches) - base, rel=1e-4, abs=1e-6)
        assert isinstance(trial[int(name)], WeightOnlyLinear)
    for row in table.values():
        assert abs(row[8]) < 0.2 * abs(row[2])  # 8-bit weights barely change the loss, 2-bit ones do
    assert isinstance(model[0], nn.Linear)  # the analysis never touches the model


def test_mixed_precision_respects_budget_and_follows_the_table():
    model, batches = _data()
    ref = copy.deepcopy(model)
    report = quantize_(model, MixedPrecision(widths=(2, 4, 8), budget_bits=3.5, group_size=None), batches)
    d = report.details
    numels = {r["layer"]: r["weights"] for r in d["sensitivity"]}
    assert numels == {"0": 32 * 64, "2": 64 * 64, "4": 64 * 8}
    assert d["avg_bits"] <= 3.5
    assert sum(numels[n] * b for n, b in d["bits"].items()) <= 3.5 * sum(numels.values())
    table = {r["layer"]: {b: r[f"delta_{b}bit"] for b in (2, 4, 8)} for r in d["sensitivity"]}
    assert d["bits"] == allocate_bits(numels, table, (2, 4, 8), 3.5)
    for i in (0, 2, 4):
        assert isinstance(model[i], WeightOnlyLinear) and model[i].bits == d["bits"][str(i)]
    assert len(set(d["bits"].values())) > 1  # a real mix, not one width everywhere
    assert d["weight_bytes"] < d["fp32_weight_bytes"] / 6
    x = torch.cat([b[0] for b in batches])
    assert (model(x).argmax(1) == ref(x).argmax(1)).float().mean() > 0.7


def test_accuracy_metric_sign():
    model, batches = _data()
    _, table = layer_sensitivity(model, ["2"], batches, (2,), group_size=None, metric="accuracy")
    assert table["2"][2] > 0  # an accuracy drop counts as positive sensitivity


def test_bad_input():
    with pytest.raises(ValueError, match=r"widths must be an integer in \[2, 8\], got 1"):
        MixedPrecision(widths=(1, 4))
    with pytest.raises(ValueError, match="budget_bits 1.5 is below the smallest width 2"):
        MixedPrecision(budget_bits=1.5)
    model, batches = _data()
    with pytest.raises(ValueError, match="needs \\(inputs, targets\\) batches"):
        quantize_(model, MixedPrecision())
    with pytest.raises(ValueError, match="batch 0: expected an \\(inputs, targets\\) pair"):
        quantize_(model, MixedPrecision(group_size=None), [batches[0][0]])
    bad = batches[1][0].clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="calibration batch 1 contains 1 NaN/inf"):
        quantize_(model, MixedPrecision(group_size=None), [batches[0], (bad, batches[1][1])])
    with pytest.raises(ValueError, match="calibration data is empty"):
        quantize_(model, MixedPrecision(group_size=None), [])
