"""Your own arrays: a ``.npz`` file or a folder holding a ``.npy`` pair (``x.npy`` and ``y.npy``).

Keys (npz) or file stems (npy): ``x`` and ``y`` (split 80/20 by :func:`~slimtorch.data.user_split.split_indices`),
or ``x_train``, ``y_train``, ``x_test``, ``y_test``. Arrays are read with ``allow_pickle=False``: object
arrays (pickles) are refused. ``x`` becomes:

* ``uint8`` -> ``float32 / 255`` (8-bit images; ``(N, H, W)`` gains a channel axis: ``(N, 1, H, W)``);
* other integers -> ``int64`` (token ids for an embedding model);
* floats -> ``float32``, as given.

``y``: integers -> ``int64`` class labels (``num_classes = max + 1``), floats -> ``float32`` targets.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from slimtorch.core.errors import SlimtorchError
from slimtorch.data.registry import register_dataset
from slimtorch.data.user_split import split_indices, user_root

WHAT = "a .npz file with arrays x and y, or a folder holding x.npy and y.npy"


class ArrayDataset(Dataset):
    """``(x[i], y[i])`` pairs of two tensors with the same first dimension.

    Attributes:
        x: inputs ``(N, ...)``.
        y: targets ``(N,)`` (class indices) or ``(N, ...)``.
        num_classes: ``max(y) + 1`` for class labels, else ``None``.
        input_shape: ``x.shape[1:]``.
    """

    def __init__(self, x: Tensor, y: Tensor, name: str = "") -> None:
        if x.shape[0] != y.shape[0]:
            raise SlimtorchError(f"{name}: x has {x.shape[0]} samples but y has {y.shape[0]}")
        self.x, self.y, self.name = x, y, name
        self.num_classes = int(y.max()) + 1 if y.dim() == 1 and not y.is_floating_point() and len(y) else None
        self.input_shape = tuple(int(s) for s in x.shape[1:])

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i], self.y[i]

    def __repr__(self) -> str:
        return f"ArrayDataset({self.name}, n={len(self)}, x={tuple(self.x.shape[1:])}, y={self.y.dtype})"


def _x_tensor(a: np.ndarray, name: str) -> Tensor:
    if a.dtype == np.uint8:
        t = torch.from_numpy(a.astype(np.float32) / 255.0)
        return t[:, None] if t.dim() == 3 else t  # (N, H, W) -> (N, 1, H, W)
    if np.issubdtype(a.dtype, np.integer):
        return torch.from_numpy(a.astype(np.int64))
    if np.issubdtype(a.dtype, np.floating):
        return torch.from_numpy(a.astype(np.float32))
    raise SlimtorchError(f"{name}: x has dtype {a.dtype}; expected numbers (uint8 images, integer ids or floats)")


def _y_tensor(a: np.ndarray, name: str) -> Tensor:
    if np.issubdtype(a.dtype, np.integer):
        if a.size and a.min() < 0:
            raise SlimtorchError(f"{name}: class labels y must be >= 0, found {int(a.min())}")
        return torch.from_numpy(a.astype(np.int64))
    if np.issubdtype(a.dtype, np.floating):
        return torch.from_numpy(a.astype(np.float32))
    raise SlimtorchError(f"{name}: y has dtype {a.dtype}; expected integer class labels or float targets")


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a ``.npz`` file or of a folder's ``.npy`` files (a ``.npy`` path: its folder), by name."""
    try:
        if path.is_file() and path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        folder = path.parent if path.is_file() and path.suffix == ".npy" else path
        if not folder.is_dir():
            raise SlimtorchError(f"{path}: expected {WHAT}")
        return {f.stem: np.load(f, allow_pickle=False) for f in sorted(folder.glob("*.npy"))}
    except ValueError as e:  # allow_pickle=False refusing an object array, or a malformed file
        raise SlimtorchError(f"{path}: cannot read the arrays ({e}); object arrays (pickles) are refused") from None
    except (OSError, EOFError) as e:
        raise SlimtorchError(f"{path}: not a readable .npz/.npy file ({e})") from None


def _pick(arrays: dict[str, np.ndarray], split: str, source: Path) -> tuple[np.ndarray, np.ndarray]:
    if f"x_{split}" in arrays and f"y_{split}" in arrays:
        return arrays[f"x_{split}"], arrays[f"y_{split}"]
    if "x" in arrays and "y" in arrays:
        x, y = arrays["x"], arrays["y"]
        if len(x) != len(y):
            raise SlimtorchError(f"{source}: x has {len(x)} samples but y has {len(y)}")
        idx = split_indices(y, split)
        return x[idx], y[idx]
    raise SlimtorchError(f"{source}: found arrays {sorted(arrays)}; expected x and y (or x_{split} and y_{split})")


@register_dataset("arrays", splits=("train", "test"))
def load_arrays(split: str, root: str | os.PathLike[str] | None = None, augment: bool = False) -> ArrayDataset:
    """Your ``(x, y)`` arrays (see the module docstring).

    Args:
        split: ``train`` or ``test``.
        root: the ``.npz`` file, a folder holding the ``.npy`` files, or one of those ``.npy`` files.
        augment: not supported for plain arrays (an error if set).
    """
    if augment:
        raise SlimtorchError("dataset 'arrays' has no augmentation; leave augment off")
    path = user_root("arrays", root, WHAT)
    x, y = _pick(read_arrays(path), split, path)
    name = f"{path.name}/{split}"
    out: Any = ArrayDataset(_x_tensor(x, name), _y_tensor(y, name), name=name)
    return out
