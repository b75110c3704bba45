"""MSE-clipped round to nearest: per group, the clipped grid with the least squared rounding error.

The min-max grid of RTN spends its levels on the extreme weights. Clipping the range to ``c`` times its
ends trades a larger error on the few clipped weights for a finer step on all the others. Per
(output row, group) of the flat weight ``W`` (out, fan_in) this picks, from a grid of ratios
``c`` in ``[c_min, 1]``,

    c* = argmin_c  || W_g - Q(W_g; c lo_g, c hi_g) ||^2          lo_g, hi_g = min, max of the group

where ``Q(w; lo, hi)`` rounds to nearest on the grid :func:`~slimtorch.quant.primitives.choose_qparams`
builds for the range ``[lo, hi]`` (symmetric grids use ``c max|w|``). This is the "MSE" range setting
of Nagel et al., "A White Paper on Neural Network Quantization" (2021, arXiv 2106.08295), section 3.5,
the grid-search form of the clipping analysed by Banner, Nahshan, Soudry, "Post training 4-bit
quantization of convolutional networks for rapid-deployment" (ACIQ, NeurIPS 2019).

``c = 1`` is in the grid and ties keep the larger ratio, so every group's error is at most RTN's (and
equal where clipping does not help). No data is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimtorch.core.config import check_positive, check_range
from slimtorch.quant import primitives as P
from slimtorch.quant.algorithms.rounding import Rounding, register_rounding, round_layers
from slimtorch.quant.groupwise import GroupCodes


@dataclass
class MSEClip(Rounding):
    """MSE-clipped RTN (the module docstring): ``WeightOnly(bits=3, rounding=MSEClip())`` or ``method="mse"``.

    Args:
        grid: number of clipping ratios tried, evenly spaced from ``min_ratio`` to 1 (both included).
        min_ratio: the smallest ratio tried, in (0, 1].
    """

    grid: int = 100
    min_ratio: float = 0.5

    def __post_init__(self) -> None:
        check_positive("grid", self.grid)
        check_range("min_ratio", self.min_ratio, 0.0, 1.0, lo_open=True)

    def ratios(self) -> torch.Tensor:
        """The ratios tried, from 1 down to ``min_ratio`` (1 first: ties keep the min-max grid)."""
        if self.grid == 1:
            return torch.ones(1)
        return torch.linspace(1.0, self.min_ratio, self.grid)


def mse_clip_codes(
    w: torch.Tensor, bits: int, group_size: int, symmetric: bool, ratios: torch.Tensor
) -> GroupCodes:
    """Codes of ``w`` (out, fan_in) on the per-(row, group) clipped grid of least squared error.

    Args:
        w: the flat weight.
        bits: code width.
        group_size: inputs per group (must divide ``fan_in``).
        symmetric: signed symmetric codes or unsigned asymmetric ones.
        ratios: (k,) clipping ratios to try, in order; the first of equal errors wins.
    """
    lo, hi = P.reduce_minmax(w, axis=1, group_size=group_size)  # (out, groups)
    best_err = torch.full_like(lo, float("inf"))
    best_scale = best_zero = None
    for c in ratios.tolist():
        scale, zero = P.choose_qparams(c * lo, c * hi, bits, symmetric=symmetric, signed=symmetric)
        codes = GroupCodes.from_params(w, scale, zero, bits, symmetric, group_size)
        err = (codes.dequantize() - w).pow(2).reshape(*lo.shape, group_size).sum(-1)  # (out, groups)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = scale if best_scale is None else torch.where(better, scale, best_scale)
        best_zero = zero if best_zero is None else torch.where(better, zero, best_zero)
    return GroupCodes.from_params(w, best_scale, best_zero, bits, symmetric, group_size)


@register_rounding("mse", MSEClip)
def mse_clip_(
    model: nn.Module, layers: dict[str, nn.Module], config: Any, batches: list[tuple[torch.Tensor, ...]]
) -> dict[str, dict[str, Any]]:
    """MSE-clipped RTN on every layer, independently."""
    ratios = config.rounding.ratios()
    return round_layers(
        model, layers, config,
        lambda w, g: mse_clip_codes(w, config.bits, g, config.symmetric, ratios),
    )
