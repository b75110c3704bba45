"""The dataset registry: ``load(name, split, root=None, augment=False, **kwargs)`` and ``list_datasets()``.

A new dataset is one file plus one decorator::

    @register_dataset("mnist", splits=("train", "test"))
    def load_mnist(split, root=None, augment=False, use_cache=True): ...
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from slimtorch.core.errors import SlimtorchError
from slimtorch.core.registry import Registry

Loader = Callable[..., Dataset]


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: its loader and the split names it accepts."""

    loader: Loader
    splits: tuple[str, ...]


DATASETS: Registry[DatasetEntry] = Registry("dataset")


def register_dataset(name: str, splits: tuple[str, ...] = ("train", "test")) -> Callable[[Loader], Loader]:
    """Decorator registering ``loader(split, root=None, augment=False, **options)`` under ``name``."""

    def deco(fn: Loader) -> Loader:
        DATASETS.register(name, DatasetEntry(fn, tuple(splits)))
        return fn

    return deco


def load(
    name: str,
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    augment: bool = False,
    **kwargs: Any,
) -> Dataset:
    """Load a dataset by name as a torch ``Dataset`` of ``(x, y)`` pairs.

    Args:
        name: one of :func:`list_datasets` (case-insensitive).
        split: ``"train"`` or ``"test"`` (text datasets also accept ``"val"``, the same as ``"test"``).
        root: directory searched first for the files (then ``$SLIMTORCH_DATA``, then
            ``~/.cache/slimtorch``); ``<root>/<name>/`` and ``<root>/`` are both accepted.
        augment: apply the dataset's standard training augmentation.
        **kwargs: dataset options (e.g. ``block_size=128`` for ``tinyshakespeare``).

    Returns:
        The dataset.

    Raises:
        ValueError: unknown name, split or option (the message lists the valid ones).
        SlimtorchError: ``root`` given but missing (never silently replaced by ``$SLIMTORCH_DATA``), files
            missing (every place searched is listed) or corrupt (the file is named).
    """
    entry = DATASETS.get(name)
    if root is not None and not Path(root).expanduser().exists():
        raise SlimtorchError(f"dataset {name!r}: root {root} does not exist (it is not replaced by "
                             "$SLIMTORCH_DATA; give a folder or file that exists, or no root)")
    if split not in entry.splits:
        raise ValueError(f"dataset {name!r}: split {split!r} is not one of {list(entry.splits)}")
    check_options(name, kwargs)
    return entry.loader(split, root=root, augment=augment, **kwargs)


def check_options(name: str, options: Any) -> None:
    """Refuse dataset options (``load``'s ``**kwargs``, a recipe's ``data.options``) the loader does not take.

    Raises:
        ValueError: not a mapping, an unknown option (the allowed ones are listed), or a value that is not
            plain data (number, string, boolean).
    """
    entry = DATASETS.get(name)
    if not isinstance(options, dict):
        raise ValueError(f"dataset {name!r}: options must be a mapping, got {type(options).__name__}")
    params = inspect.signature(entry.loader).parameters
    allowed = sorted(k for k in params if k not in ("split", "root", "augment"))
    unknown = sorted(str(k) for k in options if k not in allowed)
    if unknown:
        raise ValueError(f"dataset {name!r}: unknown option(s) {unknown}; allowed: {allowed}")
    for k, v in options.items():
        if v is not None and not isinstance(v, (bool, int, float, str, os.PathLike)):
            raise ValueError(f"dataset {name!r}: option {k} must be a number, string or boolean, "
                             f"got {type(v).__name__}")


def list_datasets() -> list[str]:
    """Names accepted by :func:`load`."""
    return DATASETS.names()
