"""Parameter distillation: copy matching tensors, or every k-th block of a deeper teacher."""

from __future__ import annotations

import pytest
import torch

from slimtorch.distill import init_from_teacher
from slimtorch.models import create


def test_matching_copies_equal_name_and_shape():
    t = create("mlp", in_features=64, hidden=(32, 16), num_classes=10)
    s = create("mlp", in_features=64, hidden=(32, 8), num_classes=10)
    copied = init_from_teacher(s, t, mode="matching")
    assert copied == {k: k for k in ("net.1.weight", "net.1.bias", "net.5.bias")}  # final bias: (10,) in both
    assert torch.equal(s.net[1].weight, t.net[1].weight)
    assert not torch.equal(s.net[3].weight[:8, :], t.net[3].weight[:8, :])


def test_every_k_takes_every_third_block_of_resnet56_for_resnet20():
    t, s = create("resnet56"), create("resnet20")
    copied = init_from_teacher(s, t, mode="every_k")
    assert copied["layer1.0.conv1.weight"] == "layer1.0.conv1.weight"
    assert copied["layer1.2.conv2.weight"] == "layer1.6.conv2.weight"
    assert copied["layer3.1.bn1.running_mean"] == "layer3.3.bn1.running_mean"
    assert copied["conv1.weight"] == "conv1.weight" and copied["fc.weight"] == "fc.weight"
    assert torch.equal(s.layer2[1].conv1.weight, t.layer2[3].conv1.weight)
    assert len(copied) == len(s.state_dict())  # same widths: every tensor has a source
    with_k = init_from_teacher(s, t, mode="every_k", k=2)
    assert with_k["layer1.2.conv2.weight"] == "layer1.4.conv2.weight"


def test_char_gpt_every_k_blocks():
    t = create("char_gpt", vocab_size=11, block_size=8, n_layer=4, n_head=2, n_embd=16)
    s = create("char_gpt", vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)
    copied = init_from_teacher(s, t, mode="every_k")
    assert any(v.startswith("blocks.2.") for k, v in copied.items() if k.startswith("blocks.1."))
    x = torch.randint(0, 11, (1, 8))
    assert s(x).shape == (1, 8, 11)


def test_bad_inputs():
    t, s = (
        create("mlp", in_features=64, hidden=(32,)),
        create("mlp", in_features=16, hidden=(8,), num_classes=3),
    )
    with pytest.raises(ValueError, match="found no tensor with the same name and shape"):
        init_from_teacher(s, t)
    with pytest.raises(ValueError, match="mode: 'half' is not one of"):
        init_from_teacher(s, t, mode="half")
    with pytest.raises(ValueError, match="k must be an int >= 1, got 0"):
        init_from_teacher(s, t, mode="every_k", k=0)
