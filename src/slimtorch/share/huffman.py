"""Canonical Huffman coding of integer symbol streams (numpy-vectorised).

Huffman 1952; Han et al. 2016 §4 code the cluster indices and the sparse-position gaps of each layer
with it and save 20-30% over fixed-width codes. A Huffman code gives symbol ``s`` with probability
``p_s`` a code of ``l_s`` bits; its average length ``L = sum_s p_s l_s`` satisfies ``H <= L < H + 1``
with ``H = -sum_s p_s log2 p_s`` the entropy.

The code is *canonical* (as in DEFLATE, RFC 1951 §3.2.2): only the code lengths are stored; codes are
assigned in order of (length, symbol), so the codes of one length are consecutive integers. That makes
the decoder table-free: left-justify the next ``Lmax`` bits of the stream to a number ``v``; the code
length is the smallest ``l`` whose block of codes ends above ``v``, found with one ``searchsorted``.

Encoding and decoding are vectorised over the whole stream. Decoding is sequential by nature (a code
starts where the previous one ends); we decode *every* bit position as if a code started there, then
follow the chain ``p -> p + len(p)`` from bit 0 by pointer doubling (``O(nbits log n)`` array work, no
per-symbol Python loop).

Stream layout written by :func:`pack` (all integers little-endian)::

    u32 n_symbols | u32 alphabet (A) | A x u8 code lengths | bit-packed codes, MSB first, zero-padded
"""

from __future__ import annotations

import heapq
import struct

import numpy as np

#: Longest code we produce or accept: codes are handled as uint64 and windows are shifted in uint64.
MAX_CODE_LENGTH = 48
_HEAD = struct.Struct("<II")


class CorruptStreamError(ValueError):
    """A coded stream or code-length table that cannot have been written by :func:`pack`."""


def code_lengths(freqs: np.ndarray) -> np.ndarray:
    """Huffman code lengths from symbol frequencies.

    Args:
        freqs: ``(A,)`` non-negative counts; symbols with count 0 get no code.

    Returns:
        ``(A,)`` uint8 code lengths (0 = unused). A single used symbol gets a 1-bit code.
    """
    freqs = np.asarray(freqs)
    if freqs.ndim != 1:
        raise ValueError(f"freqs must be 1-D, got shape {freqs.shape}")
    if (freqs < 0).any():
        raise ValueError("freqs must be non-negative")
    used = np.flatnonzero(freqs)
    lengths = np.zeros(freqs.shape[0], dtype=np.uint8)
    if used.size == 0:
        return lengths
    if used.size == 1:
        lengths[used[0]] = 1
        return lengths
    # Classic two-smallest merge. Nodes: leaves 0..m-1, internal m..2m-2; the counter breaks ties
    # deterministically. Depth of a leaf = its code length.
    m = used.size
    parent = np.zeros(2 * m - 1, dtype=np.int64)
    heap = [(int(freqs[s]), i, i) for i, s in enumerate(used)]
    heapq.heapify(heap)
    nxt = m
    while len(heap) > 1:
        f1, _, a = heapq.heappop(heap)
        f2, _, b = heapq.heappop(heap)
        parent[a] = parent[b] = nxt
        heapq.heappush(heap, (f1 + f2, nxt, nxt))
        nxt += 1
    # Internal nodes are created after their children, so one reverse pass gives every depth.
    depth = np.zeros(2 * m - 1, dtype=np.int64)
    for node in range(2 * m - 3, -1, -1):
        depth[node] = depth[parent[node]] + 1
    leaf_depth = depth[:m]
    if leaf_depth.max() > MAX_CODE_LENGTH:
        raise ValueError(f"Huffman code longer than {MAX_CODE_LENGTH} bits; the frequencies are too skewed")
    lengths[used] = leaf_depth
    return lengths


def _canonical(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Canonical codes plus the decoder tables.

    Returns:
        ``codes (A,) uint64``, ``first (Lmax+1,)`` first code of each length, ``count (Lmax+1,)`` codes
        per length, ``order`` symbols sorted by (length, symbol) restricted to used symbols.
    """
    lengths = lengths.astype(np.int64)
    lmax = int(lengths.max()) if lengths.size else 0
    count = np.bincount(lengths, minlength=lmax + 1)
    count[0] = 0
    first = np.zeros(lmax + 1, dtype=np.int64)
    code = 0
    for length in range(1, lmax + 1):  # RFC 1951: next_code[l] = (next_code[l-1] + count[l-1]) << 1
        code = (code + int(count[length - 1])) << 1
        first[length] = code
    used = np.flatnonzero(lengths)
    order = used[np.lexsort((used, lengths[used]))]
    codes = np.zeros(lengths.shape[0], dtype=np.uint64)
    # Rank of each symbol among the codes of its length.
    ls = lengths[order]
    starts = np.concatenate([[0], np.cumsum(count[1:])])[ls - 1] if order.size else ls
    rank = np.arange(order.size) - starts
    codes[order] = (first[ls] + rank).astype(np.uint64)
    return codes, first, count, order


def check_lengths(lengths: np.ndarray) -> None:
    """Raise :class:`CorruptStreamError` unless ``lengths`` describe a prefix code (Kraft sum <= 1)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size and lengths.max() > MAX_CODE_LENGTH:
        raise CorruptStreamError(f"code length {int(lengths.max())} exceeds {MAX_CODE_LENGTH}")
    used = lengths[lengths > 0]
    if used.size == 0:
        return
    lmax = int(used.max())
    # Kraft: sum 2^-l <= 1  <=>  sum 2^(lmax-l) <= 2^lmax (exact in Python ints).
    kraft = sum(int(c) << (lmax - length) for length, c in enumerate(np.bincount(used)) if c)
    if kraft > 1 << lmax:
        raise CorruptStreamError("code lengths violate the Kraft inequality (not a prefix code)")


def encode(symbols: np.ndarray, lengths: np.ndarray) -> bytes:
    """Bit-pack ``symbols`` with the canonical code given by ``lengths`` (MSB-first, zero padded).

    Args:
        symbols: ``(n,)`` integer symbols, each with a nonzero code length.
        lengths: ``(A,)`` code lengths from :func:`code_lengths`.
    """
    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
    if symbols.size == 0:
        return b""
    if symbols.min() < 0 or symbols.max() >= lengths.shape[0] or (lengths[symbols] == 0).any():
        raise ValueError("a symbol has no code (it was not counted when the code was built)")
    codes, *_ = _canonical(lengths)
    sym_len = lengths[symbols].astype(np.int64)  # (n,)
    sym_code = codes[symbols]  # (n,) uint64
    start = np.cumsum(sym_len) - sym_len  # first bit of each code
    total = int(start[-1] + sym_len[-1])
    bits = np.zeros(total, dtype=np.uint8)
    for j in range(int(sym_len.max())):  # one pass per bit of the longest code, vectorised over symbols
        has = sym_len > j
        shift = (sym_len[has] - 1 - j).astype(np.uint64)
        bits[start[has] + j] = ((sym_code[has] >> shift) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits).tobytes()


def _windows(raw: np.ndarray, width: int) -> np.ndarray:
    """For every bit position ``p`` of ``raw``, the ``width`` bits starting at ``p`` as an integer.

    Reads the 8 bytes starting at each byte as a big-endian word, shifts each word left by the bit
    offset inside its byte, keeps the top ``width`` bits (``width + 7 <= 64``). Bits past the end are 0.
    """
    nbytes = raw.size
    padded = np.concatenate([raw, np.zeros(8, dtype=np.uint8)])
    # (nbytes,) overlapping big-endian words, one per byte offset (a strided view, then one copy).
    words = np.ndarray((nbytes,), dtype=">u8", buffer=padded, strides=(1,)).astype(np.uint64)
    shifted = (words[:, None] << np.arange(8, dtype=np.uint64)[None, :]).reshape(-1)  # (nbits,)
    shifted >>= np.uint64(64 - width)
    return shifted.astype(np.int32 if width < 31 else np.int64)


def decode(data: bytes | np.ndarray, lengths: np.ndarray, n: int) -> np.ndarray:
    """Decode ``n`` symbols written by :func:`encode` with the same ``lengths``.

    Raises:
        CorruptStreamError: the bits do not decode to ``n`` valid codes within ``data``.
    """
    lengths = np.asarray(lengths)
    check_lengths(lengths)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n < 0:
        raise CorruptStreamError(f"negative symbol count {n}")
    if not (lengths > 0).any():
        raise CorruptStreamError(f"{n} symbols but an empty code table")
    raw = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    nbits = raw.size * 8
    if n > nbits:  # every code is at least one bit: bounds everything allocated below
        raise CorruptStreamError(f"{n} symbols cannot fit in {raw.size} bytes")
    codes, first, count, order = _canonical(lengths)
    lmax = first.size - 1
    v = _windows(raw, lmax)  # (nbits,) int64: the lmax bits starting at each bit position
    # Block of codes of length l, left-justified, ends at (first[l] + count[l]) << (lmax - l).
    ls = np.arange(1, lmax + 1)
    ends = ((first[1:] + count[1:]) << (lmax - ls)).astype(v.dtype)
    length_at = np.searchsorted(ends, v, side="right") + 1  # (nbits,) code length if a code starts at p
    valid = length_at <= lmax
    length_at[~valid] = 1
    # Symbol at p: order[offset[l] + (v >> (lmax - l)) - first[l]].
    offset = np.concatenate([[0], np.cumsum(count[1:])])
    rank = (v >> (lmax - length_at)) - first[length_at]
    idx = offset[length_at - 1] + rank
    valid &= (rank >= 0) & (idx < order.size)
    # Follow the chain p_0 = 0, p_{i+1} = p_i + len(p_i) by pointer doubling; `nbits` is an absorbing end.
    itype = np.int32 if nbits < 2**31 - 64 else np.int64  # halves the memory traffic of the gathers
    nxt = np.empty(nbits + 1, dtype=itype)
    np.add(np.arange(nbits, dtype=itype), length_at, out=nxt[:nbits], casting="unsafe")
    nxt[nbits] = nbits
    np.minimum(nxt, nbits, out=nxt)
    pos = np.zeros(1, dtype=itype)
    while pos.size < n:
        pos = np.concatenate([pos, nxt[pos]])
        nxt = nxt[nxt]
    pos = pos[:n]
    if pos[-1] >= nbits or not valid[pos].all():
        raise CorruptStreamError("bit stream ends early or holds an invalid code")
    if pos[-1] + length_at[pos[-1]] > nbits:
        raise CorruptStreamError("the last code runs past the end of the stream")
    return order[idx[pos]].astype(np.int64)


def pack(symbols: np.ndarray, alphabet: int | None = None) -> bytes:
    """Self-describing stream: symbol count, code-length table, coded bits (see module docstring).

    Args:
        symbols: ``(n,)`` non-negative integers.
        alphabet: table size ``A`` (default ``max(symbols) + 1``); symbols must be ``< A <= 2**24``.
    """
    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
    if symbols.size and symbols.min() < 0:
        raise ValueError("symbols must be non-negative")
    if alphabet is None:
        alphabet = int(symbols.max()) + 1 if symbols.size else 0
    if symbols.size and symbols.max() >= alphabet:
        raise ValueError(f"symbol {int(symbols.max())} outside the alphabet of {alphabet}")
    lengths = code_lengths(np.bincount(symbols, minlength=alphabet))
    return _HEAD.pack(symbols.size, alphabet) + lengths.tobytes() + encode(symbols, lengths)


def unpack(buf: bytes) -> np.ndarray:
    """Inverse of :func:`pack`; every declared size is checked against ``len(buf)`` before use.

    Raises:
        CorruptStreamError: truncated or inconsistent stream.
    """
    if len(buf) < _HEAD.size:
        raise CorruptStreamError(f"stream of {len(buf)} bytes is shorter than its {_HEAD.size}-byte head")
    n, alphabet = _HEAD.unpack_from(buf, 0)
    if _HEAD.size + alphabet > len(buf):
        raise CorruptStreamError(f"code-length table of {alphabet} bytes runs past the stream end")
    lengths = np.frombuffer(buf, dtype=np.uint8, count=alphabet, offset=_HEAD.size)
    return decode(np.frombuffer(buf, dtype=np.uint8, offset=_HEAD.size + alphabet), lengths, n)


def packed_size(symbols: np.ndarray, alphabet: int | None = None) -> int:
    """Bytes :func:`pack` would write, without building the bit stream."""
    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
    if alphabet is None:
        alphabet = int(symbols.max()) + 1 if symbols.size else 0
    freqs = np.bincount(symbols, minlength=alphabet)
    lengths = code_lengths(freqs)
    nbits = int((freqs * lengths.astype(np.int64)).sum())
    return _HEAD.size + alphabet + (nbits + 7) // 8
