"""Online distillation: deep mutual learning (Zhang, Xiang, Hospedales & Lu 2018, "Deep Mutual Learning").

K >= 2 students train together; each learns the labels and the (detached) predictions of the others:

``L_k = task_weight * CE(z_k, y)``
``      + kd_weight * (1/(K-1)) * sum_{j != k} T^2 KL(softmax(z_j/T) || softmax(z_k/T))``

and ``loss = sum_k L_k``. Because the peers' predictions are detached and the students share no
parameters, one backward of the sum gives every student exactly the gradient of its own ``L_k``: this is
the simultaneous-update form of the paper's alternating Algorithm 1 (both use the peers' current
predictions on the same batch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from slimtorch.core.batches import output_tensor
from slimtorch.core.config import check_positive
from slimtorch.distill.distiller import as_inputs, task_cross_entropy
from slimtorch.distill.functional import kd_loss


class MutualLearning(nn.Module):
    """Deep mutual learning over a cohort of students, as one loss module (``computes_loss = True``).

    ``forward(inputs, targets)`` returns ``{"loss", "output", "outputs", "task_k", "kl_k"}`` where
    ``output`` is student 0's logits (the model ``fit`` saves is ``self.student`` = student 0) and
    ``outputs`` is the list of every student's logits.

    Args:
        students: two or more models with the same number of classes (architectures may differ).
        temperature: T > 0 of the mimicry KL (the paper uses 1).
        kd_weight: weight of the mimicry term (>= 0).
        task_weight: weight of the hard-label loss (>= 0).
        task_loss: ``task_loss(logits, targets)``; cross-entropy by default.
    """

    computes_loss = True

    def __init__(
        self,
        students: Sequence[nn.Module],
        *,
        temperature: float = 1.0,
        kd_weight: float = 1.0,
        task_weight: float = 1.0,
        task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        students = list(students)
        if len(students) < 2:
            raise ValueError(f"MutualLearning needs at least 2 students, got {len(students)}")
        if len({id(s) for s in students}) != len(students):
            raise ValueError("MutualLearning students must be distinct modules")
        check_positive("temperature", temperature)
        check_positive("kd_weight", kd_weight, allow_zero=True)
        check_positive("task_weight", task_weight, allow_zero=True)
        self.students = nn.ModuleList(students)
        self.temperature, self.kd_weight, self.task_weight = (
            float(temperature),
            float(kd_weight),
            float(task_weight),
        )
        self.task_loss = task_loss or task_cross_entropy

    @property
    def student(self) -> nn.Module:
        """Student 0 (what ``fit`` saves as the product of the run)."""
        return self.students[0]

    def forward(self, inputs: Any, targets: torch.Tensor | None = None) -> dict[str, object]:
        """``inputs``: a tensor, a tuple of tensors or a dict of named tensors (every one reaches each student)."""
        x = as_inputs(inputs)
        logits = [output_tensor(x(s)) for s in self.students]  # K x (B, C); a ModelOutput gives its logits
        c = {z.shape[-1] for z in logits}
        if len(c) != 1:
            raise ValueError(
                f"MutualLearning students disagree on the number of classes: {[z.shape[-1] for z in logits]}"
            )
        k = len(logits)
        out: dict[str, object] = {"output": logits[0], "outputs": logits}
        total = logits[0].new_zeros(())
        for i, z in enumerate(logits):
            kl = sum(kd_loss(z, logits[j].detach(), self.temperature) for j in range(k) if j != i) / (k - 1)
            li = self.kd_weight * kl
            if targets is not None and self.task_weight > 0:
                task = self.task_weight * self.task_loss(z, targets)
                out[f"task_{i}"] = task.detach()
                li = li + task
            out[f"kl_{i}"] = (self.kd_weight * kl).detach()
            total = total + li
        out["loss"] = total
        return out
