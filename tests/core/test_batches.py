"""split_batch / output_tensor: every batch and output form the library accepts, and clear refusals."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from slimtorch.core.batches import ModelInputs, model_inputs, output_tensor, split_batch
from slimtorch.core.errors import SlimtorchError


class TwoInputs(nn.Module):
    def forward(self, input_ids, attention_mask=None):
        x = input_ids.float()
        return x if attention_mask is None else x * attention_mask


def test_tensor_batch_is_one_positional_input():
    x = torch.randn(4, 3)
    inputs, target = split_batch(x)
    assert target is None and inputs.args[0] is x and inputs.batch_size == 4


def test_pair_batch_keeps_target():
    x, y = torch.randn(4, 3), torch.arange(4)
    inputs, target = split_batch((x, y))
    assert inputs.args == (x,) and target is y


def test_dict_batch_keeps_the_attention_mask_and_pops_labels():
    ids = torch.ones(2, 5, dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    inputs, target = split_batch({"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1])})
    assert set(inputs.kwargs) == {"input_ids", "attention_mask"}
    assert torch.equal(target, torch.tensor([0, 1]))
    out = inputs(TwoInputs())
    # The mask reached the model: masked positions are zero.
    assert out[0, 3:].abs().sum() == 0 and out[1].sum() == 5


def test_tuple_of_positional_inputs_with_target():
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    inputs, target = split_batch(((a, b), torch.zeros(2)))
    assert inputs.args == (a, b) and target is not None


def test_select_and_to_keep_non_batch_tensors():
    inputs = ModelInputs((torch.randn(4, 3),), {"mask": torch.ones(4, 3), "scale": torch.tensor(2.0)})
    sub = inputs.select(slice(0, 2))
    assert sub.args[0].shape == (2, 3) and sub.kwargs["mask"].shape == (2, 3)
    assert sub.kwargs["scale"].dim() == 0
    assert dict(inputs.to("cpu").tensors()).keys() == {"arg0", "mask", "scale"}


@pytest.mark.parametrize("bad", [None, 3, "text", [], {"labels": torch.zeros(2)}])
def test_bad_batches_are_named(bad):
    with pytest.raises(SlimtorchError, match="batch"):
        model_inputs(bad)


def test_output_tensor_reads_model_outputs():
    logits = torch.randn(2, 3)
    assert output_tensor(logits) is logits
    hf_like = OrderedDict(loss=None, logits=logits, hidden_states=(torch.zeros(1),))
    assert output_tensor(hf_like) is logits
    assert output_tensor(OrderedDict(last_hidden_state=logits)) is logits
    assert output_tensor((logits, torch.zeros(1))) is logits
    assert output_tensor(hf_like, key="logits") is logits
    with pytest.raises(SlimtorchError, match="no tensor 'attentions'.*logits"):
        output_tensor(hf_like, key="attentions")
    with pytest.raises(SlimtorchError, match="type int"):
        output_tensor(3)
