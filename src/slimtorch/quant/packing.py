"""Bit packing of low-bit integer codes into bytes, so a 4-bit weight really takes half a byte.

Codes of any width 1-8 are laid out as one little-endian bit stream: code ``i`` occupies bits
``[i*b, (i+1)*b)`` of the stream, bit ``k`` of the stream is bit ``k % 8`` of byte ``k // 8``.
"""

from __future__ import annotations

import torch


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative integer ``codes`` (any shape, values < 2**bits) into a flat uint8 tensor.

    Returns:
        (ceil(numel * bits / 8),) uint8.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in [1, 8], got {bits}")
    u = codes.reshape(-1).to(torch.int32)
    if u.numel() and (int(u.min()) < 0 or int(u.max()) >= 1 << bits):
        raise ValueError(
            f"codes must lie in [0, {(1 << bits) - 1}] for {bits}-bit packing, "
            f"got [{int(u.min())}, {int(u.max())}]"
        )
    if bits == 8:
        return u.to(torch.uint8)
    if 8 % bits == 0:  # 1, 2, 4 bits: whole codes per byte, no bit stream needed
        per = 8 // bits
        u = torch.cat([u, u.new_zeros((-u.numel()) % per)]).view(-1, per)  # (bytes, per)
        return (u << (torch.arange(per, dtype=torch.int32) * bits)).sum(1).to(torch.uint8)
    shifts = torch.arange(bits, dtype=torch.int32)
    stream = ((u.unsqueeze(1) >> shifts) & 1).reshape(-1)  # (numel * bits,) bits, LSB first
    pad = (-stream.numel()) % 8
    stream = torch.cat([stream, stream.new_zeros(pad)]).view(-1, 8)  # (bytes, 8)
    return (stream << torch.arange(8, dtype=torch.int32)).sum(1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``numel`` codes as a flat int32 tensor."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in [1, 8], got {bits}")
    if bits == 8:
        return packed[:numel].to(torch.int32)
    if 8 % bits == 0:
        per = 8 // bits
        p = packed.to(torch.int32).unsqueeze(1) >> (torch.arange(per, dtype=torch.int32) * bits)
        return (p & ((1 << bits) - 1)).reshape(-1)[:numel]
    stream = ((packed.to(torch.int32).unsqueeze(1) >> torch.arange(8, dtype=torch.int32)) & 1).reshape(-1)
    stream = stream[: numel * bits].view(numel, bits)  # (numel, bits)
    return (stream << torch.arange(bits, dtype=torch.int32)).sum(1, dtype=torch.int32)


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes :func:`pack_bits` uses for ``numel`` codes of ``bits`` bits."""
    return (numel * bits + 7) // 8
