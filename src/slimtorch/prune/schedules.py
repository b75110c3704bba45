"""When to prune how much: one-shot, iterative (Han et al. 2015) and gradual AGP (Zhu & Gupta 2017).

A schedule maps a final sparsity ``s_f`` and a time index ``t`` to the sparsity to prune to at ``t``.
What ``t`` counts depends on the schedule: nothing (one-shot), the round (iterative), the optimizer
step (AGP). The masks are applied by :class:`slimtorch.prune.MaskPruner`; these classes are pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from slimtorch.core.config import Config, check_choice, check_range


@dataclass
class Schedule(Config):
    """Base class of pruning schedules (use :class:`OneShot`, :class:`Iterative` or :class:`AGP`)."""

    #: Whether the schedule interleaves pruning with training (then ``prune_`` needs ``data``).
    trains: ClassVar[bool] = False

    def sparsity_at(self, final: float, t: int) -> float:
        """Sparsity to prune to at time ``t`` for a target of ``final``."""
        raise NotImplementedError


@dataclass
class OneShot(Schedule):
    """Prune to the final sparsity at once (fine-tune afterwards if you like)."""

    def sparsity_at(self, final: float, t: int = 0) -> float:
        return final


def iterative_sparsity(final: float, round_: int, rounds: int, spacing: str = "geometric") -> float:
    """Sparsity after round ``round_`` (1-based) of ``rounds``.

    ``geometric``: every round removes the same fraction of the weights still alive,
    ``s_k = 1 - (1 - s_f)^(k / R)`` (e.g. 0.9 in 2 rounds: 0.684, 0.9).
    ``linear``: ``s_k = s_f * k / R``.
    """
    k = min(max(round_, 0), rounds)
    if spacing == "geometric":
        return 1.0 - (1.0 - final) ** (k / rounds)
    return final * k / rounds


@dataclass
class Iterative(Schedule):
    """Han et al. 2015: prune -> fine-tune -> prune more, ``rounds`` times.

    Args:
        rounds: number of prune + fine-tune rounds (the last one reaches the final sparsity).
        epochs: fine-tune epochs after each round when ``prune_`` drives ``slimtorch.train.fit``.
        spacing: how sparsity grows over rounds (see :func:`iterative_sparsity`).
        finetune: extra keyword arguments for ``slimtorch.train.fit`` (``lr``, ``optimizer``, ...).
    """

    trains: ClassVar[bool] = True

    rounds: int = 3
    epochs: int = 1
    spacing: str = "geometric"
    finetune: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_int("rounds", self.rounds, 1)
        _check_int("epochs", self.epochs, 0)
        check_choice("spacing", self.spacing, ["geometric", "linear"])

    def sparsity_at(self, final: float, t: int) -> float:
        return iterative_sparsity(final, t, self.rounds, self.spacing)


def agp_sparsity(
    t: int, initial: float, final: float, start_step: int, num_prunes: int, frequency: int
) -> float:
    """Zhu & Gupta 2017, eq. (1): ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3``.

    The sparsity changes only at pruning steps ``t0, t0 + dt, ..., t0 + n*dt``; between them it holds
    the value of the last pruning step. Before ``t0`` nothing is pruned (0.0); after the last step it
    stays at ``s_f``.

    Args:
        t: current step.
        initial: ``s_i``, the sparsity of the first pruning step.
        final: ``s_f``.
        start_step: ``t0``.
        num_prunes: ``n``, number of pruning steps after ``t0``.
        frequency: ``dt``, steps between pruning steps.
    """
    if t < start_step:
        return 0.0
    k = min((t - start_step) // frequency, num_prunes)  # index of the last pruning step reached
    return final + (initial - final) * (1.0 - k / num_prunes) ** 3


@dataclass
class AGP(Schedule):
    """Automated gradual pruning (Zhu & Gupta 2017), driven by the optimizer step count.

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))^3`` for ``t = t0, t0 + dt, ..., t0 + n*dt``:
    prunes fast while many redundant weights remain and slowly near the target.

    Args:
        initial_sparsity: ``s_i`` at step ``t0`` (capped at a layer's own target).
        start_step: ``t0``.
        frequency: ``dt``, optimizer steps between two pruning steps.
        num_prunes: ``n``. ``None``: chosen when training starts so pruning ends at
            ``ramp_fraction`` of the total steps (the rest of training recovers accuracy).
        ramp_fraction: see ``num_prunes``.
        epochs: training epochs when ``prune_`` drives ``slimtorch.train.fit``.
        finetune: extra keyword arguments for ``slimtorch.train.fit``.
    """

    trains: ClassVar[bool] = True

    initial_sparsity: float = 0.0
    start_step: int = 0
    frequency: int = 100
    num_prunes: int | None = None
    ramp_fraction: float = 0.75
    epochs: int = 1
    finetune: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_range("initial_sparsity", self.initial_sparsity, 0, 1, hi_open=True)
        _check_int("start_step", self.start_step, 0)
        _check_int("frequency", self.frequency, 1)
        if self.num_prunes is not None:
            _check_int("num_prunes", self.num_prunes, 1)
        check_range("ramp_fraction", self.ramp_fraction, 0, 1, lo_open=True)
        _check_int("epochs", self.epochs, 1)

    def resolved(self, total_steps: int) -> AGP:
        """A copy with ``num_prunes`` fixed for a run of ``total_steps`` optimizer steps."""
        if self.num_prunes is not None:
            return self
        ramp = int(total_steps * self.ramp_fraction) - self.start_step
        return self.replace(num_prunes=max(1, ramp // self.frequency))

    @property
    def end_step(self) -> int:
        """``t0 + n * dt``: the step at which the final sparsity is reached."""
        if self.num_prunes is None:
            raise ValueError("AGP.num_prunes is None: call .resolved(total_steps) first")
        return self.start_step + self.num_prunes * self.frequency

    def is_pruning_step(self, t: int) -> bool:
        """Whether the sparsity changes at step ``t``."""
        return self.start_step <= t <= self.end_step and (t - self.start_step) % self.frequency == 0

    def sparsity_at(self, final: float, t: int) -> float:
        if self.num_prunes is None:
            raise ValueError(
                "AGP.num_prunes is None and no training run fixed it; give num_prunes=... or let "
                "slimtorch.train.fit drive the schedule"
            )
        return agp_sparsity(
            t, min(self.initial_sparsity, final), final, self.start_step, self.num_prunes, self.frequency
        )


def _check_int(name: str, value: Any, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value!r}")
