"""How a user's data without its own test split is split, and where a user dataset's file is.

User datasets (``image_folder``, ``arrays``, ``text``, ``hf_disk``) take their files from ``root=`` only:
they have no conventional place under ``$SLIMTORCH_DATA``. When the data has no test split of its own,
:data:`TEST_FRACTION` of it becomes ``test`` by a fixed seeded split (stratified by class when the labels
are class indices), so every run, and ``slimtorch eval`` afterwards, sees the same test samples.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from slimtorch.core.errors import SlimtorchError
from slimtorch.data.subsets import stratified_split

TEST_FRACTION = 0.2
SPLIT_SEED = 0


def user_root(name: str, root: str | os.PathLike[str] | None, what: str) -> Path:
    """``root`` as a path that exists, for user dataset ``name`` (``what``: what it should be)."""
    if root is None:
        raise SlimtorchError(f"dataset {name!r} reads your files: give root= (CLI: --root, or --data PATH) "
                             f"naming {what}")
    p = Path(root).expanduser()
    if not p.exists():
        raise SlimtorchError(f"dataset {name!r}: root {p} does not exist (expected {what})")
    return p


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """The indices of ``split`` (``train``/``test``) of data that has no split of its own.

    Integer labels (class indices, ``(N,)``) are split per class (:func:`stratified_split`); any other
    labels by a seeded permutation. Both with seed :data:`SPLIT_SEED`, test share :data:`TEST_FRACTION`.
    """
    n = len(labels)
    if n < 2:
        raise SlimtorchError(f"{n} sample(s) cannot be split into train and test; give at least 2 (better, hundreds)")
    if labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer):
        train, test = stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
    else:
        perm = np.random.RandomState(SPLIT_SEED).permutation(n)
        k = max(1, round(TEST_FRACTION * n))
        test, train = np.sort(perm[:k]), np.sort(perm[k:])
    idx = train if split == "train" else test
    if len(idx) == 0:
        raise SlimtorchError(f"the {split} split of {n} samples is empty; give more samples per class")
    return idx
