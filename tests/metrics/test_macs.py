"""MAC counts against hand counts from the layer formulas (never from the code under test)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from slimtorch.metrics import count_macs, register_mac_rule
from slimtorch.metrics.macs import MAC_RULES
from slimtorch.models import SelfAttention, create


def conv_hand(h_out: int, w_out: int, c_out: int, c_in: int, k: int, groups: int = 1) -> int:
    """Each of the H*W*C_out outputs is a dot product of length (C_in/groups)*k*k."""
    return h_out * w_out * c_out * (c_in // groups) * k * k


def test_lenet5_hand_count():
    model = create("lenet5")
    total, per_layer = count_macs(model, torch.zeros(1, 1, 28, 28), per_layer=True)
    # conv1 20*24*24*25, conv2 50*8*8*20*25, fc1 800*500, fc2 500*10
    assert per_layer == {"features.0": 288_000, "features.3": 1_600_000,
                         "classifier.1": 400_000, "classifier.3": 5_000}
    assert total == 2_293_000


def resnet20_hand(option: str) -> int:
    stem = conv_hand(32, 32, 16, 3, 3)
    total = stem
    for c_in, c, side in ((16, 16, 32), (16, 32, 16), (32, 64, 8)):
        # first block: conv1 maps c_in -> c at the new resolution, then 5 more c -> c convs in the stage
        total += conv_hand(side, side, c, c_in, 3) + 5 * conv_hand(side, side, c, c, 3)
        if option == "B" and c_in != c:
            total += conv_hand(side, side, c, c_in, 1)  # 1x1 projection shortcut
    return total + 64 * 10  # fc


@pytest.mark.parametrize("option", ["A", "B"])
def test_resnet20_hand_count(option):
    macs = count_macs(create("resnet20", shortcut=option), torch.zeros(1, 3, 32, 32))
    assert macs == resnet20_hand(option)
    assert macs == pytest.approx(40.8e6, rel=0.01)  # the commonly quoted ~40.8M (option A: 40.55M)


def test_resnet56_matches_depgraph_figure():
    # DepGraph / Torch-Pruning report 125.49M MACs for the CIFAR ResNet-56 (option A): conv + fc only.
    assert count_macs(create("resnet56", shortcut="A"), torch.zeros(1, 3, 32, 32)) == pytest.approx(
        125.49e6, abs=0.01e6)


def test_depthwise_and_grouped_conv():
    dw = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
    assert count_macs(dw, torch.zeros(2, 32, 10, 10)) == 2 * conv_hand(10, 10, 32, 32, 3, groups=32)
    grouped = nn.Conv2d(8, 16, 3, stride=2, groups=4)
    assert count_macs(grouped, torch.zeros(1, 8, 9, 9)) == conv_hand(4, 4, 16, 8, 3, groups=4)
    conv1d = nn.Conv1d(4, 6, 5)
    assert count_macs(conv1d, torch.zeros(3, 4, 20)) == 3 * 16 * 6 * 4 * 5


def test_linear_on_sequence_counts_every_position():
    lin = nn.Linear(24, 40)
    assert count_macs(lin, torch.zeros(3, 7, 24)) == 3 * 7 * 24 * 40


def test_conv_transpose():
    ct = nn.ConvTranspose2d(4, 6, 3, stride=2)
    # every input element meets C_out * k * k weights
    assert count_macs(ct, torch.zeros(1, 4, 5, 5)) == 4 * 5 * 5 * 6 * 3 * 3


def test_self_attention_counts_projections_and_matmuls():
    b, t, dim, h = 2, 9, 32, 4
    attn = SelfAttention(dim, h)
    total, per_layer = count_macs(attn, torch.zeros(b, t, dim), per_layer=True)
    d = dim // h
    matmuls = 2 * b * h * t * t * d  # Q K^T and A V
    assert per_layer[""] == matmuls
    assert total == 4 * b * t * dim * dim + matmuls  # q, k, v, proj


def test_multihead_attention_matches_hand_and_own_attention():
    b, t, dim, h = 2, 9, 32, 4
    mha = nn.MultiheadAttention(dim, h, batch_first=True)

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = mha

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]

    hand = 4 * b * t * dim * dim + 2 * b * h * t * t * (dim // h)
    assert count_macs(Wrap(), torch.zeros(b, t, dim)) == hand
    # keyword call and sequence-first layout
    mha_sf = nn.MultiheadAttention(dim, h)

    class WrapKw(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = mha_sf

        def forward(self, x):
            return self.mha(query=x, key=x, value=x)[0]

    assert count_macs(WrapKw(), torch.zeros(t, b, dim)) == hand


def test_vit_own_and_torch_attention_count_the_same():
    kw = dict(image_size=8, patch_size=4, dim=32, depth=2, heads=4)
    x = torch.zeros(1, 3, 8, 8)
    assert count_macs(create("vit_tiny", attn="own", **kw), x) == count_macs(
        create("vit_tiny", attn="torch", **kw), x)


def test_embedding_is_free_and_norm_is_optional():
    model = nn.Sequential(nn.Embedding(10, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    x = torch.zeros(2, 5, dtype=torch.long)
    assert count_macs(model, x) == 2 * 5 * 8 * 3
    assert count_macs(model, x, include_norm=True) == 2 * 5 * 8 * 3 + 2 * 5 * 8
    bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    assert count_macs(bn, torch.zeros(1, 1, 6, 6), include_norm=True) == conv_hand(4, 4, 4, 1, 3) + 4 * 16


def test_batch_size_scales_macs_and_bn_statistics_untouched():
    model = create("resnet20")
    model.train()
    before = model.bn1.running_mean.clone()
    one = count_macs(model, torch.randn(1, 3, 32, 32))
    assert count_macs(model, torch.randn(4, 3, 32, 32)) == 4 * one
    assert torch.equal(model.bn1.running_mean, before)
    assert model.training and model.bn1.training  # mode restored


def test_parametrized_linear_is_counted_once():
    from torch.nn.utils import parametrize

    class Mask(nn.Module):
        def forward(self, w):
            return w * 0.5

    lin = nn.Linear(6, 4)
    parametrize.register_parametrization(lin, "weight", Mask())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "uncounted layer" warning for the parametrization internals
        assert count_macs(lin, torch.zeros(2, 6)) == 2 * 6 * 4


def test_unknown_layer_with_weights_warns_and_custom_rule_counts():
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(5))

        def forward(self, x):
            return x * self.w

    model = nn.Sequential(nn.Linear(5, 5), Scale())
    with pytest.warns(UserWarning, match="no MAC rule for \\['Scale'\\]"):
        assert count_macs(model, torch.zeros(1, 5)) == 25
    try:
        register_mac_rule(Scale)(lambda m, a, kw, out: out.numel())
        assert count_macs(model, torch.zeros(1, 5)) == 30
    finally:
        MAC_RULES.pop(Scale)


def test_bad_example_inputs():
    with pytest.raises(ValueError, match="must be a tensor, a tuple of tensors .* dict of named tensors"):
        count_macs(nn.Linear(2, 2), [[1.0, 2.0]])
