"""N:M semi-structured sparsity (Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks"; NVIDIA
Ampere 2:4): in every group of ``m`` consecutive weights along the input dimension at most ``n`` are
nonzero. The ``n`` largest ``|w|`` of each group are kept.

Input dimension order: a ``Linear`` weight ``(out, in)`` is grouped along ``in``; a conv weight
``(out, in/groups, *kernel)`` is flattened to ``(out, in/groups * prod(kernel))`` in PyTorch's memory
order (input channel slowest, kernel column fastest) and grouped along that axis. (cuSPARSELt groups
convolutions along input channels in NHWC order; permute the weight first if you target it.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimtorch.core.config import Config
from slimtorch.core.selection import FilterFn, display_name
from slimtorch.prune.api import register_pruner
from slimtorch.prune.masks import select_layers
from slimtorch.prune.pruner import run_mask_pruning
from slimtorch.prune.schedules import OneShot, Schedule


def _grouped(weight: torch.Tensor, m: int, name: str = "weight") -> torch.Tensor:
    """``(out, groups, m)`` view of ``weight``'s input dimension in groups of ``m``."""
    w2 = weight.detach().reshape(weight.shape[0], -1)  # (out, in * prod(kernel))
    if w2.shape[1] % m:
        raise ValueError(
            f"N:M sparsity: {name} has {w2.shape[1]} input elements per output (in_features, or "
            f"in_channels/groups * kernel size), not a multiple of m={m}; exclude it (exclude=[...]) or "
            f"pick an m that divides {w2.shape[1]}"
        )
    return w2.reshape(w2.shape[0], -1, m)


def nm_mask(weight: torch.Tensor, n: int, m: int, name: str = "weight") -> torch.Tensor:
    """Keep-mask (``weight``'s shape) with the ``n`` largest ``|w|`` of every group of ``m`` inputs."""
    _check_nm_args(n, m)
    groups = _grouped(weight, m, name).abs()  # (out, G, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, groups.topk(n, dim=-1).indices, True)
    return keep.reshape(weight.shape)


def check_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """Whether every group of ``m`` consecutive input elements of ``weight`` has at most ``n`` nonzeros."""
    _check_nm_args(n, m)
    return bool(((_grouped(weight, m) != 0).sum(-1) <= n).all())


def _check_nm_args(n: Any, m: Any) -> None:
    for k, v in (("n", n), ("m", m)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"N:M sparsity: {k} must be an integer, got {v!r}")
    if n <= 0:
        raise ValueError(f"N:M sparsity: n must be >= 1 (weights kept per group), got n={n}")
    if n >= m:
        raise ValueError(f"N:M sparsity: n={n} must be < m={m} (keep n of every m weights)")


@dataclass
class NM(Config):
    """N:M sparsity: keep the ``n`` largest of every ``m`` consecutive input weights (one-shot).

    Args:
        n: weights kept per group, ``1 <= n < m``.
        m: group size along the input dimension (must divide every selected layer's input size).
        include: fnmatch patterns of module names to prune (empty: every Linear/Conv).
        exclude: patterns left dense (e.g. a first conv whose 1*5*5 inputs are not a multiple of m).
        filter_fn: extra predicate ``filter_fn(module, fqn) -> bool``.
    """

    n: int = 2
    m: int = 4
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    filter_fn: FilterFn | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check_nm_args(self.n, self.m)
        self.include, self.exclude = tuple(self.include), tuple(self.exclude)

    @property
    def sparsity(self) -> float:
        """``1 - n / m``."""
        return 1.0 - self.n / self.m

    @property
    def active_schedule(self) -> Schedule:
        return OneShot()

    trains_during_pruning = False

    def select(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """The selected layers; one whose input size ``m`` does not divide is an error naming it."""
        layers = select_layers(model, self.include, self.exclude, self.filter_fn)
        for name, module in layers:
            _grouped(module.weight, self.m, f"layer {display_name(name)!r} ({type(module).__name__})")
        return layers

    def compute_masks(
        self, layers: list[tuple[str, nn.Module]], t: int = 0, schedule: Schedule | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """N:M keep-masks (one-shot: ``t`` and ``schedule`` do not change them)."""
        masks = {n: nm_mask(m.weight, self.n, self.m, n) for n, m in layers}
        return masks, {"n": self.n, "m": self.m}


register_pruner(NM, name="nm")(run_mask_pruning)
