"""MNIST from the four original IDX files (gzipped or not), validated, decoded once and cached.

File names accepted for each split (``train`` / ``t10k`` prefix), with or without ``.gz``:
``train-images-idx3-ubyte`` and ``train-images.idx3-ubyte`` (likewise for labels). They are looked up
in ``<base>/mnist/`` and ``<base>/`` for each base of :func:`~slimtorch.data.paths.search_places`.
Normalization: mean 0.1307, std 0.3081 (of the training pixels in [0, 1]). Augmentation: random
±2 px shifts (Hinton et al., 2012).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from slimtorch.core.errors import SlimtorchError
from slimtorch.data.cache import cached_arrays, fingerprint
from slimtorch.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx
from slimtorch.data.image_dataset import ImageTensorDataset
from slimtorch.data.paths import not_found_error, search_places
from slimtorch.data.registry import register_dataset
from slimtorch.data.transforms import RandomShift

MEAN = (0.1307,)
STD = (0.3081,)
NUM_CLASSES = 10
_PREFIX = {"train": "train", "test": "t10k"}


def file_names(split: str, kind: str) -> list[str]:
    """Accepted file names for ``kind`` (``"images"``/``"labels"``) of ``split``, in preference order."""
    p = _PREFIX[split]
    ext = "idx3-ubyte" if kind == "images" else "idx1-ubyte"
    stems = [f"{p}-{kind}-{ext}", f"{p}-{kind}.{ext}"]
    return [s + gz for s in stems for gz in (".gz", "")]


def _first_existing(d: Path, names: list[str]) -> Path | None:
    return next((d / n for n in names if (d / n).is_file()), None)


def find_files(split: str, root: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """``(images_path, labels_path)`` of ``split`` from the first place that has both.

    Raises:
        SlimtorchError: listing every place searched when no place has both files.
    """
    places = search_places("mnist", root)
    notes: dict[Path, str] = {}
    img_names, lbl_names = file_names(split, "images"), file_names(split, "labels")
    for place in places:
        img, lbl = _first_existing(place.path, img_names), _first_existing(place.path, lbl_names)
        if img is not None and lbl is not None:
            return img, lbl
        if img is not None or lbl is not None:
            notes[place.path] = f"has {(img or lbl).name} but not its {'labels' if img else 'images'}"  # type: ignore[union-attr]
    wanted = f"{img_names[0]}[.gz] and {lbl_names[0]}[.gz] (or the {img_names[2].removesuffix('.gz')} naming)"
    raise not_found_error("mnist", wanted, places, notes)


def read_mnist(images_path: Path, labels_path: Path) -> dict[str, np.ndarray]:
    """Decode and cross-check one split: ``{"images": (N, 1, H, W) uint8, "labels": (N,) int64}``."""
    images = read_idx(images_path, IMAGES_MAGIC)  # (N, H, W)
    labels = read_idx(labels_path, LABELS_MAGIC)  # (N,)
    if images.shape[0] != labels.shape[0]:
        raise SlimtorchError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} "
            f"labels; the files do not belong together"
        )
    if images.shape[0] == 0:
        raise SlimtorchError(f"{images_path} holds 0 images (and {labels_path} 0 labels); an MNIST split needs at "
                             "least one (60,000 train / 10,000 test in the real files)")
    if labels.size and labels.max() >= NUM_CLASSES:
        raise SlimtorchError(f"{labels_path}: label {int(labels.max())} outside 0..{NUM_CLASSES - 1}")
    return {"images": images[:, None], "labels": labels.astype(np.int64)}


@register_dataset("mnist", splits=("train", "test"))
def load_mnist(
    split: str, root: str | os.PathLike[str] | None = None, augment: bool = False, use_cache: bool = True
) -> ImageTensorDataset:
    """MNIST ``split`` (60,000 train / 10,000 test) as ``(1, 28, 28)`` normalized images.

    Args:
        split: ``"train"`` or ``"test"``.
        root: directory searched first.
        augment: random ±2 px shifts.
        use_cache: reuse / write the decoded ``.npy`` cache (``$SLIMTORCH_CACHE/decoded/``).
    """
    images_path, labels_path = find_files(split, root)
    key = fingerprint([images_path, labels_path])
    arrays = cached_arrays(
        f"mnist-{split}", key, lambda: read_mnist(images_path, labels_path), use_cache=use_cache
    )
    return ImageTensorDataset(
        torch.from_numpy(arrays["images"]),
        torch.from_numpy(arrays["labels"]),
        MEAN,
        STD,
        augment=RandomShift(max_shift=2) if augment else None,
        classes=[str(i) for i in range(NUM_CLASSES)],
        name=f"mnist/{split}",
    )
