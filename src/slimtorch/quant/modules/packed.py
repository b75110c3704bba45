"""Weight-only quantized Linear / Conv2d whose weights are stored as packed low-bit integer codes.

The module keeps only what a deployment file would hold: the codes packed ``bits`` per weight
(:mod:`slimtorch.quant.packing`), one float32 scale and one 8-bit zero point per (output row, group),
and the float bias. The float weight is rebuilt on the fly in every forward,
``W = s (q - z)`` (:class:`~slimtorch.quant.groupwise.GroupCodes`), so the model's buffers, state dict
and saved file really are about ``bits / 32`` of the float model plus the scales.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from slimtorch.core.registry import TypeRegistry
from slimtorch.quant import primitives as P
from slimtorch.quant.groupwise import GroupCodes
from slimtorch.quant.packing import pack_bits, unpack_bits


class PackedWeightMixin:
    """Shared storage of packed codes; subclasses call :meth:`_init_codes` and use :attr:`weight`."""

    bits: int
    group_size: int
    symmetric: bool
    weight_shape: tuple[int, ...]

    def _init_codes(self, codes: GroupCodes, weight_shape: tuple[int, ...]) -> None:
        self.bits = codes.bits
        self.group_size = codes.group_size
        self.symmetric = codes.symmetric
        self.weight_shape = tuple(weight_shape)
        qmin, _ = P.qrange(codes.bits, signed=codes.symmetric)
        # Signed codes are shifted to [0, 2^b) for packing; the shift is undone in unpack.
        unsigned = codes.codes.to(torch.int32) - qmin
        self.register_buffer("qweight", pack_bits(unsigned, codes.bits))  # (ceil(numel*bits/8),) uint8
        self.register_buffer("scale", codes.scale.to(torch.float32).contiguous())  # (out, groups)
        self.register_buffer("zero_point", codes.zero_point.to(P.storage_dtype(8, codes.symmetric)))

    def group_codes(self) -> GroupCodes:
        """The stored codes unpacked to an (out, fan_in) :class:`GroupCodes`."""
        qmin, _ = P.qrange(self.bits, signed=self.symmetric)
        numel = math.prod(self.weight_shape)
        q = unpack_bits(self.qweight, self.bits, numel) + qmin  # (numel,) int32
        codes = q.view(self.weight_shape[0], -1).to(P.storage_dtype(self.bits, self.symmetric))
        return GroupCodes(
            codes, self.scale, self.zero_point.to(torch.int32), self.bits, self.symmetric, self.group_size
        )

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized float weight in its original shape (rebuilt on each access)."""
        return self.group_codes().dequantize().view(self.weight_shape)

    def storage_bytes(self) -> int:
        """Bytes of the quantized form: packed codes, scales, zero points and bias."""
        return sum(b.numel() * b.element_size() for b in (self.qweight, self.scale, self.zero_point)) + (
            0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        )


class WeightOnlyLinear(PackedWeightMixin, nn.Module):
    """``y = x W^T + b`` with ``W`` dequantized from packed ``bits``-bit codes.

    Args:
        codes: the quantized weight, (out_features, in_features).
        bias: float bias (out_features,) or None.
    """

    def __init__(self, codes: GroupCodes, bias: torch.Tensor | None) -> None:
        super().__init__()
        out_f, in_f = codes.codes.shape
        self.in_features, self.out_features = in_f, out_f
        self._init_codes(codes, (out_f, in_f))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    @classmethod
    def from_float(cls, linear: nn.Linear, codes: GroupCodes) -> WeightOnlyLinear:
        return cls(codes, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        return F.linear(x, self.weight.to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
            f"group_size={self.group_size}, symmetric={self.symmetric}, bias={self.bias is not None}"
        )


class WeightOnlyConv2d(PackedWeightMixin, nn.Module):
    """2-D convolution with its weight dequantized from packed codes (fan_in = in/groups * kh * kw).

    Args:
        conv: the float convolution whose hyper-parameters are copied (zero padding only).
        codes: its quantized weight as (out_channels, fan_in).
    """

    def __init__(self, conv: nn.Conv2d, codes: GroupCodes) -> None:
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ValueError(f"weight-only Conv2d supports padding_mode='zeros', got {conv.padding_mode!r}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        self._init_codes(codes, tuple(conv.weight.shape))
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())

    @classmethod
    def from_float(cls, conv: nn.Conv2d, codes: GroupCodes) -> WeightOnlyConv2d:
        return cls(conv, codes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, O, H', W')
        return F.conv2d(
            x, self.weight.to(x.dtype), self.bias, self.stride, self.padding, self.dilation, self.groups
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"bits={self.bits}, group_size={self.group_size}, symmetric={self.symmetric}"
        )


#: Float layer type -> weight-only quantized type (a new layer type is one entry here).
WEIGHT_ONLY_MODULES: TypeRegistry[type[nn.Module]] = TypeRegistry("weight-only layer form")
WEIGHT_ONLY_MODULES.register(nn.Linear, WeightOnlyLinear)
WEIGHT_ONLY_MODULES.register(nn.Conv2d, WeightOnlyConv2d)


def flat_weight(module: nn.Module) -> torch.Tensor:
    """A Linear/Conv weight as the (out, fan_in) matrix the group codes are defined on."""
    return module.weight.detach().reshape(module.weight.shape[0], -1)
