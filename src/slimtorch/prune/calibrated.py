"""One-shot pruning from calibration activations, layer by layer: the shared config and driver of
SparseGPT (:mod:`slimtorch.prune.sparsegpt`) and Wanda (:mod:`slimtorch.prune.wanda`).

Both prune every selected ``nn.Linear`` of a model to a sparsity pattern, unstructured (a fraction
``sparsity`` of each layer) or N:M (``n`` weights kept in every ``m`` consecutive inputs, e.g. 2:4), from
statistics of the layer's inputs ``X`` on calibration batches. They run block by block
(:func:`slimtorch.core.blockwise.calibrate_blockwise`): a transformer block's layers are pruned from
the inputs produced by the already-pruned previous blocks, as in both papers.

The result is the library's ordinary masks (:func:`slimtorch.prune.masks.apply_mask_`): fine-tuning
keeps the zeros, :func:`~slimtorch.prune.masks.make_permanent_` bakes them in, :func:`save_sparse`
stores the CSR form.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimtorch.core.blockwise import calibrate_blockwise, calibration_inputs
from slimtorch.core.config import Config, check_range
from slimtorch.core.errors import SlimtorchError
from slimtorch.core.selection import FilterFn, display_name
from slimtorch.prune.masks import apply_mask_, get_mask, select_layers
from slimtorch.prune.nm import _check_nm_args
from slimtorch.prune.pruner import _report, _snapshot
from slimtorch.prune.report import PruneReport
from slimtorch.prune.schedules import OneShot, Schedule


@dataclass
class CalibratedPruning(Config):
    """Options shared by SparseGPT and Wanda.

    Give either ``sparsity`` (unstructured; default 0.5) or ``n`` and ``m`` (N:M: keep ``n`` of every ``m``
    consecutive input weights of each output row; ``n < m``).

    Args:
        sparsity: fraction of each selected layer's weights set to zero, in [0, 1).
        n, m: N:M pattern (both or neither).
        sequential: prune one transformer block at a time on the pruned previous blocks' outputs; False:
            all layers from passes of the dense model.
        include / exclude: fnmatch patterns on layer names (default: every ``nn.Linear``).
        filter_fn: extra predicate ``filter_fn(module, fqn) -> bool``.
    """

    sparsity: float | None = None
    n: int | None = None
    m: int | None = None
    sequential: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    filter_fn: FilterFn | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        name = type(self).__name__
        if (self.n is None) != (self.m is None):
            raise ValueError(f"{name}: give both n and m for N:M sparsity (e.g. n=2, m=4), got n={self.n}, m={self.m}")
        if self.n is not None:
            _check_nm_args(self.n, self.m)
            if self.sparsity is not None and abs(self.sparsity - (1 - self.n / self.m)) > 1e-9:
                raise ValueError(f"{name}: sparsity={self.sparsity} contradicts n:m = {self.n}:{self.m} "
                                 f"(sparsity {1 - self.n / self.m}); give one of them")
            self.sparsity = None
        else:
            if self.sparsity is None:
                self.sparsity = 0.5
            check_range("sparsity", self.sparsity, 0, 1, hi_open=True)
        self.include, self.exclude = tuple(self.include), tuple(self.exclude)

    @property
    def target(self) -> float:
        """The sparsity every selected layer ends with (``1 - n/m`` for N:M)."""
        return 1 - self.n / self.m if self.n is not None else float(self.sparsity)

    @property
    def nm(self) -> tuple[int, int] | None:
        """``(n, m)`` for N:M sparsity, else None."""
        return None if self.n is None else (self.n, self.m)

    @property
    def active_schedule(self) -> Schedule:
        return OneShot()

    trains_during_pruning = False

    def select(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """The selected ``nn.Linear`` layers; a model with none, or an input size ``m`` does not divide, raise."""
        name = type(self).__name__
        if not any(isinstance(mod, nn.Linear) for mod in model.modules()):
            kinds = sorted({type(mod).__name__ for mod in model.modules() if any(mod.parameters(recurse=False))})
            raise SlimtorchError(f"{name} prunes nn.Linear layers; {type(model).__name__} has none "
                                 f"(its layers with weights: {kinds}). Use Magnitude or NM for other layer types")
        layers = select_layers(model, self.include, self.exclude, self.filter_fn, types=(nn.Linear,))
        if self.m is not None:
            for n, mod in layers:
                if mod.in_features % self.m:
                    raise SlimtorchError(f"{name} {self.n}:{self.m}: layer {display_name(n)!r} has "
                                         f"{mod.in_features} input features, not a multiple of m={self.m}; "
                                         "exclude it (exclude=[...])")
        return layers


#: ``prune_layer(weight (out, in), stats, config) -> (new weight, keep-mask, details)``.
LayerPruneFn = Callable[[torch.Tensor, Any, Any], tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]


def set_weight_and_mask_(module: nn.Module, weight: torch.Tensor, mask: torch.Tensor) -> None:
    """Write ``weight`` into the layer (under an existing mask too) and apply ``mask`` (narrowing any old one)."""
    with torch.no_grad():
        if get_mask(module) is not None:
            module.parametrizations.weight.original.copy_(weight)  # type: ignore[union-attr]
        else:
            module.weight.copy_(weight)
    apply_mask_(module, mask)


def run_calibrated_pruning(
    model: nn.Module,
    config: CalibratedPruning,
    collect: Callable[[dict[str, nn.Module], Callable[..., Any]], dict[str, Any]],
    prune_layer: LayerPruneFn,
    example_inputs: Any = None,
    data: Any = None,
) -> PruneReport:
    """The ``prune_`` handler body: select, calibrate block by block, prune each layer, report.

    Args:
        collect: ``collect(layers, run) -> {fqn: stats}``: hook the layers, ``run()`` the calibration data.
        prune_layer: the method's per-layer math.
    """
    kind = type(config).__name__
    layers = config.select(model)
    batches = calibration_inputs(data, kind)
    before = _snapshot(model, layers, example_inputs)
    details: dict[str, dict[str, Any]] = {}
    was_training = model.training
    model.eval()

    def step(sub: dict[str, nn.Module], run: Callable[..., Any]) -> None:
        stats = collect(sub, run)
        for name, mod in sub.items():
            w, mask, info = prune_layer(mod.weight.detach().float(), stats[name], config)
            set_weight_and_mask_(mod, w.to(mod.weight.dtype), mask)
            details[name] = info

    try:
        bw = calibrate_blockwise(model, dict(layers), batches, step, sequential=config.sequential, desc=kind)
    finally:
        model.train(was_training)
    extra = {"target_sparsity": config.target, "pattern": "unstructured" if config.nm is None else
             f"{config.n}:{config.m}", "calibration": bw.to_dict(), "layers": details,
             "calib_batches": len(batches)}
    return _report(model, layers, before, kind.lower(), example_inputs, extra)


def row_prune_count(cols: int, sparsity: float) -> int:
    """Weights removed per output row at ``sparsity`` (``int(cols * sparsity)``, as both reference codes)."""
    return int(cols * sparsity)


def lowest_per_row(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask removing the ``k`` lowest scores of each row (ties: lower column first)."""
    mask = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        idx = torch.argsort(scores, dim=1, stable=True)[:, :k]
        mask.scatter_(1, idx, False)
    return mask


def nm_keep(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask with the ``n`` highest scores of every ``m`` consecutive columns of each row."""
    rows, cols = scores.shape
    grouped = scores.reshape(rows, cols // m, m)
    keep = torch.zeros_like(grouped, dtype=torch.bool)
    keep.scatter_(-1, grouped.topk(n, dim=-1).indices, True)
    return keep.reshape(rows, cols)
