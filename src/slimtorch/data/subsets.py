"""Deterministic subsets, splits and loaders.

Everything here is seeded explicitly so that two runs with the same seed see the same items in the
same order (the global RNG is never consumed).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset


def calibration_subset(dataset: Dataset, n: int, seed: int = 0) -> Subset:
    """``n`` items of ``dataset`` chosen uniformly at random without replacement, reproducibly.

    The items keep the random order of the draw (not sorted by index), so the first batches of a
    class-sorted dataset are not all one class.

    Args:
        dataset: any sized map-style dataset.
        n: number of items, ``1 <= n <= len(dataset)``.
        seed: the same seed gives the same items in the same order.

    Returns:
        A ``torch.utils.data.Subset``.
    """
    size = len(dataset)  # type: ignore[arg-type]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"calibration_subset: n must be a positive integer, got {n!r}")
    if n > size:
        raise ValueError(f"calibration_subset: n={n} is larger than the dataset ({size} items)")
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(size, generator=g)[:n]
    return Subset(dataset, idx.tolist())


def make_loader(
    dataset: Dataset,
    batch_size: int = 128,
    shuffle: bool = False,
    seed: int = 0,
    *,
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A ``DataLoader`` whose shuffling comes from its own generator seeded with ``seed``.

    Args:
        dataset: the dataset.
        batch_size: items per batch (> 0).
        shuffle: reshuffle every epoch (reproducibly, given ``seed``).
        seed: seed of the loader's generator (also seeds augmentation in worker processes).
        num_workers: worker processes (0 = load in the main process).
        drop_last: drop a final incomplete batch.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    g = torch.Generator().manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=g,
        num_workers=num_workers,
        drop_last=drop_last,
    )


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices so each class keeps (to rounding) the same share in train and test.

    For each class ``c`` with ``n_c`` items, ``round(test_fraction * n_c)`` of them, drawn with
    ``numpy.random.RandomState(seed)``, go to test and the rest to train.

    Args:
        labels: ``(N,)`` integer labels.
        test_fraction: share of each class put in the test split, in ``(0, 1)``.
        seed: random seed.

    Returns:
        ``(train_idx, test_idx)``, each sorted ascending.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    rng = np.random.RandomState(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        k = int(round(test_fraction * len(idx)))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
