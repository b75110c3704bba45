"""Distiller: output dict, gradients reach the student only, frozen teachers, hooks, bad inputs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from slimtorch.distill import (
    KD,
    RKD,
    AttentionTransfer,
    Distiller,
    Hint,
    LogitMSE,
    SimilarityPreserving,
    kd_loss,
)
from slimtorch.models import create


def _mlp(hidden=(32, 16), classes=10, **kw):
    return create("mlp", in_features=64, hidden=hidden, num_classes=classes, **kw)


def _batch(n=8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


class TinyConv(nn.Module):
    def __init__(self, c1: int, c2: int) -> None:
        super().__init__()
        self.input_shape = (3, 8, 8)
        self.num_classes = 10
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, 3, padding=1), nn.ReLU(), nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(c2, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def test_output_dict_and_weighted_components_sum_to_loss():
    s, t = _mlp(), _mlp((48, 24))
    d = Distiller(
        s,
        t,
        [KD(temperature=4.0, weight=0.7), Hint("net.4", "net.4", weight=0.2), RKD(weight=0.5)],
        task_weight=0.3,
    )
    x, y = _batch()
    out = d(x, y)
    assert set(out) == {"loss", "output", "task", "kd", "hint", "rkd"}
    assert out["output"].shape == (8, 10)
    assert torch.allclose(out["loss"], out["task"] + out["kd"] + out["hint"] + out["rkd"])
    with torch.no_grad():
        zs, zt = s(x), t(x)
    assert out["kd"].item() == pytest.approx(0.7 * kd_loss(zs, zt, 4.0).item(), rel=1e-5)
    assert out["task"].item() == pytest.approx(0.3 * nn.functional.cross_entropy(zs, y).item(), rel=1e-5)


def test_gradients_reach_student_and_adapter_only_and_teacher_is_unchanged():
    s, t = _mlp(), _mlp((48, 24), dropout=0.5)
    t_before = copy.deepcopy(t.state_dict())
    d = Distiller(s, t, [KD(temperature=2.0), Hint("net.2", "net.2")])
    trainable = d.trainable_parameters()
    adapter = d.loss_terms["hint"].adapter
    assert isinstance(adapter, nn.Linear) and adapter.weight.shape == (48, 32)
    ids = {id(p) for p in trainable}
    assert ids == {id(p) for p in list(s.parameters()) + list(adapter.parameters())}
    assert not any(p.requires_grad for p in t.parameters())
    opt = torch.optim.SGD(trainable, lr=0.5)
    d.train()
    assert not t.training and s.training  # teacher stays in eval mode (dropout off)
    x, y = _batch()
    s_before = copy.deepcopy(s.state_dict())
    out = d(x, y)
    opt.zero_grad()
    out["loss"].backward()
    assert all(p.grad is None for p in t.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    opt.step()
    for k, v in t.state_dict().items():
        assert torch.equal(v, t_before[k]), k
    assert any(not torch.equal(v, s_before[k]) for k, v in s.state_dict().items())


def test_manual_five_line_loop_lowers_the_loss():
    torch.manual_seed(0)
    s, t = _mlp(), _mlp((64, 64))
    d = Distiller(s, t, [KD(temperature=4.0)], task_weight=0.0)
    x, y = _batch(32)
    opt = torch.optim.Adam(d.trainable_parameters(), lr=1e-2)
    first = d(x, y)["kd"].item()
    for _ in range(30):
        out = d(x, y)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert d(x, y)["kd"].item() < 0.2 * first


def test_hooks_are_removed_after_forward():
    s, t = _mlp(), _mlp((48, 24))
    d = Distiller(s, t, [Hint("net.2", "net.2")])
    d(*_batch())
    assert all(not m._forward_hooks for m in list(s.modules()) + list(t.modules()))


def test_multi_teacher_weighted_soft_targets():
    s, t1, t2 = _mlp(), _mlp((40, 20)), _mlp((24,))
    d = Distiller(s, [t1, t2], [KD(temperature=3.0)], task_weight=0.0, teacher_weights=[2.0, 1.0])
    x, y = _batch()
    with torch.no_grad():
        zs, q = s(x), (2 * torch.softmax(t1(x) / 3, -1) + torch.softmax(t2(x) / 3, -1)) / 3
    ref = 9.0 * (q * (q.log() - torch.log_softmax(zs / 3, -1))).sum() / 8
    assert d(x, y)["loss"].item() == pytest.approx(ref.item(), rel=1e-4)
    d_mse = Distiller(s, [t1, t2], [LogitMSE()], task_weight=0.0)
    with torch.no_grad():
        ref_mse = ((zs - (t1(x) + t2(x)) / 2) ** 2).mean()
    assert d_mse(x, y)["loss"].item() == pytest.approx(ref_mse.item(), rel=1e-5)


def test_conv_adapter_attention_and_similarity_on_feature_maps():
    s, t = TinyConv(4, 8), TinyConv(8, 16)
    d = Distiller(
        s,
        t,
        [
            Hint("features.3", "features.3"),
            AttentionTransfer(["features.1", "features.3"], ["features.1", "features.3"]),
            SimilarityPreserving("features.3", "features.3"),
        ],
    )
    assert isinstance(d.loss_terms["hint"].adapter, nn.Conv2d)
    assert d.loss_terms["hint"].adapter.weight.shape == (16, 8, 1, 1)
    out = d(torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,)))
    assert {"hint", "at", "sp"} <= set(out) and torch.isfinite(out["loss"])


def test_duplicate_term_names_get_suffixes():
    s, t = _mlp(), _mlp()
    d = Distiller(s, t, [Hint("net.2", "net.2"), Hint("net.4", "net.4")])
    assert list(d.loss_terms) == ["hint", "hint_2"]


def test_different_class_counts_rejected():
    with pytest.raises(ValueError, match="student has 10 classes but teacher 0 has 7"):
        Distiller(_mlp(), _mlp(classes=7), [KD(temperature=2.0)])


def test_unknown_hint_layer_lists_close_names():
    with pytest.raises(ValueError, match=r"student layer: no module named 'net.22'.*closest: \['net.2'"):
        Distiller(_mlp(), _mlp(), [Hint("net.22", "net.2")])
    with pytest.raises(ValueError, match=r"teacher 0 layer: no module named 'nett.4'.*'net.4'"):
        Distiller(_mlp(), _mlp(), [Hint("net.4", "nett.4")])


def test_shape_mismatch_reports_both_shapes():
    with pytest.raises(
        ValueError, match=r"student feature \(2, 32\) .*teacher feature \(2, 48\) with adapter='identity'"
    ):
        Distiller(_mlp(), _mlp((48, 24)), [Hint("net.2", "net.2", adapter="identity")])
    with pytest.raises(ValueError, match=r"\(2, 4, 8, 8\).*\(2, 8, 8, 8\)|\(2, 8, 8, 8\).*\(2, 4, 8, 8\)"):
        Distiller(TinyConv(4, 8), TinyConv(8, 16), [Hint("features.0", "features.0", adapter="linear")])


def test_bad_distiller_arguments():
    s, t = _mlp(), _mlp()
    with pytest.raises(ValueError, match="task_weight must be >= 0, got -1"):
        Distiller(s, t, [KD(temperature=2.0)], task_weight=-1)
    with pytest.raises(ValueError, match="teacher weights must be >= 0"):
        Distiller(s, [t, _mlp()], [KD(temperature=2.0)], teacher_weights=[1, -1])
    with pytest.raises(ValueError, match="nothing to train"):
        Distiller(s, t, [], task_weight=0)
    with pytest.raises(ValueError, match="Hint.teacher=1 but only 1 teacher"):
        Distiller(s, t, [Hint("net.2", "net.2", teacher=1)])
    with pytest.raises(ValueError, match="own teacher"):
        Distiller(s, s, [KD()])


def test_feature_losses_without_input_shape_need_example_inputs():
    s = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    t = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    with pytest.raises(ValueError, match="example_inputs"):
        Distiller(s, t, [Hint("2", "2")])
    d = Distiller(s, t, [Hint("2", "2")], example_inputs=torch.randn(2, 1, 8, 8))
    assert d.loss_terms["hint"].adapter.weight.shape == (32, 16)


def test_language_model_logits():
    s = create("char_gpt", vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16)
    t = create("char_gpt", vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=32)
    d = Distiller(s, t, [KD(temperature=2.0), Hint("blocks.0", "blocks.1")])
    x = torch.randint(0, 11, (3, 8))
    out = d(x, torch.randint(0, 11, (3, 8)))
    assert out["output"].shape == (3, 8, 11) and torch.isfinite(out["loss"])
