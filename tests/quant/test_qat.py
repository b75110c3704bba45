"""LSQ (Esser et al. 2020) gradients and QAT prepare -> train -> convert -> ONNX on the digits model."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from slimtorch.quant import quantize_
from slimtorch.quant.lsq import grad_scale, lsq_fake_quantize, lsq_grad_scale_factor, lsq_init_scale
from slimtorch.quant.modules.fake_quant import FakeQuantize, QuantConv2d
from slimtorch.quant.workflows.qat import QAT, LSQFakeQuantize, convert_qat_, lsq_parameters

from .conftest import accuracy


def test_grad_scale_is_identity_forward_and_scales_backward():
    x = torch.tensor([1.5, -2.0], requires_grad=True)
    y = grad_scale(x, 0.25)
    assert torch.equal(y, x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([0.25, 0.25]))


def test_lsq_scale_gradient_matches_hand_computation():
    # 3-bit signed grid [-4, 3]; x/s = [0.52, -1.8, 6, -10, 0.08]
    x = torch.tensor([0.26, -0.9, 3.0, -5.0, 0.04])
    s = torch.tensor(0.5, requires_grad=True)
    y = lsq_fake_quantize(x, s, bits=3, signed=True)
    torch.testing.assert_close(y, torch.tensor([0.5, -1.0, 1.5, -2.0, 0.0]))
    y.sum().backward()
    # d x_hat/ds: -x/s + round(x/s) inside, Qp / -Qn where clipped (eq. 3): 0.48 - 0.2 + 3 - 4 - 0.08
    per_element = torch.tensor([-0.52 + 1, 1.8 - 2, 3.0, -4.0, -0.08 + 0])
    g = 1 / math.sqrt(5 * 3)  # N = 5 elements, Qp = 3
    assert lsq_grad_scale_factor(5, 3) == pytest.approx(g)
    torch.testing.assert_close(s.grad, per_element.sum() * g)


def test_lsq_input_gradient_is_straight_through_inside_range():
    x = torch.tensor([0.26, -0.9, 3.0, -5.0], requires_grad=True)
    lsq_fake_quantize(x, torch.tensor(0.5), bits=3, signed=True).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([1.0, 1.0, 0.0, 0.0]))


def test_lsq_per_channel_weight_quantizer_gradient():
    w = torch.randn(3, 8)
    s0 = lsq_init_scale(w, qmax=7, axis=0)
    torch.testing.assert_close(s0, 2 * w.abs().mean(1) / math.sqrt(7))
    q = LSQFakeQuantize(
        bits=4, signed=True, axis=0, scale=s0, zero_point=torch.zeros(3, dtype=torch.int32), per_sample=False
    )
    upstream = torch.randn(3, 8)
    (q(w) * upstream).sum().backward()
    v = w / s0.unsqueeze(1)
    d = torch.where(v <= -8, torch.tensor(-8.0), torch.where(v >= 7, torch.tensor(7.0), torch.round(v) - v))
    expected = (d * upstream).sum(1) / math.sqrt(8 * 7)  # N = 8 weights per channel
    torch.testing.assert_close(q.scale.grad, expected)


def test_qat_prepare_train_convert_export(digits_model, digits_data, tmp_path):
    torch.manual_seed(0)
    x, y = digits_data["xtr"], digits_data["ytr"]
    xte, yte = digits_data["xte"], digits_data["yte"]
    fp32 = accuracy(digits_model, xte, yte)
    model = copy.deepcopy(digits_model)
    report = quantize_(model, QAT(bits_w=2, bits_a=8), [x[:256]])
    assert report.scheme == "qat_w2a8" and len(report.folded) == 2 and len(report.quantized) == 4
    assert model.training
    conv0 = model.features[0]
    assert isinstance(conv0, QuantConv2d) and isinstance(conv0.weight_quant, LSQFakeQuantize)
    assert conv0.weight_quant.scale.requires_grad and conv0.weight_quant.scale.shape == (16,)
    # The second conv's input grid is the first conv's output grid (tied through ReLU + max-pool).
    assert model.features[4].input_quant is conv0.output_quant
    scales = lsq_parameters(model)
    before = [p.detach().clone() for p in scales]
    model.eval()
    acc_init = accuracy(model, xte, yte)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, scales))  # the step sizes learned
    model.eval()
    out_lsq = model(xte)
    convert_qat_(model)
    assert not any(isinstance(m, LSQFakeQuantize) for m in model.modules())
    assert isinstance(model.features[0].weight_quant, FakeQuantize) and not model.training
    torch.testing.assert_close(model(xte), out_lsq)  # conversion keeps the simulated function
    acc_qat = accuracy(model, xte, yte)
    assert acc_qat > acc_init and acc_qat > fp32 - 0.05

    from slimtorch.metrics.ort import onnx_session as ort_session
    from slimtorch.quant.export.onnx_export import export_onnx

    path = export_onnx(model, tmp_path / "qat.onnx", xte[:4])
    sess = ort_session(path)
    ort_out = torch.from_numpy(sess.run(None, {"input": xte[:64].numpy()})[0])
    with torch.no_grad():
        sim = model(xte[:64])
    assert (ort_out.argmax(1) == sim.argmax(1)).float().mean() >= 0.95


def test_fixed_scales_option(digits_model, digits_data):
    model = copy.deepcopy(digits_model)
    quantize_(model, QAT(bits_w=4, learn_scales=False, first_last_bits=8, target="x86-vnni"),
              [digits_data["xtr"][:64]])
    assert all(not p.requires_grad for p in lsq_parameters(model))
    assert model.features[0].weight_quant.bits == 8 and model.features[4].weight_quant.bits == 4
    assert model.head[3].weight_quant.bits == 8
    # the portable target (the default) trains the 8-bit layers on its saturation-free 7-bit grid
    portable = copy.deepcopy(digits_model)
    quantize_(portable, QAT(bits_w=4, learn_scales=False, first_last_bits=8), [digits_data["xtr"][:64]])
    assert portable.features[0].weight_quant.bits == 7 and portable.features[4].weight_quant.bits == 4


@pytest.mark.parametrize("field", ["bits_w", "bits_a", "first_last_bits"])
@pytest.mark.parametrize("bits", [1, 9])
def test_bad_bit_widths(field, bits):
    with pytest.raises(ValueError, match=rf"{field} must be an integer in \[2, 8\], got {bits}"):
        QAT(**{field: bits})


def test_qat_needs_calibration_data(digits_model):
    with pytest.raises(ValueError, match="QAT needs calibration data"):
        quantize_(digits_model, QAT())
    with pytest.raises(ValueError, match="calibration data is empty"):
        quantize_(copy.deepcopy(digits_model), QAT(), [])


def test_untrained_qat_model_equals_the_ptq_simulation(digits_model, digits_data):
    from slimtorch.quant import LowBitStatic

    calib = [digits_data["xtr"][:256]]
    ptq = copy.deepcopy(digits_model)
    quantize_(ptq, LowBitStatic(bits_w=4), calib)
    qat = copy.deepcopy(digits_model)
    quantize_(qat, QAT(bits_w=4), calib)  # weight_init="minmax": starts on the PTQ grid
    qat.eval()
    x = digits_data["xte"][:128]
    with torch.no_grad():
        torch.testing.assert_close(qat(x), ptq(x))


def test_lsq_weight_init_option(digits_model, digits_data):
    model = copy.deepcopy(digits_model)
    quantize_(model, QAT(bits_w=4, weight_init="lsq"), [digits_data["xtr"][:64]])
    layer = model.head[1]
    expected = 2 * layer.weight.detach().abs().mean(1) / math.sqrt(7)
    torch.testing.assert_close(layer.weight_quant.scale.detach(), expected)
    with pytest.raises(ValueError, match="weight_init: 'max' is not one of"):
        QAT(weight_init="max")
