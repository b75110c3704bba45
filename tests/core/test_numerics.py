"""NaN/inf weights are refused by every technique's entry point and by save (issue 18)."""

from __future__ import annotations

import pytest
import torch

import slimtorch
from slimtorch import share
from slimtorch.core.numerics import NonFiniteError, check_finite_weights, non_finite_tensors
from slimtorch.models import create
from slimtorch.prune import Magnitude, prune_
from slimtorch.quant import quantize_
from slimtorch.quant.workflows.ptq import Int8Dynamic


def _poisoned():
    m = create("mlp", in_features=8, hidden=(6,), num_classes=3)
    with torch.no_grad():
        m.net[1].weight[2, 3] = float("nan")
        m.net[3].bias[0] = float("-inf")
    return m


def test_non_finite_tensors_names_them():
    assert non_finite_tensors(_poisoned()) == ["net.1.weight", "net.3.bias"]
    assert non_finite_tensors(create("mlp", in_features=8, hidden=(6,), num_classes=3)) == []
    check_finite_weights(create("mlp", in_features=8, hidden=(6,), num_classes=3), "x")  # no error


@pytest.mark.parametrize(
    "what, call",
    [("prune_", lambda m: prune_(m, Magnitude(sparsity=0.5))),
     ("quantize_", lambda m: quantize_(m, Int8Dynamic())),
     ("share.cluster_", lambda m: share.cluster_(m, 4)),
     ("slimtorch.save", lambda m: slimtorch.save(m, "/nonexistent-never-written/m.safetensors"))],
)
def test_entry_points_refuse_nan_weights(what, call):
    m = _poisoned()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(NonFiniteError, match=rf"{what}: the model's weights hold NaN or inf in "
                       r"\['net\.1\.weight', 'net\.3\.bias'\]; .*reload a good checkpoint"):
        call(m)
    after = m.state_dict()
    assert list(after) == list(before)  # nothing was changed before the refusal
    assert all(torch.equal(after[k].nan_to_num(), before[k].nan_to_num()) for k in before)


def test_inf_in_a_buffer_is_a_sentinel_but_nan_is_refused():
    """Observers start with +-inf running ranges and attention masks hold -inf: only NaN buffers are refused."""
    import pytest
    import torch
    from torch import nn

    from slimtorch.core.numerics import NonFiniteError, check_finite_weights

    net = nn.Linear(2, 2)
    net.register_buffer("mask", torch.tensor([0.0, float("-inf")]))
    check_finite_weights(net, "quantize_")
    net.mask[0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"quantize_: .*\['mask'\]"):
        check_finite_weights(net, "quantize_")
