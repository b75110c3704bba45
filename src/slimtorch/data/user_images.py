"""Your own images: a folder of class subfolders, ``root/<class>/<image>`` or ``root/{train,test}/<class>/<image>``.

Classes are the sorted subfolder names (index = label). With ``train/`` and ``test/`` subfolders those are
the splits; otherwise 20% of each class is the test split (:func:`~slimtorch.data.user_split.split_indices`,
fixed seed). Images are decoded to RGB (``(3, H, W)``) and must all have the same size; they are
normalized per channel with the mean and standard deviation of the training pixels. A file that does not
decode is named in the error.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from slimtorch.core.errors import SlimtorchError
from slimtorch.data.image_dataset import ImageTensorDataset
from slimtorch.data.image_folder import IMAGE_EXTS, ImageCollector, decode_image, list_tree
from slimtorch.data.registry import register_dataset
from slimtorch.data.transforms import RandomCropFlip
from slimtorch.data.user_split import split_indices, user_root

WHAT = "a folder of class subfolders of images (root/<class>/*.png or root/train/<class>/*.png)"


def _flat_arrays(root: Path) -> dict[str, np.ndarray]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    files = [(c, f) for c in classes for f in sorted((root / c).iterdir())
             if f.is_file() and f.name.lower().endswith(IMAGE_EXTS)]
    if not files:
        raise SlimtorchError(f"{root}: no images found under <class>/ ({', '.join(IMAGE_EXTS)}); expected {WHAT}")
    images, labels = [], []
    for c, f in tqdm(files, desc=f"decoding {root.name}", leave=False, disable=len(files) < 500):
        arr = decode_image(f.read_bytes(), str(f))
        if images and arr.shape != images[0].shape:
            raise SlimtorchError(f"{f}: image size {arr.shape[:2]} differs from {images[0].shape[:2]} of the others")
        images.append(arr)
        labels.append(classes.index(c))
    y = np.array(labels, dtype=np.int64)
    x = np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))  # (N, 3, H, W)
    out: dict[str, np.ndarray] = {"classes": np.array(classes)}
    for split in ("train", "test"):
        idx = split_indices(y, split)
        out[f"{split}_images"], out[f"{split}_labels"] = x[idx], y[idx]
    return out


def _tree_arrays(root: Path) -> dict[str, np.ndarray]:
    collector = ImageCollector()
    for split, cls, f in tqdm(list_tree(root), desc=f"decoding {root.name}", leave=False):
        collector.add(split, cls, f.name, f.read_bytes(), str(f))
    return collector.arrays(str(root))


@register_dataset("image_folder", splits=("train", "test"))
def load_image_folder(split: str, root: str | os.PathLike[str] | None = None,
                      augment: bool = False) -> ImageTensorDataset:
    """Your images as ``(3, H, W)`` normalized float tensors with ``int64`` class labels.

    Args:
        split: ``train`` or ``test``.
        root: the folder (see the module docstring).
        augment: random crop (zero padding of 1/8 of the size) and horizontal flip.
    """
    path = user_root("image_folder", root, WHAT)
    if not path.is_dir():
        raise SlimtorchError(f"dataset 'image_folder': {path} is not a folder; expected {WHAT}")
    arrays = _tree_arrays(path) if (path / "train").is_dir() else _flat_arrays(path)
    train_px = arrays["train_images"].astype(np.float64) / 255.0  # (N, 3, H, W)
    mean = train_px.mean(axis=(0, 2, 3))
    std = np.maximum(train_px.std(axis=(0, 2, 3)), 1e-6)  # a constant channel must not divide by zero
    images = arrays[f"{split}_images"]
    pad = min(16, max(1, images.shape[-1] // 8))
    return ImageTensorDataset(
        torch.from_numpy(images),
        torch.from_numpy(arrays[f"{split}_labels"]),
        tuple(float(m) for m in mean),
        tuple(float(s) for s in std),
        augment=RandomCropFlip(padding=pad) if augment else None,
        classes=[str(c) for c in arrays["classes"]],
        name=f"{path.name}/{split}",
    )
