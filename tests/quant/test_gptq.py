"""GPTQ (Frantar et al. 2022): Hessian accumulation, output error vs RTN, identity-Hessian = RTN."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from slimtorch.models import create
from slimtorch.quant import quantize_
from slimtorch.quant.algorithms.gptq import accumulate_hessian, gptq_quantize, layer_groups
from slimtorch.quant.groupwise import GroupCodes
from slimtorch.quant.workflows.weight_only import WeightOnly


def _correlated_inputs(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d**0.5
    return torch.randn(n, d, generator=g) @ mix + 0.1 * torch.randn(n, d, generator=g)


def _hessian(x: torch.Tensor) -> torch.Tensor:
    h = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
    count = 0
    for xb in x.split(100):
        count = accumulate_hessian(h, count, xb)
    return h


def test_hessian_is_running_mean_of_2xxt():
    x = torch.randn(350, 16)
    expected = 2 * x.double().T @ x.double() / 350
    torch.testing.assert_close(_hessian(x), expected)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("group_size", [None, 32])
@pytest.mark.parametrize("bits", [3, 4])
def test_gptq_beats_rtn_on_layer_output_error(bits, group_size, act_order):
    w = torch.randn(48, 128)
    x = _correlated_inputs(1024, 128)
    codes, stats = gptq_quantize(
        w, _hessian(x), bits=bits, group_size=group_size, act_order=act_order, block_size=32
    )
    rtn = GroupCodes.round_to_nearest(w, bits, group_size or 128, symmetric=False)
    err_gptq = (x @ (w - codes.dequantize()).T).pow(2).sum()
    err_rtn = (x @ (w - rtn.dequantize()).T).pow(2).sum()
    assert err_gptq < 0.8 * err_rtn
    assert stats.loss > 0 and stats.dead == 0
    qmin, qmax = (0, 2**bits - 1)
    assert codes.codes.min() >= qmin and codes.codes.max() <= qmax


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [None, 16])
def test_identity_hessian_gives_round_to_nearest(symmetric, group_size):
    # With H = I the error feedback terms [H^-1]_{j,k>j} vanish, so GPTQ is plain rounding.
    w = torch.randn(20, 64)
    codes, _ = gptq_quantize(
        w,
        torch.eye(64, dtype=torch.float64),
        bits=3,
        group_size=group_size,
        symmetric=symmetric,
        percdamp=0.0,
    )
    rtn = GroupCodes.round_to_nearest(w, 3, group_size or 64, symmetric)
    assert torch.equal(codes.codes, rtn.codes)
    torch.testing.assert_close(codes.scale, rtn.scale)


def test_dead_inputs_get_zero_weight():
    w = torch.randn(8, 32)
    x = torch.randn(200, 32)
    x[:, 5] = 0.0
    codes, stats = gptq_quantize(w, _hessian(x), bits=4, group_size=None)
    assert stats.dead == 1
    assert codes.dequantize()[:, 5].abs().max() <= codes.scale.max() / 2 + 1e-6
    assert torch.isfinite(codes.dequantize()).all()


def test_hessian_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="does not match weight columns 32"):
        gptq_quantize(torch.randn(4, 32), torch.eye(16), bits=4)


def test_layer_groups_put_qkv_together():
    model = create("char_gpt", n_layer=1, n_embd=32, n_head=2, block_size=16).eval()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    groups = layer_groups(model, layers, (torch.randint(0, 65, (2, 16)),))
    assert groups[0] == ["blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v"]
    assert groups[1:] == [["blocks.0.attn.proj"], ["blocks.0.fc1"], ["blocks.0.fc2"], ["head"]]


def test_gptq_on_char_gpt_beats_rtn():
    torch.manual_seed(0)
    model = create("char_gpt", n_layer=2, n_embd=64, n_head=4, block_size=32).eval()
    calib = [torch.randint(0, 65, (8, 32)) for _ in range(4)]
    x = torch.randint(0, 65, (16, 32))
    ref = model(x)
    errs = {}
    for method in ("rtn", "gptq"):
        q = copy.deepcopy(model)
        report = quantize_(q, WeightOnly(bits=3, group_size=32, method=method), calib)
        errs[method] = (q(x) - ref).pow(2).mean().item()
        assert len(report.quantized) == 13 and "tok" in report.skipped
    assert errs["gptq"] < 0.8 * errs["rtn"]


def test_gptq_on_conv_uses_unfolded_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3)).eval()
    calib = [torch.randn(8, 3, 12, 12) for _ in range(3)]
    x = torch.randn(4, 3, 12, 12)
    ref = model(x)
    errs = {}
    for method in ("rtn", "gptq"):
        q = copy.deepcopy(model)
        quantize_(q, WeightOnly(bits=3, group_size=None, method=method), calib)
        errs[method] = (q(x) - ref).pow(2).mean().item()
    assert errs["gptq"] < errs["rtn"]


def test_gptq_needs_calibration_data():
    model = nn.Sequential(nn.Linear(8, 4))
    with pytest.raises(ValueError, match="needs calibration data"):
        quantize_(model, WeightOnly(bits=4, group_size=8, method="gptq"))
