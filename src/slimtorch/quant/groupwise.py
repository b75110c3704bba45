"""Integer weight codes with per-group scales and zero points (the storage form of low-bit weights).

A weight is viewed as a matrix ``(out, fan_in)`` (a conv's ``(out, in, kh, kw)`` is flattened to
``fan_in = in * kh * kw``) and split along ``fan_in`` into contiguous groups of ``group_size``
columns; each (row, group) has one scale ``s`` and zero point ``z`` (the per-group granularity of
:mod:`slimtorch.quant.primitives`, ``axis=1``):

    q = clamp(round(w / s) + z, qmin, qmax),    w_hat = s (q - z)

Symmetric codes are signed (``z = 0``), asymmetric ones unsigned. Round-to-nearest (RTN), GPTQ and
AdaRound all produce a :class:`GroupCodes`; they differ only in how they pick the integers ``q``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slimtorch.quant import primitives as P


def group_qparams(
    w: torch.Tensor, bits: int, group_size: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max scale and zero point of each (row, group) of ``w`` (out, fan_in).

    Returns:
        ``(scale, zero_point)``: float32 and int32, each (out, fan_in / group_size).
    """
    lo, hi = P.reduce_minmax(w, axis=1, group_size=group_size)  # (out, groups)
    return P.choose_qparams(lo, hi, bits, symmetric=symmetric, signed=symmetric)


def fake_quantize_columns(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, symmetric: bool
) -> torch.Tensor:
    """Round one column ``w`` (out,) with its rows' ``scale``/``zero`` (out,) and map it back to floats."""
    q = P.quantize_affine(w, scale, zero, bits, symmetric, axis=0)
    return P.dequantize_affine(q, scale, zero, axis=0, dtype=w.dtype)


@dataclass
class GroupCodes:
    """Integer codes of a weight matrix with per-(row, group) quantization parameters.

    Attributes:
        codes: (out, fan_in) int8 (symmetric) or uint8 (asymmetric) codes.
        scale: (out, fan_in / group_size) float32.
        zero_point: (out, fan_in / group_size) int32 (0 when symmetric).
        bits: code width, 2-8.
        symmetric: signed symmetric codes or unsigned asymmetric ones.
        group_size: input columns per group (``fan_in`` for one group per output row).
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    bits: int
    symmetric: bool
    group_size: int

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``s (q - z)`` as an (out, fan_in) float matrix."""
        return P.dequantize_affine(
            self.codes, self.scale, self.zero_point, axis=1, group_size=self.group_size, dtype=dtype
        )

    @classmethod
    def from_params(
        cls,
        w: torch.Tensor,
        scale: torch.Tensor,
        zero: torch.Tensor,
        bits: int,
        symmetric: bool,
        group_size: int,
    ) -> GroupCodes:
        """Round ``w`` (out, fan_in) to the nearest point of the grid ``scale``/``zero`` (out, groups)."""
        scale, zero = scale.to(torch.float32), zero.to(torch.int32)
        codes = P.quantize_affine(w, scale, zero, bits, symmetric, axis=1, group_size=group_size)
        return cls(codes, scale, zero, bits, symmetric, group_size)

    @classmethod
    def round_to_nearest(cls, w: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> GroupCodes:
        """RTN: min-max parameters per group, then round every weight independently."""
        scale, zero = group_qparams(w, bits, group_size, symmetric)
        return cls.from_params(w, scale, zero, bits, symmetric, group_size)
