"""Static and dynamic int8 PTQ: accuracy near fp32 on digits, phases, report, bad calibration data."""

from __future__ import annotations

import pytest
import torch
from tests.quant.conftest import accuracy
from torch import nn

from slimtorch.models import create
from slimtorch.quant import OBSERVERS, quantize_
from slimtorch.quant.modules.fake_quant import QuantConv2d, QuantLinear
from slimtorch.quant.workflows.ptq import DynamicFakeQuantize, Int8Dynamic, Int8Static, calibrate, convert_, prepare_


def _calib(data, n=256, bs=64):
    x, y = data["xtr"][:n], data["ytr"][:n]
    return [(x[i : i + bs], y[i : i + bs]) for i in range(0, n, bs)]


@pytest.mark.parametrize("observer", OBSERVERS.names())
def test_int8_static_accuracy_near_fp32(digits_model, digits_data, observer):
    fp32 = accuracy(digits_model, digits_data["xte"], digits_data["yte"])
    assert fp32 > 0.9
    report = quantize_(digits_model, Int8Static(observer=observer), calib_data=_calib(digits_data))
    assert report.quantized == ["features.0", "features.4", "head.1", "head.3"]
    assert report.folded == [("features.0", "features.1"), ("features.4", "features.5")]
    int8 = accuracy(digits_model, digits_data["xte"], digits_data["yte"])
    assert int8 >= fp32 - 0.02


def test_phases_ties_and_relu_fusion(digits_model, digits_data):
    report = prepare_(digits_model, Int8Static())
    assert report.details["traced"] is True
    conv1, conv2 = digits_model.features[0], digits_model.features[4]
    assert isinstance(conv1, QuantConv2d) and isinstance(digits_model.head[3], QuantLinear)
    assert conv1.output_relu and conv2.input_source == "features.0"  # ReLU + MaxPool in between
    assert digits_model.head[3].output_quant is None  # logits stay float
    stats = calibrate(digits_model, _calib(digits_data), num_batches=2)
    assert stats["batches"] == 2 and stats["samples"] == 128 and stats["samples_per_s"] > 0
    convert_(digits_model)
    assert torch.equal(conv2.input_quant.scale, conv1.output_quant.scale)
    assert conv1.output_quant.zero_point.item() == 0  # post-ReLU range starts at 0
    # the tied quantizer is exact: conv2 sees exactly the grid values conv1 produced (after max-pooling)
    x = digits_data["xte"][:16]
    h = digits_model.features[3](digits_model.features[2](conv1(x)))
    assert torch.equal(conv2.input_quant(h), h)
    # weights are per-channel int8 and the simulation uses exactly the dequantized codes
    codes = conv2.integer_weight()
    assert codes.dtype == torch.int8 and conv2.weight_quant.scale.shape == (32,)
    w_hat = codes.float() * conv2.weight_quant.scale.view(-1, 1, 1, 1)
    assert torch.allclose(conv2._quant_weight(), w_hat, atol=1e-7)


def test_include_exclude_and_report_lists_float_layers():
    model = nn.Sequential(nn.Embedding(20, 8), nn.LayerNorm(8), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    model.eval()
    calib = [torch.randint(0, 20, (4, 5)) for _ in range(2)]
    report = quantize_(model, Int8Static(exclude=("4",), quantize_embeddings=False), calib_data=calib)
    assert report.quantized == ["2"]
    assert report.skipped == {
        "0": "Embedding has no quantized form",
        "1": "LayerNorm has no quantized form",
        "4": "excluded by include/exclude/filter_fn",
    }
    # by default the embedding table is int8 with per-row scales (modules.embedding), not a float leftover
    model = nn.Sequential(nn.Embedding(20, 8), nn.LayerNorm(8), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    report = quantize_(model, Int8Static(exclude=("4",)), calib_data=calib)
    assert report.details["embeddings"] == ["0"] and "0" not in report.skipped
    assert "left in float" in report.summary()


def test_attention_matmuls_listed_as_float():
    model = create("vit_tiny", depth=1) if "depth" in create.__code__.co_varnames else create("vit_tiny")
    report = prepare_(model.eval(), Int8Static(filter_fn=lambda m, n: n.endswith("qkv") or n.endswith("q")))
    if report.details["traced"]:
        assert any("matmul" in reason for reason in report.skipped.values())
    assert any("LayerNorm has no quantized form" == r for r in report.skipped.values())


def test_bad_calibration_data(digits_model, digits_data):
    x = digits_data["xtr"][:32]
    with pytest.raises(ValueError, match="calibration data is empty"):
        quantize_(digits_model, Int8Static(), calib_data=[])
    with pytest.raises(ValueError, match="needs calibration data"):
        quantize_(digits_model, Int8Static())
    bad_shape = [x, x, torch.zeros(4, 1, 9, 9)]
    with pytest.raises(ValueError, match=r"calibration batch 2 has shape \(4, 1, 9, 9\).*\(1, 8, 8\)"):
        calibrate_fresh(digits_model, bad_shape)
    nan = x.clone()
    nan[3, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="calibration batch 1 contains 1 NaN/inf"):
        calibrate_fresh(digits_model, [(x, None), (nan, None)])
    inf = x.clone()
    inf[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="calibration batch 0 contains 1 NaN/inf"):
        calibrate_fresh(digits_model, [inf])


def calibrate_fresh(model, data):
    prepare_(model, Int8Static()) if not any(isinstance(m, QuantConv2d) for m in model.modules()) else None
    calibrate(model, data)


def test_wrong_shape_without_input_shape_is_named():
    model = nn.Sequential(nn.Linear(6, 3)).eval()
    prepare_(model, Int8Static())
    with pytest.raises(ValueError, match=r"calibration batch 1 with inputs \{'arg0': \(2, 5\)\} failed in the model"):
        calibrate(model, [torch.randn(2, 6), torch.randn(2, 5)])


def test_convert_without_calibration_names_the_layer(digits_model):
    prepare_(digits_model, Int8Static())
    with pytest.raises(ValueError, match="input quantizer of layer 'features.0' saw no calibration data"):
        convert_(digits_model)


def test_config_validation():
    with pytest.raises(ValueError, match="observer: 'best' is not one of"):
        Int8Static(observer="best")
    with pytest.raises(ValueError, match=r"weight_bits must be an integer in \[2, 8\], got 9"):
        Int8Static(weight_bits=9)
    with pytest.raises(ValueError, match=r"act_bits must be an integer in \[2, 8\], got 1"):
        Int8Static(act_bits=1)
    with pytest.raises(ValueError, match="granularity"):
        Int8Dynamic(granularity="row")
    cfg = Int8Static(observer="percentile", observer_kwargs={"percentile": 99.9}, exclude=("head.3",))
    assert Int8Static.from_dict(cfg.to_dict()) == cfg


def test_unknown_config_type_lists_known():
    from dataclasses import dataclass

    from slimtorch.core.config import Config

    @dataclass
    class Mystery(Config):
        pass

    with pytest.raises(ValueError, match="no quantizer registered for Mystery; known configs: .*Int8Static"):
        quantize_(nn.Linear(2, 2), Mystery())


@pytest.mark.parametrize("granularity", ["token", "tensor"])
def test_int8_dynamic_char_gpt(granularity):
    model = create("char_gpt").eval()
    x = torch.randint(0, model.tok.num_embeddings if hasattr(model, "tok") else 65, (2, 16))
    ref = model(x)
    report = quantize_(model, Int8Dynamic(granularity=granularity))
    assert report.quantized and all(isinstance(model.get_submodule(n), QuantLinear) for n in report.quantized)
    assert report.details["embeddings"]  # int8 per-row tables (modules.embedding), not float leftovers
    assert not any(r == "Embedding has no quantized form" for r in report.skipped.values())
    out = model(x)
    rel = (out - ref).norm() / ref.norm()
    assert rel < 0.05


def test_dynamic_quantizer_per_token_by_hand():
    q = DynamicFakeQuantize("token")
    x = torch.tensor([[0.0, 1.0, 2.0], [-1.0, 0.0, 254.0]])
    y = q(x)
    assert torch.allclose(y[0], x[0], atol=2 / 255 / 2)  # row 0: s = 2/255, error <= s/2
    # row 1: range [-1, 254], s = 1, z = 1 -> every integer is exact
    assert torch.equal(y[1], x[1])


def test_nothing_selected_is_named(digits_model, digits_data):
    with pytest.raises(ValueError, match=r"no Conv2d/Linear layer of DigitsNet is selected for quantization "
                                         r"\(include=\[\], exclude=\['\*'\], filter_fn=none\); candidates: "
                                         r"\['features.0', 'features.4', 'head.1', 'head.3'\]"):
        quantize_(digits_model, Int8Static(exclude=("*",)), calib_data=[digits_data["xtr"][:8]])


def test_a_root_layer_without_a_dynamic_form_is_reported_with_its_reason():
    report = quantize_(nn.Conv2d(3, 4, 3), Int8Dynamic())
    assert report.quantized == [] and report.skipped == {"": "Conv2d has no quantized form"}
    excluded = quantize_(nn.Linear(8, 4), Int8Dynamic(exclude=("*",)))
    assert excluded.skipped == {"": "excluded by include/exclude/filter_fn"}
