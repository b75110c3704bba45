"""profile / compare / compare_models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimtorch.metrics import compare, compare_models, profile, render_table


def test_profile_lenet5_both_runtimes():
    from slimtorch.models import create

    p = profile(create("lenet5"), torch.zeros(1, 1, 28, 28), runtimes=("torch", "onnxruntime"),
                warmup=1, repeats=3)
    assert p["params"] == p["nonzero_params"] == 431_080
    assert p["macs"] == 2_293_000
    assert 4 * 431_080 < p["size_bytes"] < 4 * 431_080 + 8_000
    assert p["latency_ms_torch"] > 0 and p["latency_ms_onnxruntime"] > 0
    assert p["batch_size"] == 1 and p["threads"] == 1
    assert "2.29 M MACs" in render_table([p])


def test_compare_gives_ratios():
    a = {"size_bytes": 1000, "macs": 400, "params": 100, "nonzero_params": 100, "latency_ms_torch": 3.0}
    b = {"size_bytes": 250, "macs": 100, "params": 50, "nonzero_params": 10, "latency_ms_torch": 1.5}
    assert compare(a, b) == {"size_x": 4.0, "macs_x": 4.0, "params_x": 2.0, "nonzero_x": 10.0,
                             "speedup_torch": 2.0}


def test_compare_models_halved_width():
    wide = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    narrow = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    res = compare_models(wide, narrow, torch.zeros(4, 64), warmup=1, repeats=3)
    assert res["ratios"]["macs_x"] == pytest.approx((64 * 128 + 128 * 10) / (64 * 64 + 64 * 10))
    assert res["ratios"]["params_x"] == pytest.approx(res["a"]["params"] / res["b"]["params"])
    assert res["ratios"]["speedup_torch"] == pytest.approx(
        res["a"]["latency_ms_torch"] / res["b"]["latency_ms_torch"])


def test_unknown_runtime_fails_fast():
    with pytest.raises(ValueError, match="unknown runtime 'tflite'"):
        profile(nn.Linear(2, 2), torch.zeros(1, 2), runtimes=("tflite",))
