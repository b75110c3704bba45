"""Canonical Huffman coding: round trips, optimality bound, known code, corrupt streams, fuzzing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slimtorch.share import huffman


def _entropy(symbols: np.ndarray) -> float:
    p = np.bincount(symbols) / symbols.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def test_textbook_code_lengths():
    # CLRS 16.3: a:45 b:13 c:12 d:16 e:9 f:5 -> a 1 bit, b c d 3 bits, e f 4 bits.
    assert huffman.code_lengths(np.array([45, 13, 12, 16, 9, 5])).tolist() == [1, 3, 3, 3, 4, 4]


def test_canonical_codes_are_prefix_free_and_complete():
    lengths = huffman.code_lengths(np.array([45, 13, 12, 16, 9, 5, 0, 1]))
    codes, *_ = huffman._canonical(lengths)
    words = [format(int(c), f"0{int(l)}b") for c, l in zip(codes, lengths) if l]
    assert len(set(words)) == len(words)
    assert not any(a != b and b.startswith(a) for a in words for b in words)
    assert sum(2.0 ** -int(l) for l in lengths if l) == 1.0  # Kraft equality: a full tree
    assert lengths[6] == 0  # unused symbol gets no code


@pytest.mark.parametrize("kind", ["uniform", "geometric", "zipf", "two", "one"])
def test_round_trip_and_entropy_bound(kind):
    rng = np.random.default_rng(0)
    n = 20_000
    symbols = {
        "uniform": lambda: rng.integers(0, 32, n),
        "geometric": lambda: rng.geometric(0.3, n) - 1,
        "zipf": lambda: rng.zipf(1.3, n) % 500,
        "two": lambda: (rng.random(n) < 0.01).astype(np.int64),
        "one": lambda: np.full(n, 7),
    }[kind]()
    buf = huffman.pack(symbols)
    np.testing.assert_array_equal(huffman.unpack(buf), symbols)
    lengths = huffman.code_lengths(np.bincount(symbols))
    avg = float(lengths[symbols].astype(np.float64).mean())
    h = _entropy(symbols)
    if kind == "one":
        assert avg == 1.0  # a one-symbol alphabet still spends one bit per symbol
    else:
        assert h <= avg < h + 1
    assert len(buf) == huffman.packed_size(symbols)


def test_a_million_symbols():
    rng = np.random.default_rng(1)
    symbols = rng.geometric(0.15, 1_000_000) - 1
    buf = huffman.pack(symbols)
    np.testing.assert_array_equal(huffman.unpack(buf), symbols)
    assert len(buf) * 8 < _entropy(symbols) * symbols.size * 1.02 + 8 * 1024


def test_empty_stream():
    assert huffman.unpack(huffman.pack(np.zeros(0, dtype=np.int64))).size == 0


def test_corrupt_streams():
    buf = huffman.pack(np.arange(100) % 7)
    with pytest.raises(huffman.CorruptStreamError, match="shorter than its 8-byte head"):
        huffman.unpack(buf[:5])
    with pytest.raises(huffman.CorruptStreamError, match="ends early"):
        huffman.unpack(buf[:-20])
    with pytest.raises(huffman.CorruptStreamError, match="100 symbols cannot fit in 2 bytes"):
        huffman.unpack(buf[: 8 + 7 + 2])
    with pytest.raises(huffman.CorruptStreamError, match="table of 7 bytes runs past"):
        huffman.unpack(buf[:12])
    bad_table = bytearray(buf)
    bad_table[8:15] = bytes([1, 1, 1, 1, 1, 1, 1])
    with pytest.raises(huffman.CorruptStreamError, match="Kraft"):
        huffman.unpack(bytes(bad_table))
    with pytest.raises(huffman.CorruptStreamError, match="exceeds 48"):
        huffman.decode(b"\x00", np.array([60, 1]), 1)
    with pytest.raises(ValueError, match="has no code"):
        huffman.encode(np.array([2]), np.array([1, 1, 0]))


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_unpack_raises_only_corrupt_stream_error(data):
    try:
        out = huffman.unpack(data)
    except huffman.CorruptStreamError:
        return
    assert out.ndim == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), max_size=300))
def test_fuzz_round_trip(symbols):
    arr = np.array(symbols, dtype=np.int64)
    np.testing.assert_array_equal(huffman.unpack(huffman.pack(arr)), arr)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 80), st.lists(st.integers(0, 7), min_size=1, max_size=12), st.binary(max_size=40))
def test_fuzz_decoder_with_plausible_tables(n, lengths, payload):
    # A well-formed head and table with random code bits reaches deep into the decoder.
    import struct

    buf = struct.pack("<II", n, len(lengths)) + bytes(lengths) + payload
    try:
        out = huffman.unpack(buf)
    except huffman.CorruptStreamError:
        return
    assert out.shape == (n,)
    assert ((out >= 0) & (out < len(lengths))).all()
    assert all(lengths[s] > 0 for s in out.tolist())
