"""Deep mutual learning: formula, gradient equivalence to per-student losses, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slimtorch.distill import MutualLearning, kd_loss
from slimtorch.models import create


def _students(k=3):
    return [create("mlp", in_features=64, hidden=(16 + 8 * i,), num_classes=10) for i in range(k)]


def test_loss_is_sum_of_per_student_dml_losses():
    students = _students(3)
    dml = MutualLearning(students, temperature=2.0, kd_weight=0.5, task_weight=1.0)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    out = dml(x, y)
    with torch.no_grad():
        z = [s(x) for s in students]
    ref = 0.0
    for i in range(3):
        kl = sum(kd_loss(z[i], z[j], 2.0) for j in range(3) if j != i) / 2
        ref += F.cross_entropy(z[i], y) + 0.5 * kl
        assert out[f"kl_{i}"].item() == pytest.approx(0.5 * kl.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(float(ref), rel=1e-5)
    assert out["output"] is out["outputs"][0] and dml.student is students[0]


def test_each_student_gets_the_gradient_of_its_own_loss():
    students = _students(2)
    dml = MutualLearning(students)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    dml(x, y)["loss"].backward()
    g_joint = students[0].net[1].weight.grad.clone()
    students[0].zero_grad()
    z0, z1 = students[0](x), students[1](x).detach()
    (F.cross_entropy(z0, y) + kd_loss(z0, z1, 1.0)).backward()
    assert torch.allclose(g_joint, students[0].net[1].weight.grad, atol=1e-6)


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 2 students, got 1"):
        MutualLearning(_students(1))
    s = _students(1)[0]
    with pytest.raises(ValueError, match="distinct"):
        MutualLearning([s, s])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        MutualLearning(_students(2), temperature=0)
    with pytest.raises(ValueError, match="kd_weight must be >= 0"):
        MutualLearning(_students(2), kd_weight=-1)
    odd = [
        create("mlp", in_features=64, hidden=(8,), num_classes=10),
        create("mlp", in_features=64, hidden=(8,), num_classes=4),
    ]
    with pytest.raises(ValueError, match=r"disagree on the number of classes: \[10, 4\]"):
        MutualLearning(odd)(torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))
