"""SmoothQuant (Xiao et al. 2023): float outputs unchanged, activation range lowered, W8A8 composes, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.llm_models import dict_batches, logits, tiny_char_gpt, tiny_llama
from torch import nn

from slimtorch.quant import Int8Dynamic, SmoothQuant, quantize_
from slimtorch.quant.algorithms.smoothquant import smooth_scales, w8a8_error


def _outlier_char_gpt() -> nn.Module:
    model = tiny_char_gpt()
    with torch.no_grad():
        for b in model.blocks:  # a few huge activation channels entering q/k/v and fc1
            b.ln1.weight[:3] = 30.0
            b.ln2.weight[:3] = 30.0
    return model


def test_scales_formula():
    xmax, wmax = torch.tensor([8.0, 1.0, 0.0]), torch.tensor([0.5, 2.0, 1.0])
    s = smooth_scales(xmax, wmax, 0.5)
    torch.testing.assert_close(s[:2], torch.tensor([8.0**0.5 / 0.5**0.5, 1.0 / 2.0**0.5]))
    assert s[2] == 1.0  # dead channel untouched


def test_float_output_unchanged_and_activation_range_lowered():
    model = _outlier_char_gpt()
    calib = [torch.randint(0, 65, (8, 32)) for _ in range(3)]
    x = torch.randint(0, 65, (8, 32))
    ref = model(x)
    smoothed = copy.deepcopy(model)
    report = quantize_(smoothed, SmoothQuant(alpha=0.5), calib_data=calib)
    out = smoothed(x)
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()
    q = report.details["layers"]["blocks.0.attn.q"]
    assert q["folded_into"] == "blocks.0.ln1" and q["act_absmax_smoothed"] < 0.2 * q["act_absmax"]
    # measured directly: max|X/s| entering q is the smoothed range
    seen = []
    h = smoothed.blocks[0].attn.q.register_forward_pre_hook(lambda _m, a: seen.append(a[0].abs().max()))
    for c in calib:
        smoothed(c)
    h.remove()
    assert abs(max(seen).item() - q["act_absmax_smoothed"]) < 1e-4 * q["act_absmax"]
    assert "blocks.0.fc2" in report.skipped  # GELU output: nothing to fold into


def test_smoothquant_then_w8a8_beats_plain_w8a8():
    model = _outlier_char_gpt()
    calib = [torch.randint(0, 65, (8, 32)) for _ in range(3)]
    x = torch.randint(0, 65, (8, 32))
    ref = model(x)
    plain = copy.deepcopy(model)
    quantize_(plain, Int8Dynamic())
    smooth = copy.deepcopy(model)
    quantize_(smooth, SmoothQuant(alpha="auto"), calib_data=calib)
    quantize_(smooth, Int8Dynamic())
    assert (smooth(x) - ref).pow(2).mean() < (plain(x) - ref).pow(2).mean()


def test_auto_alpha_minimises_w8a8_error_on_one_layer():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 32, generator=g)
    x[:, 5] *= 50
    w = torch.randn(16, 32, generator=g)
    xmax, wmax = x.abs().amax(0), w.abs().amax(0)
    errs = {a: w8a8_error(x, w, smooth_scales(xmax, wmax, a)) for a in (0.0, 0.5, 0.8)}
    assert errs[0.5] < errs[0.0]  # migrating the outlier helps


def test_tiny_llama_gqa_dict_batches():
    model = tiny_llama()
    calib = dict_batches(96)
    ref = logits(model, calib[0])
    report = quantize_(model, SmoothQuant(alpha=(0.3, 0.5, 0.7)), calib_data=calib)
    out = logits(model, calib[0])
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()
    assert report.details["layers"]["model.layers.0.self_attn.k_proj"]["folded_into"] == \
        "model.layers.0.input_layernorm"
    assert report.details["layers"]["model.layers.1.mlp.up_proj"]["folded_into"] == \
        "model.layers.1.post_attention_layernorm"


def test_bad_input():
    with pytest.raises(ValueError, match=r"alpha: 1.5 is not in \[0.0, 1.0\]"):
        SmoothQuant(alpha=1.5)
    with pytest.raises(ValueError, match=r"alpha: -0.1 is not in \[0.0, 1.0\]"):
        SmoothQuant(alpha=(0.5, -0.1))
    with pytest.raises(ValueError, match="'auto' or a list"):
        SmoothQuant(alpha="best")
    with pytest.raises(ValueError, match="smooths nn.Linear layers; Sequential has none"):
        quantize_(nn.Sequential(nn.Conv2d(1, 2, 3)), SmoothQuant(), calib_data=[torch.randn(1, 1, 4, 4)])
    with pytest.raises(ValueError, match="calibration data is empty"):
        quantize_(tiny_char_gpt(), SmoothQuant(), calib_data=[])
    assert SmoothQuant.from_dict(SmoothQuant(alpha="auto").to_dict()) == SmoothQuant(alpha="auto")
