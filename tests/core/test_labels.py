"""core.labels: when a model computes its own loss, and how causal-LM logits meet their labels."""

from __future__ import annotations

import torch
from torch import nn

from slimtorch.core.batches import ModelInputs
from slimtorch.core.labels import IGNORE_INDEX, align, counted, forward_batch, shifts_labels, takes_labels


class OwnLoss(nn.Module):
    """Returns {'logits', 'loss'} when given labels, like a Hugging Face head."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        z = self.lin(x)
        return {"logits": z} if labels is None else {"logits": z, "loss": (z.sum() - labels.sum()) ** 2}


class KwargsOnly(nn.Module):
    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return x


class FakeCausalLM(nn.Module):
    """Recognised by its config and can_generate(), as transformers' causal LMs are."""

    class config:  # noqa: N801 (a stand-in for a PretrainedConfig)
        is_encoder_decoder = False

    def can_generate(self) -> bool:
        return True


def test_takes_labels_needs_a_named_parameter():
    assert takes_labels(OwnLoss()) and not takes_labels(KwargsOnly()) and not takes_labels(nn.Linear(2, 2))


def test_forward_batch_passes_labels_only_when_asked_and_taken():
    m, x, y = OwnLoss(), torch.randn(4, 3), torch.ones(4)
    out, loss = forward_batch(m, ModelInputs((x,)), y, with_labels=True)
    assert torch.equal(loss, (m.lin(x).sum() - 4.0) ** 2)
    assert forward_batch(m, ModelInputs((x,)), y, with_labels=False)[1] is None
    assert forward_batch(m, ModelInputs((x,), {"labels": y}), y, with_labels=True)[1] is None  # already given
    assert forward_batch(m, ModelInputs((x,)), None, with_labels=True)[1] is None


def test_align_shifts_only_causal_lms():
    logits, labels = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    z, y = align(FakeCausalLM(), logits, labels)
    assert torch.equal(z, logits[:, :-1]) and torch.equal(y, labels[:, 1:])
    z, y = align(nn.Linear(2, 2), logits, labels)
    assert z is logits and y is labels
    assert shifts_labels(FakeCausalLM()) and not shifts_labels(nn.Linear(2, 2))
    FakeCausalLM.config.is_encoder_decoder = True  # T5-like: the model aligns labels itself
    try:
        assert not shifts_labels(FakeCausalLM())
    finally:
        FakeCausalLM.config.is_encoder_decoder = False


def test_counted_skips_ignore_index():
    assert counted(torch.tensor([1, IGNORE_INDEX, 0])).tolist() == [True, False, True]
