"""Born-again networks: each generation is distilled from the previous one."""

from __future__ import annotations

import pytest
import torch

from slimtorch.distill import KD, Distiller, born_again
from slimtorch.models import create


def test_generations_are_trained_from_the_previous_one():
    teacher = create("mlp", in_features=64, hidden=(16,), num_classes=10)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    seen_teachers = []

    def train(d: Distiller) -> None:
        seen_teachers.append(d.teachers[0])
        opt = torch.optim.SGD(d.trainable_parameters(), lr=0.1)
        for _ in range(3):
            out = d(x, y)
            opt.zero_grad()
            out["loss"].backward()
            opt.step()

    gens = born_again(
        lambda: create("mlp", in_features=64, hidden=(16,), num_classes=10),
        teacher,
        train,
        generations=2,
        losses=[KD(temperature=2.0)],
    )
    assert len(gens) == 2 and seen_teachers[0] is teacher
    # generation 2's teacher is a frozen copy of generation 1, equal in weights, not the same object
    assert seen_teachers[1] is not gens[0]
    for a, b in zip(seen_teachers[1].parameters(), gens[0].parameters()):
        assert torch.equal(a, b) and not a.requires_grad and b.requires_grad


def test_bad_generations():
    t = create("mlp", in_features=64, hidden=(8,))
    with pytest.raises(ValueError, match="generations must be an int >= 1, got 0"):
        born_again(lambda: create("mlp", in_features=64, hidden=(8,)), t, lambda d: None, generations=0)
