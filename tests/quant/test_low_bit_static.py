"""LowBitStatic: low-bit weights (RTN / AdaRound / GPTQ) + 8-bit static activations on the digits model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from slimtorch.quant import Int8Static, quantize_
from slimtorch.quant.modules.fake_quant import QuantConv2d
from slimtorch.quant.workflows.low_bit_static import LowBitStatic, dequantize_weight_only_
from slimtorch.quant.workflows.weight_only import WeightOnly

from .conftest import accuracy


def test_dequantize_weight_only_returns_float_layers_with_grid_weights():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    x = torch.randn(2, 2, 6, 6)
    quantize_(model, WeightOnly(bits=3, group_size=None))
    y = model(x)
    codes = dequantize_weight_only_(model)
    assert set(codes) == {"0", "2"} and type(model[0]) is nn.Conv2d and type(model[2]) is nn.Linear
    torch.testing.assert_close(model(x), y)
    torch.testing.assert_close(model[2].weight, codes["2"].dequantize())


def test_rtn_equals_int8static_with_low_bit_weights(digits_model, digits_data):
    calib = list(digits_data["xtr"][:256].split(64))
    ref = copy.deepcopy(digits_model)
    quantize_(ref, Int8Static(weight_bits=3), calib)
    report = quantize_(digits_model, LowBitStatic(bits_w=3, method="rtn"), calib)
    assert report.scheme == "w3a8-rtn" and len(report.folded) == 2
    x = digits_data["xte"][:128]
    torch.testing.assert_close(digits_model(x), ref(x))


@pytest.mark.parametrize("method", ["adaround", "gptq"])
def test_adaround_and_gptq_beat_rtn_at_two_bits(digits_model, digits_data, method):
    calib = list(digits_data["xtr"][:256].split(64))
    xte, yte = digits_data["xte"], digits_data["yte"]
    rtn = copy.deepcopy(digits_model)
    quantize_(rtn, LowBitStatic(bits_w=2, method="rtn"), calib)
    report = quantize_(digits_model, LowBitStatic(bits_w=2, method=method, adaround_iters=200), calib)
    assert accuracy(digits_model, xte, yte) > accuracy(rtn, xte, yte) + 0.03
    conv = digits_model.features[0]
    assert isinstance(conv, QuantConv2d) and conv.weight_quant.bits == 2
    # the pinned grid: every quantized weight is a multiple of its channel's scale with |code| <= 1
    codes = conv.integer_weight()
    assert codes.min() >= -2 and codes.max() <= 1
    assert set(report.details["weight_method"]) == {"features.0", "features.4", "head.1", "head.3"}


def test_bad_input(digits_model):
    with pytest.raises(ValueError, match=r"bits_w must be an integer in \[2, 8\], got 9"):
        LowBitStatic(bits_w=9)
    with pytest.raises(ValueError, match="method: 'hqq' is not one of"):
        LowBitStatic(method="hqq")
    with pytest.raises(ValueError, match=r"needs rounding=AWQ\(explicit_scales=False\)"):
        LowBitStatic(method="awq")
    with pytest.raises(ValueError, match="LowBitStatic needs calibration data"):
        quantize_(digits_model, LowBitStatic())
