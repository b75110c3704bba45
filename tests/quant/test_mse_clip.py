"""MSE-clipped RTN: equals a brute-force search over the ratios, never worse than RTN, usable as a sub-config."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from slimtorch.core.config import Config
from slimtorch.quant import MSEClip, WeightOnly, quantize_
from slimtorch.quant import primitives as P
from slimtorch.quant.algorithms.mse_clip import mse_clip_codes
from slimtorch.quant.groupwise import GroupCodes
from slimtorch.quant.modules.packed import WeightOnlyLinear


def _group_error(w: torch.Tensor, lo: float, hi: float, bits: int, symmetric: bool) -> float:
    """||w - Q(w; lo, hi)||^2 of one group, Q rounding to nearest on the grid of [lo, hi]."""
    scale, zero = P.choose_qparams(torch.tensor(lo), torch.tensor(hi), bits, symmetric=symmetric, signed=symmetric)
    q = P.quantize_affine(w, scale, zero, bits, symmetric)
    return float((P.dequantize_affine(q, scale, zero) - w).pow(2).sum())


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_equals_brute_force_search_on_a_tiny_tensor(bits, symmetric):
    torch.manual_seed(0)
    w = torch.randn(3, 8)
    w[0, 1] = 6.0  # an outlier: clipping pays off in that group
    ratios = MSEClip(grid=11).ratios()
    codes = mse_clip_codes(w, bits, 4, symmetric, ratios)
    got = (codes.dequantize() - w).pow(2).reshape(3, 2, 4).sum(-1)  # (rows, groups)
    for r in range(3):
        for g in range(2):
            wg = w[r, 4 * g: 4 * g + 4]
            lo, hi = float(wg.min()), float(wg.max())
            best = min(_group_error(wg, c * lo, c * hi, bits, symmetric) for c in ratios.tolist())
            assert got[r, g].item() == pytest.approx(best, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("symmetric", [False, True])
def test_error_is_at_most_rtn_on_every_row_and_smaller_with_outliers(symmetric):
    torch.manual_seed(1)
    w = torch.randn(32, 64)
    w[:, 0] *= 8  # heavy outliers in every row
    rtn = GroupCodes.round_to_nearest(w, 3, 16, symmetric)
    mse = mse_clip_codes(w, 3, 16, symmetric, MSEClip().ratios())
    rtn_err = (rtn.dequantize() - w).pow(2).sum(1)
    mse_err = (mse.dequantize() - w).pow(2).sum(1)
    assert (mse_err <= rtn_err + 1e-6).all()
    assert mse_err.sum() < rtn_err.sum()  # clipping pays off somewhere


def test_single_ratio_one_is_rtn():
    w = torch.randn(4, 32)
    rtn = GroupCodes.round_to_nearest(w, 4, 8, False)
    mse = mse_clip_codes(w, 4, 8, False, MSEClip(grid=1).ratios())
    assert torch.equal(mse.codes, rtn.codes) and torch.equal(mse.scale, rtn.scale)


def test_weight_only_with_mse_rounding_and_its_shorthand():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    ra = quantize_(a, WeightOnly(bits=3, group_size=16, rounding=MSEClip()))
    rb = quantize_(b, WeightOnly(bits=3, group_size=16, method="mse"))
    rtn = quantize_(copy.deepcopy(model), WeightOnly(bits=3, group_size=16))
    assert isinstance(a[0], WeightOnlyLinear) and ra.scheme == "w3-mse"
    assert torch.equal(a[0].qweight, b[0].qweight) and rb.scheme == "w3-mse"
    for name in ("0", "2"):
        assert ra.details["layers"][name]["weight_mse"] <= rtn.details["layers"][name]["weight_mse"] + 1e-9


def test_round_trip_and_bad_options():
    cfg = WeightOnly(bits=4, rounding=MSEClip(grid=20, min_ratio=0.6))
    d = cfg.to_dict()
    assert d["rounding"] == {"type": "MSEClip", "grid": 20, "min_ratio": 0.6}
    assert Config.from_dict({"type": "WeightOnly", **d}) == cfg
    with pytest.raises(ValueError, match="min_ratio"):
        MSEClip(min_ratio=0.0)
    with pytest.raises(ValueError, match="grid"):
        MSEClip(grid=0)
