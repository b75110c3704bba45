"""DIST: distillation by correlation, robust to a much stronger teacher (Huang et al. 2022, "Knowledge
Distillation from A Stronger Teacher", NeurIPS).

KL-based KD asks the student to match the teacher's probabilities exactly; when the teacher is far stronger
that target is out of reach and the exact match hurts. DIST keeps only the *relations*: with
``p = softmax(z / T)`` for student (``p_s``) and teacher (``p_t``), both ``(B, C)``,

    inter = 1 - (1/B) sum_i  rho(p_s[i, :], p_t[i, :])      (each sample's ranking of the classes)
    intra = 1 - (1/C) sum_j  rho(p_s[:, j], p_t[:, j])      (each class's ranking of the samples)
    loss  = T^2 * (beta * inter + gamma * intra)

where ``rho`` is Pearson's correlation. The paper uses ``beta = gamma = 1`` (2 on CIFAR-100's intra term
in some tables) and ``T = 1`` on ImageNet, ``T = 4`` on CIFAR. Sequence logits ``(B, L, C)`` are flattened
to ``(B*L, C)``; several teachers contribute their weighted mean probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimtorch.core.config import check_positive
from slimtorch.distill.losses import DistillContext, DistillLoss, LossTerm, register_loss


def pearson(a: torch.Tensor, b: torch.Tensor, dim: int, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of ``a`` and ``b`` along ``dim`` (the cosine of the centred vectors)."""
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    return (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim) + eps)


def dist_loss(student_probs: torch.Tensor, teacher_probs: torch.Tensor, temperature: float = 1.0,
              inter_weight: float = 1.0, intra_weight: float = 1.0) -> torch.Tensor:
    """``T^2 * (beta * (1 - mean_i rho(rows)) + gamma * (1 - mean_j rho(columns)))`` of two ``(B, C)``
    probability matrices (see the module docstring)."""
    if student_probs.shape != teacher_probs.shape or student_probs.dim() != 2:
        raise ValueError(f"DIST compares two (B, C) probability matrices, got {tuple(student_probs.shape)} and "
                         f"{tuple(teacher_probs.shape)}")
    inter = 1 - pearson(student_probs, teacher_probs, dim=1).mean()
    intra = 1 - pearson(student_probs, teacher_probs, dim=0).mean()
    return temperature**2 * (inter_weight * inter + intra_weight * intra)


@dataclass
class DIST(DistillLoss):
    """Correlation distillation (Huang et al. 2022): ``weight * T^2 * (beta * inter + gamma * intra)``.

    Args:
        temperature: T > 0 of both softmaxes (1 on ImageNet, 4 on CIFAR in the paper).
        inter_weight: beta, the weight of the per-sample (inter-class) relation term (>= 0).
        intra_weight: gamma, the weight of the per-class (intra-class) relation term (>= 0).
        weight: multiplier of this term in the total loss (>= 0).
        name: key of this term in the distiller's output dict (default ``"dist"``).
    """

    temperature: float = 1.0
    inter_weight: float = 1.0
    intra_weight: float = 1.0
    weight: float = 1.0
    name: str = "dist"

    def __post_init__(self) -> None:
        check_positive("temperature", self.temperature)
        check_positive("inter_weight", self.inter_weight, allow_zero=True)
        check_positive("intra_weight", self.intra_weight, allow_zero=True)
        check_positive("weight", self.weight, allow_zero=True)


@register_loss(DIST)
class DISTTerm(LossTerm):
    """:class:`DIST` handler: softened probabilities of student and (weighted mean of) teachers."""

    def forward(self, ctx: DistillContext) -> torch.Tensor:
        t = self.config.temperature
        s = ctx.student_logits.flatten(0, -2)  # (B*, C)
        p_s = torch.softmax(s / t, dim=-1)
        p_t = sum(w * torch.softmax(z.flatten(0, -2) / t, dim=-1)
                  for w, z in zip(ctx.teacher_weights, ctx.teacher_logits))
        return dist_loss(p_s, p_t, t, self.config.inter_weight, self.config.intra_weight)
