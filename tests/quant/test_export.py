"""ONNX QDQ export: ONNX Runtime loads it, fuses integer kernels, and agrees with our simulation."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from onnx.inliner import inline_local_functions
from torch import nn

from slimtorch.core.errors import SlimtorchError
from slimtorch.models import create
from slimtorch.quant import quantize_
from slimtorch.quant.export.onnx_export import compare_with_onnx, export_float_onnx, export_onnx, runtime_ops
from slimtorch.quant.workflows.ptq import Int8Dynamic, Int8Static


@pytest.fixture
def int8_digits(digits_model, digits_data):
    x = digits_data["xtr"][:256]
    report = quantize_(digits_model, Int8Static(observer="percentile"), calib_data=x.split(64))
    return digits_model, report


def test_ort_int8_agrees_with_simulation(int8_digits, digits_data, tmp_path):
    model, _ = int8_digits
    path = export_onnx(model, tmp_path / "m.int8.onnx", digits_data["xte"][:1])
    ops = runtime_ops(path, tmp_path)
    # ONNX Runtime fused every quantized layer into an integer kernel: no float Conv/Gemm is left
    assert ops.get("QLinearConv", 0) == 2 and ops.get("QGemm", 0) == 2
    assert not {"Conv", "Gemm", "MatMul", "DequantizeLinear"} & set(ops)
    cmp = compare_with_onnx(model, path, digits_data["xte"].split(128))
    assert cmp["samples"] == len(digits_data["xte"])
    assert cmp["top1_agreement"] >= 0.99
    logit_range = float(model(digits_data["xte"]).abs().max())
    assert cmp["max_abs_diff"] < 0.02 * logit_range


def test_file_carries_our_int8_weights_and_scales(int8_digits, digits_data, tmp_path):
    model, _ = int8_digits
    path = export_onnx(model, tmp_path / "m.onnx", digits_data["xte"][:1])
    g = inline_local_functions(onnx.load(str(path))).graph  # the graph ONNX Runtime loads
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    conv2 = model.features[4]
    codes = conv2.integer_weight().numpy()
    dq = [n for n in g.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
          and inits[n.input[0]].shape == codes.shape]
    assert len(dq) == 1
    assert inits[dq[0].input[0]].dtype == np.int8 and np.array_equal(inits[dq[0].input[0]], codes)
    assert np.allclose(inits[dq[0].input[1]], conv2.weight_quant.scale.numpy())
    assert [a.i for a in dq[0].attribute if a.name == "axis"] == [0]
    # activation quantizers carry our scale / zero point
    q_nodes = [n for n in g.node if n.op_type == "QuantizeLinear"]
    q_params = {(float(inits[n.input[1]]), int(inits[n.input[2]])) for n in q_nodes}
    ours = (float(conv2.input_quant.scale), int(conv2.input_quant.zero_point))
    assert any(abs(s - ours[0]) < 1e-9 and z == ours[1] for s, z in q_params)


def test_size_against_fp32(digits_model, digits_data, tmp_path):
    fp32 = export_float_onnx(digits_model, tmp_path / "f.onnx", digits_data["xte"][:1])
    quantize_(digits_model, Int8Static(), calib_data=[digits_data["xtr"][:128]])
    int8 = export_onnx(digits_model, tmp_path / "q.onnx", digits_data["xte"][:1])
    # 26k parameters: per-channel scales and int32 biases cost ~10% here; large models approach 4x
    assert os.path.getsize(fp32) / os.path.getsize(int8) > 3.0


def test_lenet5_size_ratio(tmp_path):
    model = create("lenet5").eval()
    x = torch.randn(64, 1, 28, 28)
    fp32 = export_float_onnx(model, tmp_path / "f.onnx", x[:1])
    quantize_(model, Int8Static(), calib_data=[x])
    int8 = export_onnx(model, tmp_path / "q.onnx", x[:1])
    assert os.path.getsize(fp32) / os.path.getsize(int8) >= 3.9


def test_dynamic_export(tmp_path):
    model = create("mlp", in_features=64, hidden=(32,)).eval()
    x = torch.randn(16, 64)
    quantize_(model, Int8Dynamic(granularity="tensor"))
    path = export_onnx(model, tmp_path / "d.onnx", x)
    ops = runtime_ops(path, tmp_path)
    assert not {"Gemm", "MatMul"} & set(ops)
    cmp = compare_with_onnx(model, path, [x])
    assert cmp["max_abs_diff"] < 1e-3 * float(model(x).abs().max()) + 1e-4
    per_token = create("mlp", in_features=64, hidden=(32,)).eval()
    quantize_(per_token, Int8Dynamic())
    with pytest.raises(ValueError, match="granularity='tensor'"):
        export_onnx(per_token, tmp_path / "t.onnx", x)


def test_low_bit_activations_refused(digits_model, digits_data, tmp_path):
    quantize_(digits_model, Int8Static(act_bits=4), calib_data=[digits_data["xtr"][:64]])
    with pytest.raises(ValueError, match="8-bit activations, got 4-bit"):
        export_onnx(digits_model, tmp_path / "x.onnx", digits_data["xte"][:1])


def test_resnet_runs_fully_int8_on_ort(tmp_path):
    model = create("resnet20").eval()
    x = torch.randn(16, 3, 32, 32)
    report = quantize_(model, Int8Static(), calib_data=[x])
    assert report.details["residual_outputs"] == [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    path = export_onnx(model, tmp_path / "r.onnx", x[:1])
    ops = runtime_ops(path, tmp_path)
    # every conv, residual add, the pooling and the classifier run on integer kernels
    assert ops.get("QLinearConv") == 21 and ops.get("QLinearAdd") == 9 and ops.get("QGemm") == 1
    assert ops.get("QLinearGlobalAveragePool") == 1
    assert not {"Conv", "Add", "Relu", "Gemm", "DequantizeLinear", "GlobalAveragePool"} & set(ops)
    cmp = compare_with_onnx(model, path, [x])
    assert cmp["max_abs_diff"] < 0.05 * float(model(x).abs().max())


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 4), nn.Linear(6, 4)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # (B, 8), (B, 6) -> (B, 4)
        return self.a(x) + self.b(z)


def test_compare_with_onnx_feeds_every_graph_input(tmp_path):
    torch.manual_seed(0)
    model = _TwoInputs().eval()
    x, z, y = torch.randn(16, 8), torch.randn(16, 6), torch.zeros(16)
    quantize_(model, Int8Dynamic(granularity="tensor"))
    path = export_onnx(model, tmp_path / "two.onnx", (x, z))
    peak = float(model(x, z).abs().max())
    for batch in ([(x, z, y)], [{"input0": x, "input1": z}]):
        cmp = compare_with_onnx(model, path, batch)
        # the second input matters: feeding it zeros would move the output by |b(z) - b(0)|, far above this
        assert cmp["samples"] == 16 and cmp["max_abs_diff"] < 0.02 * peak
    with pytest.raises(SlimtorchError, match=r"a batch dict lacks the ONNX graph inputs \['input1'\]"):
        compare_with_onnx(model, path, [{"input0": x}])
    with pytest.raises(SlimtorchError, match=r"the ONNX graph takes 2 input\(s\) \['input0', 'input1'\]: a batch "
                                             r"must be a tuple of at least 2"):
        compare_with_onnx(model, path, [x])
