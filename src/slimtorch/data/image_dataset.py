"""A tensor-backed image classification dataset shared by ``digits``, ``mnist`` and ``cifar10``.

Images are kept as raw integers (``uint8``, ``(N, C, H, W)``) and turned into normalized floats per
item, so a 50,000-image CIFAR train set costs 150 MB, not 600 MB. For fast full-batch work (evaluation,
calibration, benchmarks) :attr:`ImageTensorDataset.data` gives every image normalized at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from slimtorch.data.transforms import normalize


class ImageTensorDataset(Dataset):
    """Images and labels held in tensors; items are ``(x, y)`` with ``x`` normalized ``float32``.

    Item ``i`` is ``x = (augment(images[i] / scale) - mean) / std`` and ``y = targets[i]``.

    Args:
        images: raw pixels, integer tensor ``(N, C, H, W)``.
        targets: class indices ``(N,)``, ``int64``.
        mean: per-channel mean of the ``[0, 1]`` pixels, length ``C``.
        std: per-channel standard deviation, length ``C``.
        scale: value of a white pixel (255 for 8-bit images, 16 for sklearn digits).
        augment: random transform applied to the ``[0, 1]`` image before normalization, or ``None``.
        classes: class names, index = label.
        name: dataset name and split, for ``repr``.

    Attributes:
        images: the raw pixels (``uint8``).
        targets: the labels (``int64``).
        classes: class names.
        num_classes: ``len(classes)``.
        input_shape: ``(C, H, W)``.
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        scale: float = 255.0,
        augment: Callable[[Tensor], Tensor] | None = None,
        classes: Sequence[str] | None = None,
        name: str = "",
    ) -> None:
        if images.dim() != 4 or images.shape[0] != targets.shape[0]:
            raise ValueError(
                f"images must be (N, C, H, W) with N = len(targets); got {tuple(images.shape)} and "
                f"{tuple(targets.shape)}"
            )
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise ValueError(f"mean/std need one value per channel ({images.shape[1]}), got {mean} / {std}")
        self.images = images
        self.targets = targets.long()
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        self.scale = float(scale)
        self.augment = augment
        self.classes = (
            list(classes) if classes is not None else [str(i) for i in range(int(targets.max()) + 1)]
        )
        self.name = name
        self._data: Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def data(self) -> Tensor:
        """Every image normalized, ``(N, C, H, W)`` ``float32`` (no augmentation; computed once)."""
        if self._data is None:
            # In place (no temporaries the size of the dataset), with the same rounding as an item.
            x = self.images.float().div_(self.scale)  # (N, C, H, W)
            self._data = x.sub_(self.mean[:, None, None]).div_(self.std[:, None, None])
        return self._data

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        if self.augment is None and self._data is not None:
            return self._data[i], self.targets[i]
        x = self.images[i].float() / self.scale  # (C, H, W) in [0, 1]
        if self.augment is not None:
            x = self.augment(x)
        return normalize(x, self.mean, self.std), self.targets[i]

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, Tensor]]:
        """Items ``indices`` computed as one batch (``DataLoader`` calls this instead of ``__getitem__``).

        Normalizing and augmenting a whole batch costs a few microseconds per image instead of ~100
        for item-by-item work; the transforms give each image its own random draw.
        """
        idx = torch.as_tensor(indices, dtype=torch.long)
        if self.augment is None and self._data is not None:
            x = self._data[idx]
        else:
            x = self.images[idx].float() / self.scale  # (B, C, H, W) in [0, 1]
            if self.augment is not None:
                x = self.augment(x)
            x = normalize(x, self.mean, self.std)
        return list(zip(x.unbind(0), self.targets[idx].unbind(0)))

    def __repr__(self) -> str:
        aug = f", augment={self.augment}" if self.augment is not None else ""
        return f"ImageTensorDataset({self.name or '?'}, n={len(self)}, shape={self.input_shape}{aug})"
