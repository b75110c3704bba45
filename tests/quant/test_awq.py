"""AWQ (Lin et al. 2024): scale search vs RTN on outlier channels, folding, clipping, models, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.llm_models import dict_batches, logits, tiny_char_gpt, tiny_llama
from torch import nn

from slimtorch.quant import AWQ, InputScaled, WeightOnly, quantize_
from slimtorch.quant.algorithms.awq import awq_clip_codes, awq_scale_search
from slimtorch.quant.groupwise import GroupCodes


def _outlier_inputs(n: int = 512, d: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    x[:, [3, 17, 40]] *= 25.0  # a few salient input channels, as in LLM activations
    return x


def test_scaled_then_quantized_error_below_rtn_on_outlier_channels():
    w, x = torch.randn(32, 64), _outlier_inputs()
    s, alpha, loss, rtn_loss = awq_scale_search(w, x, AWQ().alphas(), bits=3, group_size=32, symmetric=False)
    wq = GroupCodes.round_to_nearest(w * s, 3, 32, False).dequantize() / s
    rtn = GroupCodes.round_to_nearest(w, 3, 32, False).dequantize()
    err_awq = (x @ (wq - w).T).pow(2).mean()
    err_rtn = (x @ (rtn - w).T).pow(2).mean()
    assert alpha > 0 and err_awq < 0.7 * err_rtn
    torch.testing.assert_close(torch.tensor(loss), err_awq, rtol=1e-4, atol=0)
    torch.testing.assert_close(torch.tensor(rtn_loss), err_rtn, rtol=1e-4, atol=0)
    assert s[[3, 17, 40]].min() > s.median()  # the salient channels get the largest scales


def test_clipping_never_worse_than_min_max_on_output_error():
    w, x = torch.randn(16, 64), _outlier_inputs(256)
    ratios = torch.linspace(1.0, 0.5, 20)
    clipped = awq_clip_codes(w, x, 3, 16, False, ratios).dequantize()
    plain = GroupCodes.round_to_nearest(w, 3, 16, False).dequantize()

    def per_group(wq: torch.Tensor) -> torch.Tensor:  # (out, groups) output error of each group
        d = (wq - w).reshape(16, 4, 16)
        return torch.einsum("rGg,nGg->rGn", d, x.reshape(-1, 4, 16)).pow(2).mean(-1)

    assert torch.all(per_group(clipped) <= per_group(plain) + 1e-6)
    assert per_group(clipped).sum() < per_group(plain).sum()


def test_char_gpt_awq_folds_into_norms_and_beats_rtn():
    model = tiny_char_gpt()
    with torch.no_grad():
        model.tok.weight[:, :4] *= 20  # outlier embedding channels
    calib = [torch.randint(0, 65, (8, 32)) for _ in range(3)]
    x = torch.randint(0, 65, (8, 32))
    ref = model(x)
    errs, reports = {}, {}
    for method in ("rtn", "awq"):
        q = copy.deepcopy(model)
        reports[method] = quantize_(q, WeightOnly(3, 32, method), calib_data=calib)
        errs[method] = (q(x) - ref).pow(2).mean().item()
    assert errs["awq"] < 0.8 * errs["rtn"]
    layers = reports["awq"].details["layers"]
    assert layers["blocks.0.attn.q"]["scale"] == "folded into blocks.0.ln1"
    assert layers["head"]["scale"] == "folded into ln_f"
    assert layers["blocks.0.fc2"]["scale"] in ("explicit", "none")  # GELU in between: cannot fold


def test_explicit_scale_is_exact_before_rounding():
    lin = nn.Linear(8, 4)
    s = torch.rand(8) + 0.5
    wrapped = InputScaled(copy.deepcopy(lin), s)
    with torch.no_grad():
        wrapped.layer.weight.mul_(s)
    x = torch.randn(5, 8)
    torch.testing.assert_close(wrapped(x), lin(x))


def test_tiny_llama_gqa_dict_batches_sub_config():
    model = tiny_llama()
    calib = dict_batches(96)
    ref = logits(model, calib[0])
    report = quantize_(model, WeightOnly(bits=4, group_size=32, rounding=AWQ(grid=5, clip_grid=5)), calib_data=calib)
    layers = report.details["layers"]
    assert layers["model.layers.0.self_attn.q_proj"]["scale"] in ("folded into model.layers.0.input_layernorm",
                                                                   "none")
    assert layers["model.layers.0.self_attn.k_proj"]["calibration"] == "sequential"
    out = logits(model, calib[0])
    assert torch.isfinite(out).all() and (out - ref).abs().mean() < 0.2 * ref.abs().mean()


def test_block_objective_scale_search_on_block_output():
    """``objective="block"``: each group's alpha minimises the block-output error (alpha = 0, RTN, is in the
    grid, so the chosen loss is never above RTN's), the weights are restored between trials, and the
    quantized model stays close to the float one."""
    model = tiny_char_gpt()
    with torch.no_grad():
        model.tok.weight[:, :4] *= 20
    calib = [torch.randint(0, 65, (8, 32)) for _ in range(3)]
    x = torch.randint(0, 65, (8, 32))
    ref = model(x)
    q = copy.deepcopy(model)
    report = quantize_(q, WeightOnly(3, 32, rounding=AWQ(objective="block", grid=5, clip=False)), calib_data=calib)
    layers = report.details["layers"]
    assert all(d["awq_loss"] <= d["rtn_loss"] for n, d in layers.items() if "alpha" in d)
    assert any(d["alpha"] > 0 for d in layers.values() if "alpha" in d)
    rtn = copy.deepcopy(model)
    quantize_(rtn, WeightOnly(3, 32, "rtn"), calib_data=calib)
    assert (q(x) - ref).pow(2).mean() < (rtn(x) - ref).pow(2).mean()


def test_bad_input():
    with pytest.raises(ValueError, match="objective must be 'layer' or 'block', got 'model'"):
        AWQ(objective="model")
    with pytest.raises(ValueError, match=r"max_shrink: 1.0 is not in \[0.0, 1.0\)"):
        AWQ(max_shrink=1.0)
    model = tiny_char_gpt()
    with pytest.raises(ValueError, match="group_size 48 does not divide in_features 64"):
        quantize_(model, WeightOnly(4, 48, "awq"), calib_data=[torch.randint(0, 65, (2, 8))])
    with pytest.raises(ValueError, match="calibration data is empty"):
        quantize_(model, WeightOnly(4, 32, "awq"), calib_data=[])
    nan = [torch.randn(2, 16), torch.randn(2, 16)]
    nan[1][1, 1] = float("nan")
    with pytest.raises(ValueError, match="calibration batch 1 contains 1 NaN"):
        quantize_(nn.Sequential(nn.Linear(16, 16)), WeightOnly(4, 16, "awq"), calib_data=nan)
