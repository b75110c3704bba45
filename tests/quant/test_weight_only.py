"""WeightOnly: RTN grid, packed storage size, module forms, bias correction, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimtorch.core.config import Config
from slimtorch.quant import quantize_
from slimtorch.quant.groupwise import GroupCodes
from slimtorch.quant.modules.packed import WeightOnlyConv2d, WeightOnlyLinear
from slimtorch.quant.workflows.weight_only import WeightOnly


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    ).eval()


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_rtn_error_is_at_most_half_a_step(bits, symmetric):
    w = torch.randn(16, 64)
    codes = GroupCodes.round_to_nearest(w, bits, 16, symmetric)
    step = codes.scale.repeat_interleave(16, dim=1)
    assert ((codes.dequantize() - w).abs() <= step / 2 + 1e-6).all()
    assert codes.codes.dtype == (torch.int8 if symmetric else torch.uint8)


def test_packed_linear_matches_dequantized_codes():
    lin = nn.Linear(32, 8)
    codes = GroupCodes.round_to_nearest(lin.weight.detach(), 3, 16, False)
    q = WeightOnlyLinear.from_float(lin, codes)
    torch.testing.assert_close(q.weight, codes.dequantize())
    assert torch.equal(q.group_codes().codes, codes.codes)
    x = torch.randn(5, 32)
    torch.testing.assert_close(q(x), F.linear(x, codes.dequantize(), lin.bias))


def test_packed_conv_matches_dequantized_codes():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    flat = conv.weight.detach().reshape(6, -1)  # fan-in 2 * 9 = 18
    codes = GroupCodes.round_to_nearest(flat, 4, 18, True)
    q = WeightOnlyConv2d.from_float(conv, codes)
    x = torch.randn(2, 4, 9, 9)
    w = codes.dequantize().view_as(conv.weight)
    torch.testing.assert_close(q(x), F.conv2d(x, w, conv.bias, 2, 1, 1, 2))


def test_four_bit_model_is_an_eighth_of_fp32_plus_scales():
    model = _mlp()
    fp32_weights = sum(m.weight.numel() * 4 for m in model if isinstance(m, nn.Linear))
    report = quantize_(model, WeightOnly(bits=4, group_size=32))
    assert report.quantized == ["0", "2", "4"]
    layers = [m for m in model if isinstance(m, WeightOnlyLinear)]
    codes = sum(m.qweight.numel() for m in layers)
    groups = sum(m.scale.numel() for m in layers)
    assert codes == fp32_weights // 8  # exactly half a byte per weight
    # scale (4 bytes) + zero point (1 byte) per group of 32 weights
    expected = fp32_weights / 8 + groups * 5 + sum(m.bias.numel() * 4 for m in layers)
    assert sum(m.storage_bytes() for m in layers) == expected
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert state_bytes == expected
    # 1/8 for the codes + 5 bytes per 32 fp32 weights (128 bytes) for the group parameters, + float biases
    ratio = state_bytes / (fp32_weights + sum(m.bias.numel() * 4 for m in layers))
    assert 0.125 + 5 / 128 < ratio < 0.125 + 5 / 128 + 0.01


def test_rtn_model_output_close_and_report():
    torch.manual_seed(0)
    model = _mlp()
    x = torch.randn(32, 64)
    ref = model(x)
    report = quantize_(model, WeightOnly(bits=8, group_size=None))
    assert (model(x) - ref).abs().max() < 0.02 * ref.abs().max()
    assert report.scheme == "w8-rtn" and report.details["calib_batches"] == 0


def test_include_exclude_and_skipped_layers():
    model = nn.Sequential(nn.Embedding(10, 16), nn.Linear(16, 16), nn.Linear(16, 4))
    report = quantize_(model, WeightOnly(bits=4, group_size=16, exclude=("2",)))
    assert report.quantized == ["1"]
    assert isinstance(model[2], nn.Linear) and isinstance(model[1], WeightOnlyLinear)
    assert "0" in report.skipped and "Embedding" in report.skipped["0"]


def test_bias_correction_removes_mean_output_shift():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16)).eval()
    calib = [torch.randn(64, 32) + 3.0 for _ in range(4)]  # large input mean: a visible shift
    x = torch.cat(calib)
    ref = model(x)
    shifts = {}
    for bc in (False, True):
        q = copy.deepcopy(model)
        quantize_(q, WeightOnly(bits=3, group_size=None, bias_correction=bc), calib)
        shifts[bc] = (q(x) - ref).mean(0).abs().max().item()
    assert shifts[True] < 1e-4 < shifts[False]


def test_config_round_trip():
    cfg = WeightOnly(bits=3, group_size=128, method="gptq", gptq_act_order=True, exclude=("head",))
    assert Config.from_dict({**cfg.to_dict(), "type": "WeightOnly"}) == cfg


@pytest.mark.parametrize("bits", [1, 9, 4.0, True])
def test_bits_outside_2_to_8_are_refused(bits):
    with pytest.raises(ValueError, match=r"bits must be an integer in \[2, 8\]"):
        WeightOnly(bits=bits)


def test_bad_method_and_group_size_values():
    with pytest.raises(ValueError, match="method: 'hqq' is not one of"):
        WeightOnly(method="hqq")
    with pytest.raises(ValueError, match="group_size must be a positive integer or None, got 0"):
        WeightOnly(group_size=0)


def test_group_size_not_dividing_in_features_names_both():
    model = nn.Sequential(nn.Linear(48, 8))
    with pytest.raises(ValueError, match=r"group_size 32 does not divide in_features 48 of layer '0'"):
        quantize_(model, WeightOnly(bits=4, group_size=32))
    assert isinstance(model[0], nn.Linear)  # nothing was touched


def test_group_size_not_dividing_conv_fan_in():
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match=r"group_size 16 does not divide fan-in .* 27"):
        quantize_(model, WeightOnly(bits=4, group_size=16))


@pytest.mark.parametrize("method", ["gptq", "adaround"])
def test_bad_calibration_data(method):
    model = nn.Sequential(nn.Linear(8, 4))
    model.input_shape = (8,)
    cfg = WeightOnly(bits=4, group_size=8, method=method, adaround_iters=2)
    with pytest.raises(ValueError, match="calibration data is empty"):
        quantize_(model, cfg, [])
    bad = torch.randn(4, 8)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="calibration batch 1 contains 1 NaN/inf"):
        quantize_(model, cfg, [torch.randn(4, 8), bad])
    with pytest.raises(ValueError, match=r"calibration batch 0 has shape \(4, 5\).*input_shape \(8,\)"):
        quantize_(model, cfg, [torch.randn(4, 5)])
    assert isinstance(model[0], nn.Linear)


def test_attention_without_weight_only_form_is_listed():
    model = nn.Sequential(nn.Linear(8, 8))
    model.add_module("mha", nn.MultiheadAttention(8, 2, batch_first=True))
    report = quantize_(model, WeightOnly(bits=4, group_size=8))
    assert report.quantized == ["0"]
    assert "MultiheadAttention" in report.skipped["mha"]
    assert "NonDynamicallyQuantizableLinear" in report.skipped["mha.out_proj"]
