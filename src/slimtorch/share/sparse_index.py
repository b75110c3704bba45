"""Relative (gap) encoding of sparse positions with filler entries.

Han et al. 2016 §2 store a pruned layer in compressed sparse form with the *index difference* between
consecutive nonzeros instead of absolute positions, in ``b`` bits (8 for conv, 5 for fc in the paper).
A difference larger than the largest ``b``-bit number ``G = 2^b - 1`` is split by inserting *filler*
entries: an entry ``G`` positions further on whose weight is zero (their Fig. 2).

Here positions are flat indices into the weight tensor. With ``p_{-1} = -1`` every gap
``g_i = p_i - p_{i-1}`` is ``>= 1``; a gap ``g > G`` becomes ``floor((g - 1) / G)`` fillers of gap ``G``
followed by the remainder ``g - f G`` (in ``[1, G]``), so every stored gap fits in ``b`` bits.
"""

from __future__ import annotations

import numpy as np


def max_gap(index_bits: int) -> int:
    """Largest gap one entry can hold, ``2^b - 1``."""
    if not 1 <= index_bits <= 30:
        raise ValueError(f"index_bits must be in [1, 30], got {index_bits}")
    return (1 << index_bits) - 1


def to_gaps(positions: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Gap-encode strictly increasing flat positions, inserting fillers where a gap is too long.

    Args:
        positions: ``(n,)`` strictly increasing non-negative integers.
        index_bits: bits per stored gap, ``b``.

    Returns:
        ``(gaps, filler)``: ``(m,)`` int64 gaps in ``[1, 2^b - 1]`` and an ``(m,)`` bool mask of the
        inserted filler entries (``m >= n``; ``~filler`` selects the original ``n`` entries in order).
    """
    big = max_gap(index_bits)
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    gaps = np.diff(positions, prepend=-1)  # (n,)
    if positions.size and (positions[0] < 0 or (gaps < 1).any()):
        raise ValueError("positions must be non-negative and strictly increasing")
    fillers = (gaps - 1) // big  # (n,) fillers in front of each entry
    per_entry = fillers + 1
    out = np.full(int(per_entry.sum()), big, dtype=np.int64)
    last = np.cumsum(per_entry) - 1  # slot of each real entry, after its fillers
    out[last] = gaps - fillers * big
    filler = np.ones(out.size, dtype=bool)
    filler[last] = False
    return out, filler


def from_gaps(gaps: np.ndarray) -> np.ndarray:
    """Absolute positions of every entry (fillers included): ``p_i = sum_{j<=i} g_j - 1``."""
    gaps = np.asarray(gaps, dtype=np.int64).reshape(-1)
    return np.cumsum(gaps) - 1
