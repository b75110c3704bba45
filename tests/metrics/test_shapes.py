"""Input-shape checks between data and models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimtorch.core.errors import SlimtorchError
from slimtorch.metrics import check_input_shape, example_inputs_for
from slimtorch.models import create


def test_matching_shapes_pass():
    model = create("lenet5")
    check_input_shape(model, torch.zeros(1, 28, 28))
    check_input_shape(model, (torch.zeros(1, 28, 28), 3))
    check_input_shape(model, torch.zeros(8, 1, 28, 28), batched=True)
    check_input_shape(nn.Linear(3, 3), torch.zeros(99))  # no input_shape declared: nothing to check


def test_mismatch_names_both_shapes():
    model = create("lenet5")
    with pytest.raises(SlimtorchError, match=r"data sample shape \(1, 8, 8\) does not match the model's "
                                             r"input_shape \(1, 28, 28\)"):
        check_input_shape(model, torch.zeros(1, 8, 8))
    with pytest.raises(SlimtorchError, match=r"\(3, 32, 32\) does not match .* \(1, 28, 28\)"):
        check_input_shape(model, torch.zeros(4, 3, 32, 32), batched=True)


def test_token_models():
    gpt = create("char_gpt", block_size=16, n_layer=1, n_embd=16, n_head=2)
    check_input_shape(gpt, torch.zeros(16, dtype=torch.long))
    check_input_shape(gpt, torch.zeros(8, dtype=torch.long))  # shorter context is fine
    with pytest.raises(SlimtorchError, match=r"\(32,\) does not match the model's input_shape \(16,\)"):
        check_input_shape(gpt, torch.zeros(32, dtype=torch.long))
    with pytest.raises(SlimtorchError, match="takes integer token ids but the data holds torch.float32"):
        check_input_shape(gpt, torch.zeros(16))
    with pytest.raises(SlimtorchError, match="takes floating-point inputs"):
        check_input_shape(create("lenet5"), torch.zeros(1, 28, 28, dtype=torch.long))


def test_example_inputs_for():
    assert example_inputs_for(create("resnet20"), 2).shape == (2, 3, 32, 32)
    x = example_inputs_for(create("char_gpt", block_size=16, n_layer=1, n_embd=16, n_head=2))
    assert x.shape == (1, 16) and x.dtype == torch.long
    with pytest.raises(SlimtorchError, match="has no input_shape attribute"):
        example_inputs_for(nn.Linear(2, 2))
