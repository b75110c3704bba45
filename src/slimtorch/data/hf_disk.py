"""A Hugging Face ``datasets`` folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``.

Read with ``datasets.load_from_disk`` (the optional ``datasets`` package; without it the error names
the package). Splits: ``train``, and ``test`` (or else ``validation``) of a ``DatasetDict``; a single
``Dataset``, or a dict without a test split, is split 80/20 (:func:`~slimtorch.data.user_split.split_indices`).

Columns: the target is the first of ``label``, ``labels``, ``y``, ``target``. An ``image``/``img``
column of images becomes normalized ``(3, H, W)`` tensors (as :mod:`slimtorch.data.user_images`); other
columns must be numeric (already tokenized text: ``input_ids``, ``attention_mask``, ...). One input column
gives ``(x, y)`` items; several give ``({column: tensor}, y)``, a dict batch every technique passes to the
model by name (:mod:`slimtorch.core.batches`).
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
from slimtorch.data.image_dataset import ImageTensorDataset
from slimtorch.data.registry import register_dataset
from slimtorch.data.user_split import split_indices, user_root

WHAT = "a folder written by datasets' save_to_disk (dataset_dict.json or dataset_info.json + .arrow files)"
LABEL_COLUMNS = ("label", "labels", "y", "target")
IMAGE_COLUMNS = ("image", "img")


class ColumnsDataset(Dataset):
    """Items ``(x, y)`` or ``({column: x}, y)`` from numeric columns (arrays with the samples first)."""

    def __init__(self, columns: dict[str, Tensor], y: Tensor, name: str = "") -> None:
        self.columns, self.y, self.name = columns, y, name
        self.num_classes = int(y.max()) + 1 if y.dim() == 1 and not y.is_floating_point() and len(y) else None
        if len(columns) == 1:
            self.input_shape = tuple(int(s) for s in next(iter(columns.values())).shape[1:])

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i: int) -> tuple[Any, Tensor]:
        if len(self.columns) == 1:
            return next(iter(self.columns.values()))[i], self.y[i]
        return {k: v[i] for k, v in self.columns.items()}, self.y[i]


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise SlimtorchError(
            "reading a Hugging Face datasets folder needs the 'datasets' package, which is not installed: "
            "pip install datasets (or save your data as .npz / image folders)"
        ) from None
    return datasets


def _split(obj: Any, split: str, source: Path) -> tuple[Any, np.ndarray | None]:
    """The ``datasets.Dataset`` for ``split`` and, when it must be cut from a whole, the row indices."""
    if hasattr(obj, "keys") and not hasattr(obj, "column_names"):  # a DatasetDict
        names = list(obj.keys())
        test = next((n for n in ("test", "validation") if n in names), None)
        if "train" in names and test is not None:
            return obj["train" if split == "train" else test], None
        if "train" not in names:
            raise SlimtorchError(f"{source}: splits {names}; expected a 'train' split (and 'test' or 'validation')")
        obj = obj["train"]
    return obj, np.array([], dtype=np.int64)  # empty: cut by labels below


def _tensor(values: Any, column: str, source: Path, rows: np.ndarray | None = None) -> Tensor:
    try:
        a = np.asarray(values)
        a = a if rows is None else a[rows]
    except ValueError as e:  # ragged rows (untruncated tokens)
        raise SlimtorchError(f"{source}: column {column!r} has rows of different lengths ({e}); "
                             "pad them first") from None
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise SlimtorchError(f"{source}: column {column!r} holds {a.dtype} values; tokenize text columns first "
                             "(numeric columns such as input_ids, or an image column, are read)")
    if np.issubdtype(a.dtype, np.floating):
        return torch.from_numpy(a.astype(np.float32))
    return torch.from_numpy(a.astype(np.int64))


@register_dataset("hf_disk", splits=("train", "test"))
def load_hf_disk(split: str, root: str | os.PathLike[str] | None = None, augment: bool = False) -> Dataset:
    """A split of a ``save_to_disk`` folder (see the module docstring).

    Args:
        split: ``train`` or ``test``.
        root: the folder.
        augment: not supported (an error if set).
    """
    if augment:
        raise SlimtorchError("dataset 'hf_disk' has no augmentation; leave augment off")
    path = user_root("hf_disk", root, WHAT)
    datasets = _import_datasets()
    try:
        obj = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise SlimtorchError(f"{path}: not a datasets save_to_disk folder ({e})") from None
    ds, cut = _split(obj, split, path)
    label = next((c for c in LABEL_COLUMNS if c in ds.column_names), None)
    if label is None:
        raise SlimtorchError(f"{path}: no label column among {ds.column_names}; expected one of {list(LABEL_COLUMNS)}")
    y_all = _tensor(ds[label], label, path).numpy()
    rows = split_indices(y_all, split) if cut is not None else np.arange(len(y_all))
    train_rows = split_indices(y_all, "train") if cut is not None else None
    y = torch.from_numpy(y_all[rows])
    inputs = [c for c in ds.column_names if c != label]
    image = next((c for c in IMAGE_COLUMNS if c in inputs), None)
    name = f"{path.name}/{split}"
    if image is not None:
        def pixels(idx: np.ndarray) -> np.ndarray:
            arrs = [np.asarray(ds[int(i)][image].convert("RGB"), dtype=np.uint8) for i in idx]
            return np.ascontiguousarray(np.stack(arrs).transpose(0, 3, 1, 2))  # (N, 3, H, W)
        x = pixels(rows)
        train_ds = ds if cut is not None else (obj["train"] if split != "train" else ds)
        train_px = (pixels(train_rows) if train_rows is not None else
                    np.stack([np.asarray(r[image].convert("RGB")) for r in train_ds]).transpose(0, 3, 1, 2))
        px = train_px.astype(np.float64) / 255.0
        mean, std = px.mean(axis=(0, 2, 3)), np.maximum(px.std(axis=(0, 2, 3)), 1e-6)
        return ImageTensorDataset(torch.from_numpy(x), y, tuple(map(float, mean)), tuple(map(float, std)), name=name)
    if not inputs:
        raise SlimtorchError(f"{path}: only the label column {label!r}; no input columns")
    columns = {c: _tensor(ds[c], c, path, rows) for c in inputs}
    return ColumnsDataset(columns, y, name=name)
