"""Bit packing of low-bit codes."""

from __future__ import annotations

import pytest
import torch

from slimtorch.quant.packing import pack_bits, packed_nbytes, unpack_bits


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [1, 7, 1001])
def test_round_trip_and_size(bits, n):
    codes = torch.randint(0, 1 << bits, (n,))
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_nbytes(n, bits) == (n * bits + 7) // 8
    assert torch.equal(unpack_bits(packed, bits, n), codes.to(torch.int32))


def test_known_layout_is_little_endian():
    # codes 1, 2 at 4 bits -> byte 0x21. 3-bit codes 1, 2, 3 -> stream (LSB first) 100 010 110:
    # byte 0 = bits 1,0,0,0,1,0,1,1 = 0b11010001, byte 1 = bit 0 of stream position 8 = 0.
    assert pack_bits(torch.tensor([1, 2]), 4).tolist() == [0x21]
    assert pack_bits(torch.tensor([1, 2, 3]), 3).tolist() == [0b11010001, 0]
    assert pack_bits(torch.tensor([7, 7, 7]), 3).tolist() == [0xFF, 0b1]


def test_out_of_range_codes_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 15\] for 4-bit packing, got \[0, 16\]"):
        pack_bits(torch.tensor([0, 16]), 4)
