"""Accuracy, loss and perplexity against manual computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from slimtorch.metrics import accuracy, evaluate, topk_accuracy


def _data(n: int = 50, d: int = 6, c: int = 4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, d, generator=g), torch.randint(0, c, (n,), generator=g)


def test_accuracy_matches_manual_computation():
    x, y = _data()
    model = nn.Linear(6, 4)
    with torch.no_grad():
        manual = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy(model, TensorDataset(x, y), batch_size=7) == pytest.approx(manual)
    batches = DataLoader(TensorDataset(x, y), batch_size=16)
    assert accuracy(model, batches) == pytest.approx(manual)


def test_topk():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [2.0, 3.0, 1.0]])
    y = torch.tensor([1, 0, 0])
    assert topk_accuracy(logits, y, 1) == 0.0
    assert topk_accuracy(logits, y, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(logits, y, 3) == 1.0
    x, t = _data()
    model = nn.Linear(6, 4)
    with torch.no_grad():
        top2 = model(x).topk(2, 1).indices
    manual = (top2 == t[:, None]).any(1).float().mean().item()
    assert accuracy(model, TensorDataset(x, t), topk=2) == pytest.approx(manual)
    with pytest.raises(ValueError, match="topk must be between 1 and the number of classes \\(3\\)"):
        topk_accuracy(logits, y, 4)


def test_evaluate_loss_and_perplexity():
    x, y = _data()
    model = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 4))
    model.train()
    out = evaluate(model, TensorDataset(x, y), batch_size=16)
    model.eval()
    with torch.no_grad():
        manual = F.cross_entropy(model(x), y).item()
    assert out["loss"] == pytest.approx(manual, rel=1e-5)
    assert out["perplexity"] == pytest.approx(math.exp(out["loss"]))
    model.train()
    evaluate(model, TensorDataset(x, y))
    assert model.training and model[1].training  # previous mode restored


def test_evaluate_custom_loss_is_weighted_by_batch_size():
    x, y = _data(n=10)
    model = nn.Linear(6, 4)
    out = evaluate(model, TensorDataset(x, y), loss_fn=lambda o, t: F.cross_entropy(o, t) * 2, batch_size=3)
    with torch.no_grad():
        assert out["loss"] == pytest.approx(2 * F.cross_entropy(model(x), y).item(), rel=1e-5)


def test_language_model_logits_are_flattened():
    vocab, b, t = 11, 3, 5
    model = nn.Sequential(nn.Embedding(vocab, 8), nn.Linear(8, vocab))
    ids = torch.randint(0, vocab, (b, t))
    nxt = torch.randint(0, vocab, (b, t))
    out = evaluate(model, [(ids, nxt)])
    with torch.no_grad():
        logits = model(ids)
    assert out["loss"] == pytest.approx(F.cross_entropy(logits.reshape(-1, vocab), nxt.reshape(-1)).item(),
                                        rel=1e-5)
    assert out["accuracy"] == pytest.approx((logits.argmax(-1) == nxt).float().mean().item())
    assert out["perplexity"] == pytest.approx(math.exp(out["loss"]))


class LossModule(nn.Module):
    """A module that computes its own loss (like a Distiller): forward(x, y) -> dict."""

    computes_loss = True

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(6, 4)

    def forward(self, x, y):
        logits = self.net(x)
        return {"loss": F.cross_entropy(logits, y) + 1.0, "output": logits}


def test_evaluate_computes_loss_module():
    x, y = _data()
    m = LossModule()
    out = evaluate(m, TensorDataset(x, y), batch_size=20)
    with torch.no_grad():
        logits = m.net(x)
    assert out["loss"] == pytest.approx(F.cross_entropy(logits, y).item() + 1.0, rel=1e-5)
    assert out["accuracy"] == pytest.approx((logits.argmax(1) == y).float().mean().item())


def test_bad_data():
    model = nn.Linear(6, 4)
    with pytest.raises(ValueError, match="evaluate got no data"):
        evaluate(model, [])
    with pytest.raises(ValueError,
                       match="each batch needs a target: an \\(inputs, targets\\) pair or a dict with 'labels'; got"):
        accuracy(model, [torch.zeros(2, 6)])
    with pytest.raises(ValueError, match="do not fit targets"):
        accuracy(model, [(torch.zeros(2, 6), torch.zeros(2, 3, dtype=torch.long))])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        accuracy(model, TensorDataset(*_data()), batch_size=0)
