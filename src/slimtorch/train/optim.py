"""Optimizers and learning-rate schedules by name (registries, so a new one is one function)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from slimtorch.core.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")
SCHEDULES: Registry = Registry("schedule")


@OPTIMIZERS.register("sgd")
def _sgd(params: Iterable[nn.Parameter], lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)


@OPTIMIZERS.register("adam")
def _adam(params: Iterable[nn.Parameter], lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def _adamw(params: Iterable[nn.Parameter], lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


@SCHEDULES.register("constant")
def _constant(step: int, total: int, warmup: int) -> float:
    return _warm(step, warmup) if step < warmup else 1.0


@SCHEDULES.register("cosine")
def _cosine(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then lr * (1 + cos(pi * t)) / 2 with t the fraction of post-warm-up steps done."""
    if step < warmup:
        return _warm(step, warmup)
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


@SCHEDULES.register("step")
def _step(step: int, total: int, warmup: int) -> float:
    """x0.1 at 50% and again at 75% of the steps (the CIFAR ResNet recipe of He et al.)."""
    if step < warmup:
        return _warm(step, warmup)
    return 0.1 ** ((step >= 0.5 * total) + (step >= 0.75 * total))


def _warm(step: int, warmup: int) -> float:
    return (step + 1) / warmup


def build_optimizer(optimizer: str | torch.optim.Optimizer, params: list[nn.Parameter], lr: float, momentum: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    """An optimizer by name, or the given instance unchanged."""
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    return OPTIMIZERS.get(optimizer)(params, lr, momentum, weight_decay)


def build_schedule(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int,
                   warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR multiplying each group's base lr by the named schedule's factor."""
    fn = SCHEDULES.get(schedule)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: fn(s, total_steps, warmup_steps))
