"""Cross-layer equalization and bias correction (Nagel et al. 2019)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimtorch.models import create
from slimtorch.quant import quantize_
from slimtorch.quant.algorithms.equalization import (
    CrossLayerEqualization,
    bias_correction_delta,
    cle_scales,
    equalize_,
    find_equalization_pairs,
    input_channel_view,
)


def test_cle_scales_equalize_both_ranges():
    r1, r2 = torch.tensor([4.0, 1.0, 0.0, 2.0]), torch.tensor([1.0, 9.0, 3.0, 2.0])
    s = cle_scales(r1, r2)
    torch.testing.assert_close(s, torch.tensor([2.0, 1 / 3, 1.0, 1.0]))
    torch.testing.assert_close((r1 / s)[[0, 1, 3]], (r2 * s)[[0, 1, 3]])


def _randomize_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
            m.weight.data.uniform_(0.05, 3.0, generator=g)
            m.bias.data.normal_(generator=g)


def test_cle_keeps_resnet_function_and_equalizes_ranges():
    model = create("resnet20").eval()
    _randomize_bn(model)
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    report = quantize_(model, CrossLayerEqualization())
    pairs = report.details["pairs"]
    assert len(pairs) == 9 and pairs[0] == ["layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2"]
    torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    assert max(report.details["range_ratio_before"].values()) > 2.0
    assert max(report.details["range_ratio_after"].values()) == pytest.approx(1.0, abs=1e-3)


def test_cle_on_linear_chain_and_depthwise_conv():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        mlp[0].weight.mul_(torch.logspace(-2, 2, 16).unsqueeze(1))
    x = torch.randn(10, 8)
    ref = mlp(x)
    report = equalize_(mlp)
    assert report.details["pairs"] == [["0", None, "2"], ["2", None, "4"]]
    torch.testing.assert_close(mlp(x), ref, rtol=1e-5, atol=1e-5)
    assert max(report.details["range_ratio_after"].values()) < 1.01

    dw = nn.Sequential(
        nn.Conv2d(3, 6, 1), nn.ReLU(), nn.Conv2d(6, 6, 3, groups=6), nn.ReLU(), nn.Conv2d(6, 2, 1)
    )
    with torch.no_grad():
        dw[0].weight.mul_(torch.logspace(-2, 2, 6).view(6, 1, 1, 1))
    xi = torch.randn(2, 3, 7, 7)
    ref = dw(xi)
    report = equalize_(dw)
    assert len(report.details["pairs"]) == 2
    torch.testing.assert_close(dw(xi), ref, rtol=1e-5, atol=1e-5)


def test_input_channel_view_groups():
    w = torch.arange(4 * 2 * 1 * 1.0).view(4, 2, 1, 1)  # 4 outputs, 2 groups of 2 input channels
    v = input_channel_view(w, groups=2)
    # input channel 2 (group 1, index 0) is read by outputs 2 and 3 at position 0
    assert v[2].tolist() == [w[2, 0, 0, 0].item(), w[3, 0, 0, 0].item()]


def test_branching_values_are_not_paired():
    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            h = F.relu(self.a(x))
            return self.b(h) + self.c(h)  # h has two users: rescaling it would change c

    assert find_equalization_pairs(Branch()) == []


def test_explicit_pairs_are_checked():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    with pytest.raises(ValueError, match="'1' is not a Conv2d or Linear"):
        equalize_(model, CrossLayerEqualization(pairs=(("0", "1"),)))
    with pytest.raises(ValueError, match="each pair must be"):
        CrossLayerEqualization(pairs=(("0",),))


def test_bias_correction_delta_matches_hand_computation():
    wf = torch.randn(3, 4)
    wq = wf + torch.randn(3, 4) * 0.1
    m = torch.randn(4)
    torch.testing.assert_close(bias_correction_delta(wf, wq, m), (wq - wf) @ m)
    # A conv on a constant input (no padding) shifts every output position by exactly the delta.
    cf = torch.randn(4, 2, 3, 3)  # groups=2: 4 input channels
    cq = cf + torch.randn_like(cf) * 0.1
    mc = torch.randn(4)
    x = mc.view(1, 4, 1, 1).expand(1, 4, 5, 5)
    shift = (F.conv2d(x, cq, groups=2) - F.conv2d(x, cf, groups=2))[0, :, 0, 0]
    torch.testing.assert_close(bias_correction_delta(cf, cq, mc), shift, rtol=1e-5, atol=1e-5)
