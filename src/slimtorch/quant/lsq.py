"""Learned Step Size Quantization (LSQ).

Esser, McKinstry, Bablani, Appuswamy, Modha, "Learned Step Size Quantization", ICLR 2020
(arXiv 1902.08153).

The step size (scale) ``s`` of a quantizer is a trained parameter. The forward pass is the usual
fake quantization ``x_hat = s * clamp(round(x / s), -Qn, Qp)`` (zero point 0); with the straight-through
estimator for ``round`` the gradient w.r.t. ``s`` is (eq. 3)

    d x_hat / d s = -x/s + round(x/s)   if -Qn < x/s < Qp
                  = -Qn                 if x/s <= -Qn
                  =  Qp                 if x/s >= Qp

and LSQ multiplies it by the gradient scale ``g = 1 / sqrt(N * Qp)`` (N: number of elements the scale
quantizes, i.e. weights per channel or activation features per sample) so the step-size updates have
the same relative size as the weight updates (section 2.2). The step size is initialised to
``2 mean(|x|) / sqrt(Qp)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from slimtorch.quant import primitives as P


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """``x`` in the forward pass; the gradient is multiplied by ``g`` in the backward pass."""
    return (x - x * g).detach() + x * g


def lsq_grad_scale_factor(numel: int, qmax: int) -> float:
    """``g = 1 / sqrt(N * Qp)`` (Esser et al. 2020, section 2.2)."""
    return 1.0 / math.sqrt(numel * qmax)


def lsq_init_scale(x: torch.Tensor, qmax: int, axis: int | None = None) -> torch.Tensor:
    """``2 mean(|x|) / sqrt(Qp)``, per tensor or per slice along ``axis``."""
    if axis is None:
        m = x.detach().abs().mean()
    else:
        m = x.detach().abs().movedim(axis, 0).reshape(x.shape[axis], -1).mean(1)
    return (2 * m / math.sqrt(qmax)).clamp_min(P.MIN_SCALE)


def lsq_fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    bits: int,
    signed: bool,
    *,
    axis: int | None = None,
    numel: int | None = None,
) -> torch.Tensor:
    """LSQ fake quantization: :func:`~slimtorch.quant.primitives.fake_quantize` with zero point 0 and the
    step size's gradient scaled by ``1/sqrt(N Qp)``.

    Args:
        x: tensor to quantize.
        scale: step size(s): scalar, or (x.shape[axis],) per channel.
        bits: 2..8; signed: signed grid ``[-2^(b-1), 2^(b-1)-1]`` or unsigned ``[0, 2^b-1]``.
        axis: channel axis of per-channel scales.
        numel: N of the gradient scale; defaults to the elements per scale (``x.numel() / scale.numel()``).
    """
    _, qmax = P.qrange(bits, signed)
    n = numel if numel is not None else max(1, x.numel() // max(1, scale.numel()))
    s = grad_scale(scale, lsq_grad_scale_factor(n, qmax))
    zero = torch.zeros(s.shape, dtype=torch.int32)
    return P.fake_quantize(x, s, zero, bits, signed, axis=axis)


class LSQQuantizer(nn.Module):
    """A fake quantizer with a learned step size (LSQ), per tensor or per channel.

    The scale is initialised lazily from the first tensor seen (``2 mean|x| / sqrt(Qp)``). For
    activations (``per_sample=True``) ``N`` of the gradient scale counts the features of one sample,
    as in the paper; for weights it counts the weights sharing a scale.

    Args:
        bits: 2..8.
        signed: signed grid, or ``None`` to decide from the first tensor (unsigned if it has no
            negative values, e.g. after a ReLU).
        axis: channel axis for per-channel scales (weights: 0); None for one scale.
        per_sample: ``N`` counts one sample's elements (activations) instead of all elements.
    """

    def __init__(
        self, bits: int = 8, signed: bool | None = True, axis: int | None = None, per_sample: bool = False
    ) -> None:
        super().__init__()
        P.check_bits(bits)
        self.bits, self.axis, self.per_sample = bits, axis, per_sample
        self.signed = signed
        self.scale = nn.Parameter(torch.ones(()))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set the sign mode (if undecided) and the LSQ initial step size from ``x``."""
        if self.signed is None:
            self.signed = bool((x < 0).any())
        _, qmax = P.qrange(self.bits, self.signed)
        self.scale = nn.Parameter(lsq_init_scale(x, qmax, self.axis).to(x.dtype))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self.initialize(x)
        numel = None
        if self.per_sample and x.dim() > 1:
            numel = x[0].numel()
        return lsq_fake_quantize(x, self.scale, self.bits, bool(self.signed), axis=self.axis, numel=numel)

    def zero_point(self) -> torch.Tensor:
        """The (fixed) zero point: 0 per scale."""
        return torch.zeros(self.scale.shape, dtype=torch.int32)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}, axis={self.axis}"
