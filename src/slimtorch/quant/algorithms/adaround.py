"""AdaRound: learn whether each weight rounds up or down by reconstructing the layer's output.

Nagel, Amjad, van Baalen, Louizos, Blankevoort, "Up or Down? Adaptive Rounding for Post-Training
Quantization", ICML 2020 (arXiv 2004.10568).

With the grid fixed (scale ``s`` and zero point ``z`` per group, from min-max as for RTN), every weight
is quantized to ``floor(w/s)`` or ``floor(w/s) + 1``. AdaRound relaxes that choice with a continuous
variable ``V`` per weight and the rectified sigmoid (eq. 23):

    h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1),        zeta = 1.1, gamma = -0.1
    W~   = s (clip(floor(W/s) + h(V) + z, qmin, qmax) - z)

and minimises, per layer on cached calibration inputs ``X`` and float outputs ``Y = W X`` (eq. 25),

    ||Y - W~ X||_F^2 / N  +  lambda * sum_ij (1 - |2 h(V_ij) - 1|^beta)

The regulariser (eq. 24) pushes every ``h`` to 0 or 1; ``beta`` is annealed from 20 (almost flat, the
rounding can still move) to 2 (strong push) after a warm-up of 20% of the iterations without it.
``V`` is initialised so that ``h(V) = w/s - floor(w/s)`` (the soft quantized weight starts at ``W``).
The final codes are ``floor(W/s) + [h(V) >= 0.5] + z``.

Inputs are taken from the model with all previous layers already quantized (the paper's asymmetric
reconstruction, eq. 25), targets from the float model, so later layers also correct earlier errors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from slimtorch.core.config import check_positive
from slimtorch.quant import primitives as P
from slimtorch.quant.algorithms.rounding import Rounding
from slimtorch.quant.groupwise import GroupCodes, group_qparams


@dataclass
class AdaRound(Rounding):
    """AdaRound rounding (the module docstring): ``WeightOnly(bits=4, rounding=AdaRound(iters=500))``.

    Args:
        iters: Adam steps per layer.
        lr: their learning rate.
        reg: the rounding regulariser weight lambda.
        batch: samples per step.
    """

    iters: int = 1000
    lr: float = 1e-2
    reg: float = 0.01
    batch: int = 32

    needs_data: ClassVar[bool] = True
    legacy_fields: ClassVar[dict[str, str]] = {
        "adaround_iters": "iters", "adaround_lr": "lr", "adaround_reg": "reg", "adaround_batch": "batch"
    }

    def __post_init__(self) -> None:
        check_positive("iters", self.iters)
        check_positive("lr", self.lr)
        check_positive("reg", self.reg, allow_zero=True)
        check_positive("batch", self.batch)

ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(v: torch.Tensor, zeta: float = ZETA, gamma: float = GAMMA) -> torch.Tensor:
    """``h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)`` (eq. 23)."""
    return torch.clamp(torch.sigmoid(v) * (zeta - gamma) + gamma, 0.0, 1.0)


def init_v(rest: torch.Tensor, zeta: float = ZETA, gamma: float = GAMMA) -> torch.Tensor:
    """``V`` such that ``h(V) = rest`` for ``rest = w/s - floor(w/s)`` in [0, 1) (inverts ``h``)."""
    p = (rest - gamma) / (zeta - gamma)  # in (0.09, 0.91): sigmoid is invertible there
    return torch.log(p / (1 - p))


def rounding_regularizer(v: torch.Tensor, beta: float) -> torch.Tensor:
    """``sum (1 - |2 h(V) - 1|^beta)`` (eq. 24): 0 when every ``h`` is 0 or 1."""
    return (1 - (2 * rectified_sigmoid(v) - 1).abs().pow(beta)).sum()


def beta_schedule(
    step: int, total: int, warmup: float = 0.2, start: float = 20.0, end: float = 2.0
) -> float | None:
    """Annealed ``beta``: ``None`` (no regulariser) during warm-up, then linear from ``start`` to ``end``."""
    warm = int(warmup * total)
    if step < warm:
        return None
    rel = (step - warm) / max(1, total - warm)
    return end + (start - end) * max(0.0, 1.0 - rel)


def soft_weight(
    w_floor: torch.Tensor, v: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int
) -> torch.Tensor:
    """``s (clip(floor(W/s) + h(V) + z, qmin, qmax) - z)``; all tensors (out, fan_in) or broadcastable."""
    return scale * (torch.clamp(w_floor + rectified_sigmoid(v) + zero, qmin, qmax) - zero)


@dataclass
class AdaRoundStats:
    """Reconstruction losses of one layer: RTN at the start, AdaRound (hard rounding) at the end."""

    rtn_loss: float
    final_loss: float
    flipped: float  # fraction of weights rounded differently from round-to-nearest


def adaround_weight(
    weight: torch.Tensor,
    layer_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    bits: int,
    group_size: int,
    symmetric: bool = False,
    iters: int = 1000,
    batch_size: int = 32,
    lr: float = 1e-2,
    reg_weight: float = 0.01,
    seed: int = 0,
) -> tuple[GroupCodes, AdaRoundStats]:
    """Learn the rounding of ``weight`` (out, fan_in) so ``layer_fn(x, w)`` reproduces ``targets``.

    Args:
        weight: (out, fan_in) float weight (a conv's weight flattened).
        layer_fn: ``layer_fn(x, w_flat) -> y``, the layer's forward with the given flat weight
            (the caller reshapes and adds the bias).
        inputs: (N, ...) cached layer inputs (from the partly quantized model).
        targets: (N, ...) float-model outputs of the layer.
        bits, group_size, symmetric: the grid (min-max per group, as RTN).
        iters: optimisation steps (Adam on ``V``); batch_size: samples per step.
        lr: Adam learning rate; reg_weight: ``lambda``.

    Returns:
        The codes and :class:`AdaRoundStats`.
    """
    w = weight.detach().float()
    scale, zero = group_qparams(w, bits, group_size, symmetric)  # (out, groups)
    s = scale.repeat_interleave(group_size, dim=1)  # (out, fan_in)
    z = zero.to(torch.float32).repeat_interleave(group_size, dim=1)
    qmin, qmax = P.qrange(bits, signed=symmetric)
    w_floor = torch.floor(w / s)
    v = init_v(w / s - w_floor).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = inputs.shape[0]

    def recon(w_hat: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        x, y = (inputs, targets) if idx is None else (inputs[idx], targets[idx])
        return (layer_fn(x, w_hat) - y).pow(2).flatten(1).sum(1).mean()  # mean over samples

    rtn = GroupCodes.round_to_nearest(w, bits, group_size, symmetric)
    with torch.no_grad():
        rtn_loss = _batched_loss(recon, rtn.dequantize(), n, batch_size)
    for step in range(iters):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        loss = recon(soft_weight(w_floor, v, s, z, qmin, qmax), idx)
        beta = beta_schedule(step, iters)
        if beta is not None:
            loss = loss + reg_weight * rounding_regularizer(v, beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        hard = torch.clamp(w_floor + (rectified_sigmoid(v) >= 0.5).float() + z, qmin, qmax)  # (out, fan_in)
        codes = GroupCodes(
            hard.to(P.storage_dtype(bits, symmetric)), scale, zero, bits, symmetric, group_size
        )
        final = _batched_loss(recon, codes.dequantize(), n, batch_size)
        flipped = (codes.codes != rtn.codes).float().mean().item()
    # Never return something worse than the rounding we started from.
    if not math.isfinite(final) or final > rtn_loss:
        return rtn, AdaRoundStats(rtn_loss, rtn_loss, 0.0)
    return codes, AdaRoundStats(rtn_loss, final, flipped)


def _batched_loss(recon: Callable[..., torch.Tensor], w_hat: torch.Tensor, n: int, batch_size: int) -> float:
    total = 0.0
    for i in range(0, n, batch_size * 4):
        idx = torch.arange(i, min(n, i + batch_size * 4))
        total += recon(w_hat, idx).item() * len(idx)
    return total / n
