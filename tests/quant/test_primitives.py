"""Quantization primitives against a float64 reference and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slimtorch.quant.primitives import (
    choose_qparams,
    dequantize_affine,
    dequantize_log,
    fake_quantize,
    fake_quantize_log,
    qrange,
    quantize_affine,
    quantize_log,
    reduce_minmax,
    round_pow2,
)


def ref_quant(x: np.ndarray, s: np.ndarray, z: np.ndarray, qmin: int, qmax: int) -> np.ndarray:
    """float64 reference of q = clamp(round_half_even(x / s) + z, qmin, qmax)."""
    return np.clip(np.rint(x / s) + z, qmin, qmax)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("signed", [True, False])
def test_qrange_known_values(bits, signed):
    lo, hi = qrange(bits, signed)
    assert (lo, hi) == ((-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1))
    assert qrange(bits, True, narrow=True)[0] == -(2 ** (bits - 1)) + 1


def test_choose_qparams_known_values():
    # asymmetric uint8 on [-1, 3]: s = 4/255, z = round(255/4) = 64 (0 - round(-1 / (4/255)) = 63.75 -> 64)
    s, z = choose_qparams(-1.0, 3.0, 8, symmetric=False, signed=False)
    assert s.item() == pytest.approx(4 / 255)
    assert z.item() == 64
    # symmetric int8 on [-2, 1]: s = 2/127, z = 0
    s, z = choose_qparams(-2.0, 1.0, 8, symmetric=True, signed=True)
    assert s.item() == pytest.approx(2 / 127) and z.item() == 0
    # symmetric uint4: z in the middle of [0, 15] = 8, s = amax / 7
    s, z = choose_qparams(-0.5, 0.7, 4, symmetric=True, signed=False)
    assert s.item() == pytest.approx(0.7 / 7) and z.item() == 8
    # the range always contains zero: [2, 5] -> [0, 5], z = 0
    s, z = choose_qparams(2.0, 5.0, 8, symmetric=False, signed=False)
    assert s.item() == pytest.approx(5 / 255) and z.item() == 0
    # a constant-zero tensor gets a tiny positive scale, not zero
    s, _ = choose_qparams(0.0, 0.0)
    assert s.item() > 0
    # power of two rounds up
    s, _ = choose_qparams(-1.0, 1.0, 8, power_of_two=True)
    assert s.item() == 2.0**-6  # 1/127 = 0.00787 -> 2^-6 = 0.0156


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric,signed", [(True, True), (False, False), (False, True), (True, False)])
def test_per_tensor_matches_float64_reference_and_error_bound(bits, symmetric, signed):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(1000, generator=g) * 3 + (0 if symmetric else 1)
    s, z = choose_qparams(x.min(), x.max(), bits, symmetric, signed)
    qmin, qmax = qrange(bits, signed)
    q = quantize_affine(x, s, z, bits, signed)
    assert q.dtype == (torch.int8 if signed else torch.uint8)
    ref = ref_quant(x.double().numpy(), s.double().item(), z.item(), qmin, qmax)
    # float32 division may differ from float64 only on exact ties; allow at most one code on a few values
    diff = np.abs(q.numpy().astype(np.float64) - ref)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    xhat = dequantize_affine(q, s, z)
    inside = (x >= s * (qmin - z)) & (x <= s * (qmax - z))
    assert inside.float().mean() > 0.95
    assert (xhat - x)[inside].abs().max() <= s.item() / 2 + 1e-6
    assert torch.equal(fake_quantize(x, s, z, bits, signed), xhat)


def test_per_channel_and_per_group():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 8, 3, 3, generator=g) * torch.arange(1, 7).view(6, 1, 1, 1)
    lo, hi = reduce_minmax(w, axis=0)
    assert torch.allclose(hi, w.flatten(1).amax(1))
    s, z = choose_qparams(lo, hi, 8)
    q = quantize_affine(w, s, z, 8, axis=0)
    for c in range(6):  # each channel equals per-tensor quantization with its own scale
        assert torch.equal(q[c], quantize_affine(w[c], s[c], z[c], 8))
    err = (dequantize_affine(q, s, z, axis=0) - w).abs()
    assert (err <= s.view(6, 1, 1, 1) / 2 + 1e-6).all()
    # per group of 4 input channels: parameters of shape (6, 2)
    lo, hi = reduce_minmax(w, axis=1, group_size=4)
    assert lo.shape == (6, 2)
    assert torch.allclose(hi[2, 1], w[2, 4:8].max())
    s, z = choose_qparams(lo, hi, 4)
    q = quantize_affine(w, s, z, 4, axis=1, group_size=4)
    assert torch.equal(q[2, 4:8], quantize_affine(w[2, 4:8], s[2, 1], z[2, 1], 4))
    xhat = dequantize_affine(q, s, z, axis=1, group_size=4)
    assert (xhat - w).abs().max() <= s.max() / 2 + 1e-6
    assert torch.allclose(fake_quantize(w, s, z, 4, axis=1, group_size=4), xhat)
    # Linear weights (out, in) group along the input dimension
    lw = torch.randn(3, 12, generator=g)
    lo, hi = reduce_minmax(lw, axis=1, group_size=6)
    assert torch.allclose(lo, lw.view(3, 2, 6).amin(-1))


def test_fake_quantize_ste_gradients():
    x = torch.tensor([-3.0, -0.26, 0.0, 0.49, 2.0], requires_grad=True)
    s = torch.tensor(0.5)
    y = fake_quantize(x, s, 0, bits=3, signed=True)  # grid [-4, 3] * 0.5 = [-2, 1.5]
    assert torch.allclose(y, torch.tensor([-2.0, -0.5, 0.0, 0.5, 1.5]))
    y.sum().backward()
    # identity inside the range, zero where clipped
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))
    # LSQ gradient w.r.t. the scale: d/ds [s * clamp(round(x/s))] = round(x/s) - x/s inside, qmin/qmax outside
    s = torch.tensor(0.5, requires_grad=True)
    fake_quantize(torch.tensor([-3.0, 0.3, 2.0]), s, 0, bits=3).sum().backward()
    expected = -4 + (round(0.3 / 0.5) - 0.3 / 0.5) + 3
    assert s.grad.item() == pytest.approx(expected)


def test_round_half_even_like_onnx():
    q = quantize_affine(torch.tensor([0.5, 1.5, 2.5, -0.5]), 1.0, 0, 8)
    assert q.tolist() == [0, 2, 2, 0]


def test_power_of_two_and_log_quantization():
    assert round_pow2(torch.tensor([0.3, 0.25, 1.1])).tolist() == [0.5, 0.25, 2.0]
    x = torch.tensor([0.0, 1.0, -0.3, 0.7, 3.0, 100.0, 1e-4])
    q = quantize_log(x, max_abs=4.0, bits=4)  # exponents -4..2 (7 levels + zero + sign)
    xhat = dequantize_log(q, 4.0, 4)
    assert xhat.tolist() == [0.0, 1.0, -0.25, 0.5, 4.0, 4.0, 0.0]
    assert torch.equal(fake_quantize_log(x, 4.0, 4), xhat)
    # relative error of log quantization is bounded by sqrt(2) in the covered range
    y = torch.rand(1000) * 3 + 0.1
    r = dequantize_log(quantize_log(y, 4.0, 8), 4.0, 8) / y
    assert r.max() <= 2**0.5 + 1e-6 and r.min() >= 2**-0.5 - 1e-6


@pytest.mark.parametrize("bits", [0, 1, 9, 16, 4.0])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match=rf"bits must be an integer in \[2, 8\], got {bits!r}"):
        quantize_affine(torch.zeros(3), 1.0, 0, bits)


def test_group_size_must_divide():
    w = torch.randn(4, 10)
    with pytest.raises(ValueError, match="group_size 4 does not divide dimension 1 of size 10"):
        quantize_affine(w, torch.ones(4, 2), torch.zeros(4, 2), 8, axis=1, group_size=4)
    with pytest.raises(ValueError, match="group_size 3 does not divide dimension 1 of size 10"):
        reduce_minmax(w, axis=1, group_size=3)


def test_bad_parameter_shapes():
    with pytest.raises(ValueError, match="needs 4 parameters, got 3"):
        quantize_affine(torch.randn(4, 5), torch.ones(3), torch.zeros(3), axis=0)
    with pytest.raises(ValueError, match="min_val must be <= max_val"):
        choose_qparams(1.0, 0.5)
    with pytest.raises(ValueError, match="NaN or inf"):
        choose_qparams(float("nan"), 1.0)
