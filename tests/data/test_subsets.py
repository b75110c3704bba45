import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from slimtorch import data


def _ds(n=100):
    return TensorDataset(torch.arange(n), torch.arange(n) % 10)


def test_calibration_subset_is_deterministic_and_distinct():
    ds = _ds()
    a, b = data.calibration_subset(ds, 20, seed=3), data.calibration_subset(ds, 20, seed=3)
    assert a.indices == b.indices and len(a) == 20 and len(set(a.indices)) == 20
    assert data.calibration_subset(ds, 20, seed=4).indices != a.indices
    assert [int(a[i][0]) for i in range(20)] == a.indices
    assert sorted(data.calibration_subset(ds, 100).indices) == list(range(100))


def test_calibration_subset_errors():
    with pytest.raises(ValueError, match=r"n=101 is larger than the dataset \(100 items\)"):
        data.calibration_subset(_ds(), 101)
    with pytest.raises(ValueError, match="n must be a positive integer, got 0"):
        data.calibration_subset(_ds(), 0)


def test_make_loader_is_seeded():
    ds = _ds()
    order = lambda seed: torch.cat([x for x, _ in data.make_loader(ds, 16, shuffle=True, seed=seed)]).tolist()  # noqa: E731
    assert order(1) == order(1) and order(1) != order(2)
    assert sorted(order(1)) == list(range(100))
    assert [len(x) for x, _ in data.make_loader(ds, 30)] == [30, 30, 30, 10]
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        data.make_loader(ds, 0)


def test_stratified_split_shares():
    labels = np.repeat(np.arange(3), [10, 20, 31])
    tr, te = data.stratified_split(labels, 0.2, seed=0)
    assert np.bincount(labels[te]).tolist() == [2, 4, 6]
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(61))
    tr2, te2 = data.stratified_split(labels, 0.2, seed=0)
    assert tr.tolist() == tr2.tolist()
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\)"):
        data.stratified_split(labels, 1.0)
