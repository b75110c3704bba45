"""AdaRound (Nagel et al. 2020): rectified sigmoid, regulariser, schedule, reconstruction vs RTN."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimtorch.quant import quantize_
from slimtorch.quant.algorithms.adaround import (
    GAMMA,
    ZETA,
    adaround_weight,
    beta_schedule,
    init_v,
    rectified_sigmoid,
    rounding_regularizer,
)
from slimtorch.quant.groupwise import GroupCodes
from slimtorch.quant.workflows.weight_only import WeightOnly


def test_rectified_sigmoid_formula_and_inverse():
    v = torch.linspace(-8, 8, 101)
    expected = torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)
    torch.testing.assert_close(rectified_sigmoid(v), expected)
    assert rectified_sigmoid(torch.tensor(-8.0)) == 0 and rectified_sigmoid(torch.tensor(8.0)) == 1
    rest = torch.rand(1000) * 0.999
    torch.testing.assert_close(rectified_sigmoid(init_v(rest)), rest, atol=1e-5, rtol=0)


def test_regularizer_is_zero_at_hard_rounding_and_one_at_half():
    v = torch.tensor([-10.0, 10.0])
    assert rounding_regularizer(v, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    half = init_v(torch.tensor([0.5]))
    assert rounding_regularizer(half, 20.0).item() == pytest.approx(1.0, abs=1e-5)
    # beta = 2: 1 - (2h - 1)^2 at h = 0.25 -> 0.75
    assert rounding_regularizer(init_v(torch.tensor([0.25])), 2.0).item() == pytest.approx(0.75, abs=1e-5)


def test_beta_schedule_warmup_then_linear_20_to_2():
    assert beta_schedule(0, 100) is None and beta_schedule(19, 100) is None
    assert beta_schedule(20, 100) == pytest.approx(20.0)
    assert beta_schedule(60, 100) == pytest.approx(11.0)
    assert beta_schedule(100, 100) == pytest.approx(2.0)


def test_adaround_beats_rtn_on_layer_reconstruction():
    torch.manual_seed(0)
    w = torch.randn(16, 64) * 0.1
    x = torch.randn(512, 64) @ (torch.randn(64, 64) / 8)
    y = F.linear(x, w)
    codes, stats = adaround_weight(
        w, lambda a, ww: F.linear(a, ww), x, y, bits=3, group_size=32, iters=300, batch_size=64
    )
    rtn = GroupCodes.round_to_nearest(w, 3, 32, False)
    err = (F.linear(x, codes.dequantize()) - y).pow(2).sum(1).mean().item()
    err_rtn = (F.linear(x, rtn.dequantize()) - y).pow(2).sum(1).mean().item()
    assert err < 0.8 * err_rtn
    assert stats.final_loss == pytest.approx(err, rel=1e-4) and stats.rtn_loss == pytest.approx(
        err_rtn, rel=1e-4
    )
    # Every weight is rounded down or up from w/s: never further than one step from RTN.
    assert (codes.codes.int() - rtn.codes.int()).abs().max() <= 1
    assert 0 < stats.flipped < 0.5


def test_adaround_model_reconstruction_never_worse_than_rtn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).eval()
    calib = [torch.randn(16, 3, 8, 8) for _ in range(4)]
    x = torch.cat(calib)
    ref = model(x)
    rtn = copy.deepcopy(model)
    quantize_(rtn, WeightOnly(bits=3, group_size=None))
    report = quantize_(
        model, WeightOnly(bits=3, group_size=None, method="adaround", adaround_iters=150), calib
    )
    for layer in report.details["layers"].values():
        assert layer["adaround_recon"] <= layer["rtn_recon"]
    assert (model(x) - ref).pow(2).mean() < (rtn(x) - ref).pow(2).mean()
