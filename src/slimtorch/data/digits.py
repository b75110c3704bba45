"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes): needs no files.

Split: a fixed stratified 80/20 split (:func:`~slimtorch.data.subsets.stratified_split`, seed 0):
1,438 train and 359 test images, each class keeping its share. Pixels are 0..16 (scaled to [0, 1]) and
normalized with the mean and standard deviation of the training pixels.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import torch

from slimtorch.data.image_dataset import ImageTensorDataset
from slimtorch.data.registry import register_dataset
from slimtorch.data.subsets import stratified_split
from slimtorch.data.transforms import RandomShift

TEST_FRACTION = 0.2
SPLIT_SEED = 0
#: White level of sklearn's digits.
SCALE = 16.0


@lru_cache(maxsize=1)
def _arrays() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], float, float]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)  # (1797, 8, 8), values 0..16
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
    train_px = images[train_idx] / SCALE
    return (
        images,
        labels,
        {"train": train_idx, "test": test_idx},
        float(train_px.mean()),
        float(train_px.std()),
    )


@register_dataset("digits", splits=("train", "test"))
def load_digits_dataset(
    split: str, root: str | os.PathLike[str] | None = None, augment: bool = False
) -> ImageTensorDataset:
    """The digits split as ``(1, 8, 8)`` normalized float images with ``int64`` labels.

    Args:
        split: ``"train"`` (1,438 images) or ``"test"`` (359).
        root: ignored (the data ships with scikit-learn).
        augment: random ±1 px shifts (the 8x8 analogue of MNIST's ±2 px jitter).
    """
    images, labels, splits, mean, std = _arrays()
    idx = splits[split]
    return ImageTensorDataset(
        torch.from_numpy(images[idx][:, None].copy()),  # (N, 1, 8, 8)
        torch.from_numpy(labels[idx].copy()),
        (mean,),
        (std,),
        scale=SCALE,
        augment=RandomShift(max_shift=1) if augment else None,
        classes=[str(i) for i in range(10)],
        name=f"digits/{split}",
    )
