"""Self-distillation: born-again networks (Furlanello et al. 2018, "Born-Again Neural Networks").

Generation ``g`` is a fresh network of the same architecture trained to match generation ``g - 1``
(``L = task_weight * CE(z_g, y) + sum of the given distillation losses against z_{g-1}``); generation 0
is the given teacher. Training is delegated to a callable so any loop works (e.g.
``lambda d: slimtorch.train.fit(d, data, epochs=10)``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from slimtorch.distill.distiller import Distiller
from slimtorch.distill.losses import KD, DistillLoss


def born_again(
    make_student: Callable[[], nn.Module],
    teacher: nn.Module,
    train: Callable[[Distiller], Any],
    *,
    generations: int = 1,
    losses: Sequence[DistillLoss] = (KD(temperature=1.0, weight=1.0),),
    task_weight: float = 1.0,
    example_inputs: torch.Tensor | None = None,
) -> list[nn.Module]:
    """Train ``generations`` born-again students, each distilled from the previous one.

    Args:
        make_student: builds a fresh (untrained) network, usually of the teacher's architecture.
        teacher: generation 0 (trained). It is frozen; the generations are copies frozen in turn.
        train: trains a :class:`Distiller` in place (its ``student`` is the new generation).
        generations: how many students to train (>= 1).
        losses: distillation losses against the previous generation (default: KD at T = 1, as in the paper).
        task_weight: weight of the hard-label loss.
        example_inputs: passed to :class:`Distiller` (feature losses without ``input_shape``).

    Returns:
        The trained generations, in order (the last one is usually the best).
    """
    if isinstance(generations, bool) or not isinstance(generations, int) or generations < 1:
        raise ValueError(f"generations must be an int >= 1, got {generations!r}")
    trained: list[nn.Module] = []
    previous = teacher
    for _ in range(generations):
        student = make_student()
        if student is previous:
            raise ValueError("make_student must return a new module each call")
        distiller = Distiller(
            student, previous, losses, task_weight=task_weight, example_inputs=example_inputs
        )
        train(distiller)
        trained.append(student)
        previous = copy.deepcopy(student)  # frozen copy as next teacher; the returned student stays trainable
    return trained
