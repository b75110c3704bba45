"""Mixed-precision weight quantization: per-layer sensitivity, then bit allocation under a size budget.

1. **Sensitivity** (the one-layer-at-a-time analysis of e.g. Dong et al. 2019, "HAWQ", measured
   directly instead of through Hessian traces): for every selected layer ``l`` and every candidate
   width ``b``, quantize only ``l`` to ``b`` bits (weight-only, round to nearest) and measure the
   change of the metric on the evaluation batches: ``delta_l(b) = loss(l at b) - loss(float)``
   (or the accuracy drop). The table is part of the result.
2. **Allocation** under the budget ``sum_l n_l b_l <= budget_bits * sum_l n_l`` (``n_l``: weights of
   layer ``l``; group scales cost the same at every width and are left out): start every layer at the
   lowest width and repeatedly apply the upgrade ``l: b -> b'`` (next wider width) with the largest
   sensitivity reduction per extra bit, ``(delta_l(b) - delta_l(b')) / (n_l (b' - b))``, that still
   fits. The most sensitive layers per weight therefore end up at the higher widths.
3. The layers are then quantized at their widths with the configured weight-only method
   (``"rtn"``, ``"gptq"`` or ``"adaround"``, see :mod:`slimtorch.quant.workflows.weight_only`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimtorch.core.config import Config, check_choice, check_positive
from slimtorch.core.errors import SlimtorchError
from slimtorch.quant.algorithms.rounding import ROUNDING, layer_group_size
from slimtorch.quant.api import QuantReport, quantize_, register_quantizer
from slimtorch.quant.calibration import iter_calibration
from slimtorch.quant.export.serialize import register_preparer
from slimtorch.quant.packing import packed_nbytes
from slimtorch.quant.primitives import check_bits
from slimtorch.quant.workflows.weight_only import WeightOnly, select_layers


@dataclass
class MixedPrecision(Config):
    """Weight-only mixed precision: per-layer widths chosen from sensitivity under a size budget.

    Args:
        widths: candidate bit widths (each 2-8).
        budget_bits: average bits per quantized weight allowed (e.g. 4.0); at least ``min(widths)``.
        group_size: weight-only group size (None: per output channel).
        method: weight-only method for the final quantization (``rtn``, ``gptq``, ``adaround``).
        metric: ``"loss"`` (cross-entropy increase) or ``"accuracy"`` (top-1 drop) for sensitivity.
        symmetric: symmetric codes.
        include / exclude: layer name patterns.
        num_batches: evaluation batches used for the sensitivity (None: all given).
    """

    widths: tuple[int, ...] = (2, 4, 8)
    budget_bits: float = 4.0
    group_size: int | None = 64
    method: str = "rtn"
    metric: str = "loss"
    symmetric: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    num_batches: int | None = None

    def __post_init__(self) -> None:
        self.widths = tuple(sorted(set(self.widths)))
        if not self.widths:
            raise ValueError("widths must name at least one bit width")
        for b in self.widths:
            check_bits(b, "widths")
        check_positive("budget_bits", self.budget_bits)
        if self.budget_bits < self.widths[0]:
            raise ValueError(
                f"budget_bits {self.budget_bits} is below the smallest width {self.widths[0]}: "
                "no allocation fits"
            )
        check_choice("method", self.method, ROUNDING.names())
        check_choice("metric", self.metric, ["loss", "accuracy"])
        if self.num_batches is not None:
            check_positive("num_batches", self.num_batches)
        self.include, self.exclude = tuple(self.include), tuple(self.exclude)


def allocate_bits(
    numels: dict[str, int],
    sensitivity: dict[str, dict[int, float]],
    widths: tuple[int, ...],
    budget_bits: float,
) -> dict[str, int]:
    """Greedy allocation (see the module docstring).

    Args:
        numels: weights per layer.
        sensitivity: ``layer -> {width: metric increase when only that layer is at that width}``.
        widths: candidate widths, ascending.
        budget_bits: allowed average bits per weight.

    Returns:
        ``layer -> width`` with ``sum n_l b_l <= budget_bits * sum n_l``.
    """
    widths = tuple(sorted(widths))
    budget = budget_bits * sum(numels.values())
    bits = {n: widths[0] for n in numels}
    used = sum(numels[n] * widths[0] for n in numels)
    if used > budget + 1e-9:
        raise ValueError(f"budget_bits {budget_bits} is below the smallest width {widths[0]}")
    while True:
        best, best_gain = None, -float("inf")
        for n, b in bits.items():
            i = widths.index(b)
            if i + 1 == len(widths):
                continue
            nb = widths[i + 1]
            cost = numels[n] * (nb - b)
            if used + cost > budget + 1e-9:
                continue
            gain = (sensitivity[n][b] - sensitivity[n][nb]) / cost
            if gain > best_gain:
                best, best_gain = (n, nb, cost), gain
        if best is None:
            return bits
        n, nb, cost = best
        bits[n] = nb
        used += cost


def _score(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], metric: str) -> float:
    """Mean cross-entropy (``loss``) or top-1 accuracy over the batches; (B, T, V) logits are flattened."""
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            out = model(x)
            out = out.reshape(-1, out.shape[-1])  # (B*T, V) for sequence models, (B, C) otherwise
            yy = y.reshape(-1)
            if metric == "loss":
                total += F.cross_entropy(out, yy, reduction="sum").item()
            else:
                total += (out.argmax(-1) == yy).sum().item()
            count += yy.numel()
    return total / max(count, 1)


def layer_sensitivity(
    model: nn.Module,
    layers: list[str],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    widths: tuple[int, ...],
    group_size: int | None,
    metric: str = "loss",
    symmetric: bool = False,
) -> tuple[float, dict[str, dict[int, float]]]:
    """The float metric and, per layer and width, the metric change when only that layer is quantized.

    Changes are signed so that larger is worse: loss increase, or accuracy decrease.

    Returns:
        ``(float_metric, {layer: {width: delta}})``.
    """
    base = _score(model, batches, metric)
    sign = 1.0 if metric == "loss" else -1.0
    table: dict[str, dict[int, float]] = {}
    for name in layers:
        table[name] = {}
        for b in widths:
            trial = copy.deepcopy(model)  # the float model is never touched
            quantize_(trial, WeightOnly(bits=b, group_size=group_size, symmetric=symmetric, include=(name,)))
            table[name][b] = sign * (_score(trial, batches, metric) - base)
    return base, table


def _eval_batches(
    calib_data: Iterable[Any] | None, model: nn.Module, num_batches: int | None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if calib_data is None:
        raise SlimtorchError(
            "MixedPrecision needs (inputs, targets) batches to measure sensitivity: "
            "quantize_(model, MixedPrecision(...), calib_data=loader)"
        )
    raw = []
    for i, batch in enumerate(calib_data):
        if num_batches is not None and i >= num_batches:
            break
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise SlimtorchError(
                f"MixedPrecision batch {i}: expected an (inputs, targets) pair to score the "
                f"model, got {type(batch).__name__}"
            )
        raw.append(batch)
    xs = list(iter_calibration([b[0] for b in raw], model))  # shape / NaN / empty checks, naming the batch
    return [(x, b[1]) for x, b in zip(xs, raw)]


@register_quantizer(MixedPrecision)
def mixed_precision_(
    model: nn.Module, config: MixedPrecision, calib_data: Iterable[Any] | None = None
) -> QuantReport:
    """Measure sensitivity, allocate widths under the budget and quantize the model in place.

    ``report.details`` holds ``bits`` (layer -> width), ``sensitivity`` (one row per layer: weights,
    allocated width and the metric change at every width), ``avg_bits``, ``budget_bits``,
    ``float_metric``, ``weight_bytes`` (packed codes + scales + zero points) and ``fp32_weight_bytes``.
    """
    batches = _eval_batches(calib_data, model, config.num_batches)
    probe = WeightOnly(
        bits=config.widths[0], group_size=config.group_size, include=config.include, exclude=config.exclude
    )
    selected, skipped = select_layers(model, probe)
    was_training = model.training
    model.eval()
    names = list(selected)
    numels = {n: selected[n].weight.numel() for n in names}
    base, table = layer_sensitivity(
        model, names, batches, config.widths, config.group_size, config.metric, config.symmetric
    )
    bits = allocate_bits(numels, table, config.widths, config.budget_bits)
    weight_bytes = 0
    for n in names:
        groups = numels[n] // layer_group_size(selected[n], n, config.group_size)
        weight_bytes += packed_nbytes(numels[n], bits[n]) + groups * 5  # fp32 scale + 8-bit zero point
    calib = [x for x, _ in batches]
    for b in config.widths:  # narrowest first; GPTQ/AdaRound then see the earlier layers already quantized
        chosen = tuple(n for n in names if bits[n] == b)
        if chosen:
            quantize_(
                model,
                WeightOnly(
                    bits=b,
                    group_size=config.group_size,
                    method=config.method,
                    symmetric=config.symmetric,
                    include=chosen,
                ),
                calib,
            )
    model.train(was_training)
    rows = [
        {
            "layer": n,
            "weights": numels[n],
            "bits": bits[n],
            **{f"delta_{b}bit": table[n][b] for b in config.widths},
        }
        for n in names
    ]
    total = sum(numels.values())
    return QuantReport(
        scheme="mixed_precision",
        quantized=names,
        skipped=skipped,
        details={
            "bits": bits,
            "sensitivity": rows,
            "metric": config.metric,
            "float_metric": base,
            "avg_bits": sum(numels[n] * bits[n] for n in names) / max(total, 1),
            "budget_bits": config.budget_bits,
            "weight_bytes": weight_bytes,
            "fp32_weight_bytes": 4 * total,
            "config": config.to_dict(),
        },
    )


@register_preparer(MixedPrecision)
def _prepare_mixed_precision(model: nn.Module, config: MixedPrecision) -> None:
    """Nothing to add: the packed layers (one width per layer) are rebuilt from the file's layer table."""
