"""Wanda: pruning by weights and activations (Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning
Approach for Large Language Models", ICLR 2024, arXiv 2306.11695).

For a linear layer with weight ``W`` (out, in) and calibration inputs ``X`` (n samples, in), the score of
a weight is its magnitude times the L2 norm of its input feature over all calibration tokens:

    S_ij = |W_ij| * ||X_j||_2

Weights are compared **per output row** by default (the paper's "per output" comparison group, its best on
LLaMA: section 5 / table 6 ablation): each row loses its ``int(in * sparsity)`` lowest-scoring weights;
``comparison="layer"`` ranks the whole layer at once (``int(out * in * sparsity)`` lowest scores). On this
repository's small char GPT the per-layer group was the better one (bench/RESULTS.md, llm_sparse), on the Llama
benchmark per row; both are offered. For N:M sparsity each group of ``m`` consecutive inputs of a row keeps its
``n`` highest scores (the group is fixed by the pattern). The remaining weights are not updated (no
reconstruction), which is what makes Wanda one forward pass per block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimtorch.core.blockwise import observe_inputs, sample_matrix
from slimtorch.prune.api import register_pruner
from slimtorch.prune.calibrated import (
    CalibratedPruning,
    lowest_per_row,
    nm_keep,
    row_prune_count,
    run_calibrated_pruning,
)
from slimtorch.prune.report import PruneReport


@dataclass
class Wanda(CalibratedPruning):
    """Wanda one-shot pruning (module docstring): ``Wanda(sparsity=0.5)`` or ``Wanda(n=2, m=4)``.

    Args:
        comparison: ``"row"`` (each output row loses the same number of weights; the paper's default) or
            ``"layer"`` (the lowest scores of the whole layer); unstructured sparsity only.

    Other options: see :class:`~slimtorch.prune.calibrated.CalibratedPruning`.
    """

    comparison: str = "row"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.comparison not in ("row", "layer"):
            raise ValueError(f"Wanda: comparison must be 'row' or 'layer', got {self.comparison!r}")
        if self.comparison == "layer" and self.n is not None:
            raise ValueError(f"Wanda: comparison='layer' is for unstructured sparsity; an {self.n}:{self.m} "
                             "pattern already fixes the group (m consecutive inputs of a row)")


def wanda_scores(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """``S_ij = |W_ij| ||X_j||_2``: ``weight`` (out, in), ``input_norm`` (in,)."""
    return weight.abs() * input_norm.reshape(1, -1)


def wanda_mask(weight: torch.Tensor, input_norm: torch.Tensor, sparsity: float | None = None,
               nm: tuple[int, int] | None = None, comparison: str = "row") -> torch.Tensor:
    """Keep-mask of ``weight`` (out, in): the lowest scores of each row pruned (or N:M per row);
    ``comparison="layer"``: the lowest ``int(out * in * sparsity)`` scores of the whole layer."""
    scores = wanda_scores(weight, input_norm)
    if nm is not None:
        return nm_keep(scores, *nm)
    if comparison == "layer":
        flat = scores.reshape(1, -1)
        return lowest_per_row(flat, row_prune_count(flat.shape[1], float(sparsity))).reshape(scores.shape)
    return lowest_per_row(scores, row_prune_count(weight.shape[1], float(sparsity)))


def input_norms(layers: dict[str, nn.Module], run: Callable[..., Any]) -> dict[str, torch.Tensor]:
    """``||X_j||_2`` over every calibration token, per input feature of each layer (float64 sums)."""
    sq = {n: torch.zeros(m.in_features, dtype=torch.float64) for n, m in layers.items()}

    def observe(name: str, x: torch.Tensor) -> None:
        sq[name] += sample_matrix(x).to(torch.float64).pow(2).sum(0)

    observe_inputs(layers, run, observe)
    return {n: s.sqrt().to(torch.float32) for n, s in sq.items()}


def _prune_layer(weight: torch.Tensor, norm: torch.Tensor, config: Wanda
                 ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    mask = wanda_mask(weight, norm, config.sparsity, config.nm, config.comparison)
    return weight, mask, {"sparsity": 1 - mask.float().mean().item()}


@register_pruner(Wanda, name="wanda")
def wanda_(model: nn.Module, config: Wanda, example_inputs: Any = None, data: Any = None) -> PruneReport:
    """``prune_(model, Wanda(...), data=calib)``: prune every selected Linear, block by block."""
    return run_calibrated_pruning(model, config, input_norms, _prune_layer, example_inputs, data)
