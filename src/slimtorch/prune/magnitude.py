"""Unstructured magnitude pruning (Han et al. 2015, "Learning both Weights and Connections").

Each selected weight ``w`` gets a score; the lowest-scoring fraction is masked to zero.

* ``criterion="magnitude"``: ``score = |w|``.
* ``criterion="std"``: ``score = |w| / sigma_l`` with ``sigma_l`` the std of layer ``l``'s dense weights
  (recorded at the first pruning). Han et al. prune ``|w| < q * sigma_l`` with one quality parameter
  ``q`` for all layers; here ``q`` is solved for the requested sparsity and reported as the threshold.
* ``scope="global"``: one threshold over every selected layer (layers end with different sparsities);
  ``scope="layer"``: each layer pruned to the target on its own.

Per-layer ``overrides`` (fnmatch pattern -> sparsity) prune those layers to their own target, outside
the global pool. Exactly ``round(s * n)`` weights are pruned; ties go to the lower flat index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimtorch.core.config import Config, check_choice, check_range
from slimtorch.core.registry import Registry
from slimtorch.core.selection import FilterFn, check_overrides, override_for, unused_overrides
from slimtorch.prune.api import register_pruner
from slimtorch.prune.masks import reference_std, select_layers
from slimtorch.prune.pruner import run_mask_pruning
from slimtorch.prune.schedules import OneShot, Schedule

#: ``criterion(weight, ref_std) -> scores`` of the same shape; higher = more important.
CRITERIA: Registry[Callable[[torch.Tensor, float], torch.Tensor]] = Registry("magnitude criterion")


@CRITERIA.register("magnitude")
def magnitude_scores(weight: torch.Tensor, ref_std: float = 1.0) -> torch.Tensor:
    """``|w|``."""
    return weight.detach().abs()


@CRITERIA.register("std")
def std_scores(weight: torch.Tensor, ref_std: float) -> torch.Tensor:
    """``|w| / sigma``: a threshold ``q`` on it is Han et al.'s ``|w| < q * sigma``."""
    return weight.detach().abs() / max(ref_std, torch.finfo(torch.float32).tiny)


def num_to_prune(numel: int, sparsity: float) -> int:
    """``round(sparsity * numel)``, the number of elements a sparsity target removes."""
    return int(round(sparsity * numel))


def lowest_k_mask(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
    """Keep-mask removing the ``k`` lowest scores (ties: lower flat index first) and the threshold.

    Returns:
        ``(mask, threshold)``: bool mask of ``scores``' shape (True = keep) and the largest removed
        score (``0.0`` when ``k == 0``).
    """
    flat = scores.reshape(-1)
    mask = torch.ones_like(flat, dtype=torch.bool)
    if k <= 0:
        return mask.view_as(scores), 0.0
    order = torch.argsort(flat, stable=True)[:k]
    mask[order] = False
    return mask.view_as(scores), float(flat[order[-1]])


def layer_masks(
    scores: dict[str, torch.Tensor], sparsity: dict[str, float]
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Each layer pruned on its own to ``sparsity[name]``: ``(masks, thresholds)``."""
    masks, thresholds = {}, {}
    for name, s in scores.items():
        masks[name], thresholds[name] = lowest_k_mask(s, num_to_prune(s.numel(), sparsity[name]))
    return masks, thresholds


def global_masks(scores: dict[str, torch.Tensor], sparsity: float) -> tuple[dict[str, torch.Tensor], float]:
    """One threshold over all layers: the ``round(s * N)`` lowest of all ``N`` scores are removed."""
    if not scores:
        return {}, 0.0
    flat = torch.cat([s.reshape(-1).float() for s in scores.values()])
    mask, threshold = lowest_k_mask(flat, num_to_prune(flat.numel(), sparsity))
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = mask[start : start + s.numel()].view_as(s)
        start += s.numel()
    return out, threshold


@dataclass
class Magnitude(Config):
    """Unstructured magnitude pruning (Han et al. 2015) with an optional schedule.

    Args:
        sparsity: fraction of the selected weights to zero, in [0, 1).
        scope: ``"global"`` (one threshold over all selected layers) or ``"layer"`` (each layer to
            ``sparsity``).
        criterion: ``"magnitude"`` (|w|) or ``"std"`` (|w| / layer std, Han et al.'s rule).
        schedule: ``OneShot()`` (default), ``Iterative(...)`` or ``AGP(...)``.
        include: fnmatch patterns of module names to prune (empty: every Linear/Conv).
        exclude: patterns removed from the selection (default: none, the classifier is pruned too).
        overrides: pattern -> sparsity for layers pruned to their own target (outside the global pool).
        filter_fn: extra predicate ``filter_fn(module, fqn) -> bool``.
    """

    sparsity: float = 0.5
    scope: str = "global"
    criterion: str = "magnitude"
    schedule: Schedule | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    overrides: dict[str, float] = field(default_factory=dict)
    filter_fn: FilterFn | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_range("sparsity", self.sparsity, 0, 1, hi_open=True)
        check_choice("scope", self.scope, ["global", "layer"])
        check_choice("criterion", self.criterion, CRITERIA.names())
        check_overrides(self.overrides)
        if self.schedule is not None and not isinstance(self.schedule, Schedule):
            raise ValueError(f"schedule must be OneShot(), Iterative(...) or AGP(...), got {self.schedule!r}")
        self.include, self.exclude = tuple(self.include), tuple(self.exclude)

    @property
    def active_schedule(self) -> Schedule:
        """The schedule, ``OneShot()`` when none was given."""
        return self.schedule or OneShot()

    @property
    def trains_during_pruning(self) -> bool:
        """Whether ``prune_`` trains the model itself (iterative and AGP schedules)."""
        return self.active_schedule.trains

    def select(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """The layers this config prunes; an override pattern that matches nothing is an error."""
        layers = select_layers(model, self.include, self.exclude, self.filter_fn)
        unused = unused_overrides([n for n, _ in layers], self.overrides)
        if unused:
            raise ValueError(
                f"overrides {unused} match no selected layer; selected: {[n for n, _ in layers]}"
            )
        return layers

    def target_for(self, name: str) -> float:
        """Final sparsity of layer ``name`` (its override, else ``sparsity``)."""
        o = override_for(name, self.overrides)
        return self.sparsity if o is None else o

    def compute_masks(
        self, layers: list[tuple[str, nn.Module]], t: int, schedule: Schedule | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Keep-masks at time ``t`` of ``schedule`` (default: this config's) and the thresholds used."""
        schedule = schedule or self.active_schedule
        score_fn = CRITERIA.get(self.criterion)
        scores = {n: score_fn(m.weight, reference_std(m)) for n, m in layers}
        own = {n for n, _ in layers if self.scope == "layer" or override_for(n, self.overrides) is not None}
        masks, thresholds = layer_masks(
            {n: scores[n] for n in own}, {n: schedule.sparsity_at(self.target_for(n), t) for n in own}
        )
        extra: dict[str, Any] = {"layer_thresholds": thresholds}
        pool = {n: s for n, s in scores.items() if n not in own}
        if pool:
            gmasks, threshold = global_masks(pool, schedule.sparsity_at(self.sparsity, t))
            masks.update(gmasks)
            extra["threshold"] = threshold
        return masks, extra


register_pruner(Magnitude, name="magnitude")(run_mask_pruning)
