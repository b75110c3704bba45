"""SmoothQuant: migrate activation outliers into the weights before W8A8 quantization (Xiao, Lin, Seznec,
Wu, Demouth, Han, "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language
Models", ICML 2023, arXiv 2211.10438).

LLM activations have a few input channels with very large magnitudes, which ruin a per-tensor int8 grid,
while weights are easy to quantize. For the Linear layers reading one input ``X`` (q/k/v after a norm;
gate/up of an MLP) with concatenated weights ``W`` (out, in), a per-input-channel factor

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)          (paper eq. 4; max|W_j| over the group's rows)

rescales ``X diag(s)^-1`` and ``diag(s) W`` (``Y = (X diag(s)^-1)(diag(s) W^T)``, exactly the same output).
``X / s`` is folded into the op that produced ``X``, a LayerNorm/RMSNorm (``gamma / s``, ``beta / s``) or a
Linear (rows and bias ``/ s``), so the model keeps its structure and its float outputs (up to float
error); a group whose input comes from anything else (an attention output, an activation product, a
residual sum) is left as it is and reported. It is a float pre-pass:

    quantize_(model, SmoothQuant(alpha=0.5), calib_data=calib)      # float, outputs unchanged
    quantize_(model, Int8Static(), calib_data=calib)                 # W8A8

``alpha`` is the migration strength in [0, 1] (0.5 in the paper for most models). ``alpha="auto"`` (or a
list of values) searches, per group, the value whose W8A8 simulation has the least output error on the
calibration tokens: ``|| Q_t(X / s) Q_c(W diag(s))^T - X W^T ||^2`` with ``Q_t`` symmetric per-tensor int8
for activations and ``Q_c`` symmetric per-output-channel int8 for weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimtorch.core.blockwise import (
    calibrate_blockwise,
    calibration_inputs,
    input_groups,
    observe_inputs,
    sample_matrix,
    subsample_rows,
)
from slimtorch.core.config import Config, check_positive, check_range
from slimtorch.core.errors import SlimtorchError
from slimtorch.core.selection import named_modules_matching
from slimtorch.quant.algorithms.awq import find_producer, fold_scale_
from slimtorch.quant.api import QuantReport, register_quantizer

#: The ``alpha`` grid searched by ``alpha="auto"``.
AUTO_ALPHAS = tuple(round(0.05 * i, 2) for i in range(4, 19))  # 0.2 .. 0.9


@dataclass
class SmoothQuant(Config):
    """SmoothQuant float pre-pass (module docstring): ``quantize_(model, SmoothQuant(alpha=0.5), calib_data=...)``.

    Args:
        alpha: migration strength in [0, 1]; ``"auto"`` searches :data:`AUTO_ALPHAS` per layer group; a
            list/tuple of values searches those.
        samples: calibration tokens kept for the ``alpha`` search (evenly spaced over all tokens).
        include / exclude: fnmatch patterns on Linear layer names.
        sequential: one transformer block at a time (peak memory: one block's activations).
    """

    alpha: float | str | tuple[float, ...] = 0.5
    samples: int = 2048
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    sequential: bool = True
    grid: tuple[float, ...] = field(init=False, repr=False, default=())

    def __post_init__(self) -> None:
        a = self.alpha
        if isinstance(a, str):
            if a != "auto":
                raise ValueError(f"alpha must be a number in [0, 1], 'auto' or a list of numbers, got {a!r}")
            self.grid = AUTO_ALPHAS
        elif isinstance(a, (list, tuple)):
            if not a:
                raise ValueError("alpha: the list of values to search is empty")
            for v in a:
                check_range("alpha", v, 0.0, 1.0)
            self.alpha = tuple(float(v) for v in a)
            self.grid = self.alpha
        else:
            check_range("alpha", a, 0.0, 1.0)
            self.grid = (float(a),)
        check_positive("samples", self.samples)
        self.include, self.exclude = tuple(self.include), tuple(self.exclude)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.pop("grid", None)
        return d


def smooth_scales(x_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`` (eq. 4), clamped to ``[1e-5, inf)``; 1 for dead channels."""
    s = x_absmax.clamp(min=1e-5).pow(alpha) / w_absmax.clamp(min=1e-5).pow(1 - alpha)
    s = s.clamp(min=1e-5)
    return torch.where((x_absmax == 0) | (w_absmax == 0), torch.ones_like(s), s)


def _int8_tensor(x: torch.Tensor) -> torch.Tensor:
    step = x.abs().max().clamp(min=1e-12) / 127
    return (x / step).round().clamp(-128, 127) * step


def _int8_rows(w: torch.Tensor) -> torch.Tensor:
    step = w.abs().amax(1, keepdim=True).clamp(min=1e-12) / 127
    return (w / step).round().clamp(-128, 127) * step


def w8a8_error(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor) -> float:
    """Output MSE of the W8A8 simulation after smoothing with ``s``: ``Q_t(X/s) Q_c(W s)^T`` vs ``X W^T``."""
    ref = x @ w.T
    return (_int8_tensor(x / s) @ _int8_rows(w * s).T - ref).pow(2).mean().item()


@register_quantizer(SmoothQuant)
def smoothquant_(model: nn.Module, config: SmoothQuant, calib_data: Iterable[Any] | None = None) -> QuantReport:
    """Smooth every foldable group of selected Linear layers in place (float; see the module docstring)."""
    layers = dict(named_modules_matching(model, (nn.Linear,), config.include, config.exclude))
    layers = {n: m for n, m in layers.items() if type(m) is nn.Linear}
    if not layers:
        raise SlimtorchError(f"SmoothQuant smooths nn.Linear layers; {type(model).__name__} has none selected "
                             f"(include={list(config.include)}, exclude={list(config.exclude)})")
    batches = calibration_inputs(calib_data, "SmoothQuant")
    details: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    was_training = model.training
    model.eval()

    def step(sub: dict[str, nn.Module], run: Callable[..., list[torch.Tensor]]) -> None:
        for group in input_groups(sub, run):
            mods = [sub[n] for n in group]
            prev = find_producer(model, mods[0], run)
            absmax = torch.zeros(mods[0].in_features)
            xs: list[torch.Tensor] = []

            def observe(_n: str, x: torch.Tensor, absmax: torch.Tensor = absmax, xs: list = xs) -> None:
                xm = sample_matrix(x).float()
                absmax.copy_(torch.maximum(absmax, xm.abs().amax(0)))
                if len(config.grid) > 1:
                    xs.append(xm)

            observe_inputs({group[0]: mods[0]}, run, observe)
            w = torch.cat([m.weight.detach().float() for m in mods])  # (sum out, in)
            w_absmax = w.abs().amax(0)
            alpha = config.grid[0]
            if len(config.grid) > 1:
                x = subsample_rows(torch.cat(xs), config.samples)
                errs = {a: w8a8_error(x, w, smooth_scales(absmax, w_absmax, a)) for a in config.grid}
                alpha = min(errs, key=errs.get)
            s = smooth_scales(absmax, w_absmax, alpha)
            how = fold_scale_(prev, mods, s, run)
            if how is None:
                for n in group:
                    skipped[n] = "input not produced by a norm or Linear that can absorb 1/s (left unsmoothed)"
                continue
            for n in group:
                details[n] = {"alpha": alpha, "folded_into": how, "act_absmax": absmax.max().item(),
                              "act_absmax_smoothed": (absmax / s).max().item()}

    try:
        calibrate_blockwise(model, layers, batches, step, sequential=config.sequential, desc="SmoothQuant")
    finally:
        model.train(was_training)
    return QuantReport(scheme="smoothquant", quantized=[], skipped=skipped,
                       details={"config": config.to_dict(), "layers": details, "calib_batches": len(batches)})
