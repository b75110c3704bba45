"""DIST (Huang et al. 2022) against its formula computed independently with numpy's corrcoef."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from slimtorch.distill import DIST, Distiller, dist_loss


def _reference(zs: np.ndarray, zt: np.ndarray, t: float, beta: float, gamma: float) -> float:
    def softmax(z):
        e = np.exp(z / t - (z / t).max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    ps, pt = softmax(zs), softmax(zt)
    inter = 1 - np.mean([np.corrcoef(ps[i], pt[i])[0, 1] for i in range(len(ps))])
    intra = 1 - np.mean([np.corrcoef(ps[:, j], pt[:, j])[0, 1] for j in range(ps.shape[1])])
    return t * t * (beta * inter + gamma * intra)


@pytest.mark.parametrize("t,beta,gamma", [(1.0, 1.0, 1.0), (4.0, 1.0, 2.0), (2.0, 0.0, 1.0)])
def test_dist_equals_the_correlation_formula(t, beta, gamma):
    g = torch.Generator().manual_seed(0)
    zs = torch.randn(16, 10, generator=g, dtype=torch.float64)
    zt = torch.randn(16, 10, generator=g, dtype=torch.float64)
    ours = dist_loss(torch.softmax(zs / t, 1), torch.softmax(zt / t, 1), t, beta, gamma)
    assert float(ours) == pytest.approx(_reference(zs.numpy(), zt.numpy(), t, beta, gamma), rel=1e-6)


def test_dist_ignores_what_kl_punishes():
    # the same ranking of classes with a sharper teacher: KL is far from 0, the inter-class relation is ~perfect
    zs = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    p_s, p_t = torch.softmax(zs, 1), torch.softmax(3 * zs, 1)
    inter = dist_loss(p_s, p_t, 1.0, inter_weight=1.0, intra_weight=0.0)
    kl = float(torch.nn.functional.kl_div(p_s.log(), p_t, reduction="sum"))
    assert kl > 0.25 and float(inter) < 0.2 * kl
    assert float(dist_loss(p_t.repeat(3, 1), p_t.repeat(3, 1) * 1.0, 1.0, 1.0, 0.0)) == pytest.approx(0, abs=1e-6)


def test_a_distiller_step_with_dist_reports_and_trains():
    torch.manual_seed(0)
    student, teacher = nn.Linear(8, 5), nn.Linear(8, 5)
    distiller = Distiller(student, teacher, [DIST(temperature=4.0)], task_weight=0.0)
    x, y = torch.randn(32, 8), torch.randint(0, 5, (32,))
    out = distiller(x, y)
    assert set(out) >= {"loss", "output", "dist"} and out["loss"].item() == pytest.approx(out["dist"].item())
    out["loss"].backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        DIST(temperature=0)
    with pytest.raises(ValueError, match="intra_weight must be >= 0, got -1"):
        DIST(intra_weight=-1)
    with pytest.raises(ValueError, match=r"DIST compares two \(B, C\) probability matrices, got \(4,\) and \(4,\)"):
        dist_loss(torch.ones(4), torch.ones(4))
