"""Channel importance criteria: a registry of pure scoring functions, one score per removable unit.

A group of coupled channels has ``n`` units (channels, heads). Every coupled weight tensor contributes a
matrix ``W`` of shape ``(n, k)`` (row ``u`` = the entries that unit ``u`` owns in that tensor, e.g. a
conv filter for output channels or a weight column for input channels) wrapped in a
:class:`CoupledTensor`. A criterion maps the list of coupled tensors to scores ``(n,)``; low = removed
first. Unless said otherwise a criterion scores each ``"weight"``/``"norm"`` tensor separately and the
group score is the **mean** over those tensors (``group_reduce``), as Torch-Pruning does by default;
biases and bare parameters (position embeddings) are not scored.

Register a criterion with ``@register_importance("name")`` on
``fn(tensors, *, reduce="mean", seed=0) -> Tensor``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from slimtorch.core.registry import Registry


@dataclass
class CoupledTensor:
    """One coupled tensor of a channel group.

    Attributes:
        values: ``(n_units, k)`` weight entries of each unit.
        role: ``"weight"``, ``"norm"`` (a BN/LN/GN scale), ``"bias"`` or ``"param"``.
        grads: per-calibration-batch gradients of the loss w.r.t. ``values``, each ``(n_units, k)``
            (empty unless a gradient criterion asked for them).
    """

    values: torch.Tensor
    role: str
    grads: list[torch.Tensor] = field(default_factory=list)


ImportanceFn = Callable[..., torch.Tensor]
IMPORTANCE: Registry[ImportanceFn] = Registry("importance")
#: Criteria that need gradients from calibration batches (``data=`` must be given).
NEEDS_GRADIENTS: set[str] = set()
SCORED_ROLES = ("weight", "norm")


def register_importance(name: str, needs_gradients: bool = False) -> Callable[[ImportanceFn], ImportanceFn]:
    """Register ``fn(tensors: Sequence[CoupledTensor], *, reduce: str, seed: int) -> Tensor (n,)``."""

    def deco(fn: ImportanceFn) -> ImportanceFn:
        IMPORTANCE.register(name, fn)
        if needs_gradients:
            NEEDS_GRADIENTS.add(name.lower())
        return fn

    return deco


def group_reduce(per_tensor: Sequence[torch.Tensor], reduce: str = "mean") -> torch.Tensor:
    """Combine per-tensor scores ``[(n,), ...]`` into one score per unit: ``"mean"`` or ``"sum"``."""
    if not per_tensor:
        raise ValueError("no coupled tensor to score")
    s = torch.stack([p.double() for p in per_tensor])
    return s.mean(0) if reduce == "mean" else s.sum(0)


def scored(tensors: Sequence[CoupledTensor]) -> list[CoupledTensor]:
    """The tensors a weight criterion scores: weights and norm scales (biases only if nothing else)."""
    return [t for t in tensors if t.role in SCORED_ROLES] or list(tensors)


def l1_scores(w: torch.Tensor) -> torch.Tensor:
    """``s_u = sum_j |W_uj|`` (Li et al. 2017, "Pruning Filters for Efficient ConvNets")."""
    return w.abs().sum(1)


def l2_scores(w: torch.Tensor) -> torch.Tensor:
    """``s_u = sqrt(sum_j W_uj^2)``."""
    return w.pow(2).sum(1).sqrt()


def fpgm_scores(w: torch.Tensor) -> torch.Tensor:
    """FPGM (He et al. 2019): ``s_u = sum_v ||W_u - W_v||_2``.

    The unit closest to the geometric median of all units (smallest summed distance) is the most
    replaceable by the others, so it is removed first.
    """
    return torch.cdist(w.double()[None], w.double()[None])[0].sum(1)


def lamp_scores(w: torch.Tensor) -> torch.Tensor:
    """LAMP (Lee et al. 2021) on unit norms: ``s_u = ||W_u||^2 / sum_{v: ||W_v|| >= ||W_u||} ||W_v||^2``.

    The denominator sums the squared norms of all units at least as large as ``u``, which makes
    scores comparable across layers (the largest unit of every layer scores 1).
    """
    sq = w.double().pow(2).sum(1)
    order = torch.argsort(sq)  # ascending
    suffix = torch.flip(torch.cumsum(torch.flip(sq[order], [0]), 0), [0])  # sum of sq[v] for ranks >= r
    out = torch.empty_like(sq)
    out[order] = sq[order] / suffix.clamp_min(torch.finfo(torch.float64).tiny)
    return out


def taylor_scores(w: torch.Tensor, grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """First-order Taylor (Molchanov et al. 2019): ``s_u = sum_b sum_j |W_uj * dL_b/dW_uj|``."""
    if not grads:
        raise ValueError("taylor importance needs gradients: pass calibration batches as data=")
    return sum((w * g).abs().sum(1) for g in grads)  # type: ignore[return-value]


@register_importance("l1")
def l1_importance(tensors: Sequence[CoupledTensor], *, reduce: str = "mean", seed: int = 0) -> torch.Tensor:
    """Mean over coupled weight tensors of the L1 norm of each unit's entries."""
    return group_reduce([l1_scores(t.values) for t in scored(tensors)], reduce)


@register_importance("l2")
def l2_importance(tensors: Sequence[CoupledTensor], *, reduce: str = "mean", seed: int = 0) -> torch.Tensor:
    """Mean over coupled weight tensors of the L2 norm of each unit's entries."""
    return group_reduce([l2_scores(t.values) for t in scored(tensors)], reduce)


@register_importance("bn_scale")
def bn_scale_importance(
    tensors: Sequence[CoupledTensor], *, reduce: str = "mean", seed: int = 0
) -> torch.Tensor:
    """Network slimming (Liu et al. 2017): ``s_u = |gamma_u|``, the normalization layer's scale.

    Averaged over the group's BN/LN/GN scales; a group without a normalization layer falls back to L1.
    """
    norms = [t for t in tensors if t.role == "norm"]
    if not norms:
        return l1_importance(tensors, reduce=reduce)
    return group_reduce([t.values.abs().sum(1) for t in norms], reduce)


@register_importance("taylor", needs_gradients=True)
def taylor_importance(
    tensors: Sequence[CoupledTensor], *, reduce: str = "mean", seed: int = 0
) -> torch.Tensor:
    """Mean over coupled weight tensors of ``sum_b |w * dL_b/dw|`` summed over each unit's entries."""
    return group_reduce([taylor_scores(t.values, t.grads) for t in scored(tensors)], reduce)


@register_importance("fpgm")
def fpgm_importance(tensors: Sequence[CoupledTensor], *, reduce: str = "mean", seed: int = 0) -> torch.Tensor:
    """Mean over coupled weight tensors of the FPGM distance sum."""
    return group_reduce([fpgm_scores(t.values) for t in scored(tensors)], reduce)


@register_importance("lamp")
def lamp_importance(tensors: Sequence[CoupledTensor], *, reduce: str = "mean", seed: int = 0) -> torch.Tensor:
    """Mean over coupled weight tensors of the LAMP score of each unit's norm."""
    return group_reduce([lamp_scores(t.values) for t in scored(tensors)], reduce)


@register_importance("random")
def random_importance(
    tensors: Sequence[CoupledTensor], *, reduce: str = "mean", seed: int = 0
) -> torch.Tensor:
    """Uniform random scores (a baseline), reproducible through ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(tensors[0].values.shape[0], generator=g, dtype=torch.float64)
