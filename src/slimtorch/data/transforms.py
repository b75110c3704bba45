"""Image normalization and augmentation with plain torch ops (no torchvision).

Every function takes one image ``(C, H, W)`` or a batch ``(B, C, H, W)`` of float pixels in ``[0, 1]``
(augmentations run *before* normalization, so padding is black, as in the usual recipes).

* :class:`RandomShift` — MNIST jitter: translate by up to ``max_shift`` pixels in each direction
  (Hinton et al., "Improving neural networks by preventing co-adaptation of feature detectors",
  2012, use ±2 px on 28x28 digits). A shift by ``(dy, dx)`` is ``out[i, j] = x[i - dy, j - dx]``,
  zero where ``(i - dy, j - dx)`` falls outside the image.
* :class:`RandomCropFlip` — the CIFAR recipe of He et al., "Deep Residual Learning for Image
  Recognition" (2016): zero-pad by 4, take a random 32x32 crop (i.e. a shift by ``dy, dx`` uniform in
  ``[-4, 4]``), then flip left-right with probability 1/2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from slimtorch.core.config import Config, check_range


def normalize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(x - mean) / std`` per channel; ``mean``/``std`` have shape ``(C,)``."""
    return (x - mean[:, None, None]) / std[:, None, None]


def shift(x: Tensor, dy: int, dx: int) -> Tensor:
    """Translate an image by ``(dy, dx)`` pixels (down/right positive), filling with zeros.

    Args:
        x: ``(..., H, W)``.
        dy: rows to move down (negative moves up).
        dx: columns to move right (negative moves left).
    """
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    # Destination rows [max(dy,0), h+min(dy,0)) take source rows [max(-dy,0), h-max(dy,0)).
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        ..., max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """Shift each image by ``dy, dx`` drawn uniformly from ``[-max_shift, max_shift]`` (zero fill).

    Equivalent to zero-padding by ``max_shift`` and taking a random crop of the original size.

    Args:
        x: ``(C, H, W)`` or ``(B, C, H, W)``; each image of a batch gets its own shift.
        max_shift: largest shift in pixels along each axis.
        generator: random source (the global torch RNG when ``None``).
    """
    if max_shift == 0:
        return x
    if x.dim() == 3:
        dy, dx = (torch.randint(-max_shift, max_shift + 1, (2,), generator=generator)).tolist()
        return shift(x, dy, dx)
    b, c, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p))  # (B, C, H+2p, W+2p)
    # Every HxW window of the padded image, as a strided view (no copy): (B, C, 2p+1, 2p+1, H, W).
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)
    # Window origin (oy, ox) per image; the content moves by (p - oy, p - ox).
    oy = torch.randint(0, 2 * p + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * p + 1, (b,), generator=generator)
    return windows[torch.arange(b), :, oy, ox]  # (B, C, H, W)


def random_hflip(x: Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """Flip each image left-right with probability ``p``.

    Args:
        x: ``(C, H, W)`` or ``(B, C, H, W)``.
        p: flip probability.
        generator: random source (the global torch RNG when ``None``).
    """
    if x.dim() == 3:
        return x.flip(-1) if torch.rand((), generator=generator).item() < p else x
    flip = torch.rand(x.shape[0], generator=generator) < p  # (B,)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def _check_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer number of pixels, got {value!r}")


@dataclass
class RandomShift(Config):
    """Random translation by up to ``max_shift`` pixels per axis (MNIST jitter, ±2 px).

    Args:
        max_shift: largest shift in pixels, in ``[0, 16]``.
    """

    max_shift: int = 2

    def __post_init__(self) -> None:
        _check_int("max_shift", self.max_shift)
        check_range("max_shift", self.max_shift, 0, 16)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return random_shift(x, int(self.max_shift), generator)


@dataclass
class RandomCropFlip(Config):
    """Zero-pad by ``padding``, random crop back to the original size, random horizontal flip.

    Args:
        padding: pad (= largest shift) in pixels, in ``[0, 16]``; 4 for CIFAR-10.
        flip_p: probability of a left-right flip.
    """

    padding: int = 4
    flip_p: float = 0.5

    def __post_init__(self) -> None:
        _check_int("padding", self.padding)
        check_range("padding", self.padding, 0, 16)
        check_range("flip_p", self.flip_p, 0.0, 1.0)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return random_hflip(random_shift(x, int(self.padding), generator), self.flip_p, generator)
