"""Relative position encoding with filler entries (Deep Compression Fig. 2)."""

from __future__ import annotations

import numpy as np
import pytest

from slimtorch.share.sparse_index import from_gaps, max_gap, to_gaps


def test_hand_example_with_fillers():
    # b = 3 bits -> largest gap 7. Gap 17 from 3 to 20 needs two fillers (at 10 and 17), then 3.
    gaps, filler = to_gaps(np.array([0, 3, 20]), 3)
    assert gaps.tolist() == [1, 3, 7, 7, 3]
    assert filler.tolist() == [False, False, True, True, False]
    assert from_gaps(gaps).tolist() == [0, 3, 10, 17, 20]


def test_gap_exactly_at_the_bound_needs_no_filler():
    gaps, filler = to_gaps(np.array([6, 13]), 3)  # gaps 7 and 7
    assert gaps.tolist() == [7, 7] and not filler.any()


@pytest.mark.parametrize("bits", [1, 2, 5, 8])
def test_round_trip_random(bits):
    rng = np.random.default_rng(bits)
    positions = np.flatnonzero(rng.random(5000) < 0.07)
    gaps, filler = to_gaps(positions, bits)
    assert gaps.min() >= 1 and gaps.max() <= max_gap(bits)
    all_pos = from_gaps(gaps)
    np.testing.assert_array_equal(all_pos[~filler], positions)
    # Every filler advances by exactly the largest gap.
    assert (gaps[filler] == max_gap(bits)).all()


def test_empty_and_bad_inputs():
    gaps, filler = to_gaps(np.zeros(0, dtype=np.int64), 4)
    assert gaps.size == 0 and filler.size == 0
    with pytest.raises(ValueError, match="strictly increasing"):
        to_gaps(np.array([3, 3]), 4)
    with pytest.raises(ValueError, match="strictly increasing"):
        to_gaps(np.array([-1, 3]), 4)
    with pytest.raises(ValueError, match=r"index_bits must be in \[1, 30\], got 0"):
        to_gaps(np.array([1]), 0)
