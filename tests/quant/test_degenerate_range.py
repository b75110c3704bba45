"""Calibration with a zero or constant activation range warns with the layer names (issue 18)."""

from __future__ import annotations

import warnings

import pytest
import torch

from slimtorch.models import create
from slimtorch.quant import quantize_
from slimtorch.quant.calibration import DegenerateRangeWarning, is_degenerate
from slimtorch.quant.workflows.ptq import Int8Static


def test_is_degenerate():
    t = torch.tensor
    assert is_degenerate(t(0.0), t(0.0))
    assert is_degenerate(t(3.0), t(3.0))
    assert is_degenerate(t(float("inf")), t(float("-inf")))  # no data
    assert is_degenerate(t([0.0, 1.0]), t([0.0, 1.0]))  # every channel constant
    assert not is_degenerate(t(0.0), t(1e-3))
    assert not is_degenerate(t([0.0, 0.0]), t([0.0, 2.0]))  # one live channel is enough


def test_all_zero_calibration_data_warns_with_the_layer_names():
    torch.manual_seed(0)
    m = create("mlp", in_features=8, hidden=(6,), num_classes=3).eval()
    with pytest.warns(DegenerateRangeWarning, match=r"zero or constant activation range for input of layer "
                      r"'net\.1' \[0, 0\].*Check the calibration data \(all zeros\?"):
        quantize_(m, Int8Static(), calib_data=[torch.zeros(16, 8)])


def test_real_calibration_data_does_not_warn():
    torch.manual_seed(0)
    m = create("mlp", in_features=8, hidden=(6,), num_classes=3).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateRangeWarning)
        quantize_(m, Int8Static(), calib_data=[torch.randn(16, 8)])
