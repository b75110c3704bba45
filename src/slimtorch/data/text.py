"""Character-level language-model data from any UTF-8 text file (tiny Shakespeare by default).

Vocabulary: the sorted set of characters of the *whole* file (so validation text is always
encodable); token id = position in that list. Split: the first 90% of the characters are ``train``,
the last 10% are ``val`` (``test`` is an alias of ``val``). Item ``i`` is a pair of ``block_size``
windows ``(ids[s : s+T], ids[s+1 : s+T+1])``: inputs and next-character targets.

Window placement: by default the windows are non-overlapping, ``s = i * T``, and ``len`` is
``(n - 1) // T`` — deterministic, every character seen once per epoch. With ``augment=True`` (or
``num_samples``) each item is a window at a uniformly random offset (nanoGPT-style sampling, drawn
from the global torch RNG), so successive epochs see different windows; ``len`` is ``num_samples``
if given, else still ``(n - 1) // T``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from slimtorch.core.errors import SlimtorchError
from slimtorch.data.paths import not_found_error, search_places
from slimtorch.data.registry import register_dataset

TRAIN_FRACTION = 0.9
FILE_NAMES = ("tinyshakespeare/input.txt", "input.txt", "tinyshakespeare.txt")


class CharDataset(Dataset):
    """Fixed-length windows over a token sequence, for next-character prediction.

    Args:
        tokens: ``(n,)`` int64 token ids of this split.
        chars: the vocabulary, ``chars[id]`` is the character.
        block_size: window length ``T``.
        random_offsets: draw each window's start uniformly at random instead of ``i * T``.
        num_samples: dataset length (default ``(n - 1) // T``).
        name: for ``repr``.

    Attributes:
        data: the split's token ids ``(n,)`` int64 (for fast custom batching).
        chars: the vocabulary.
        block_size: ``T``.
    """

    def __init__(
        self,
        tokens: Tensor,
        chars: Sequence[str],
        block_size: int,
        *,
        random_offsets: bool = False,
        num_samples: int | None = None,
        name: str = "",
    ) -> None:
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
        if num_samples is not None and (
            isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1
        ):
            raise ValueError(f"num_samples must be a positive integer or None, got {num_samples!r}")
        if tokens.numel() < block_size + 1:
            raise SlimtorchError(
                f"{name or 'text'}: {tokens.numel()} characters are too few for block_size={block_size} "
                f"(need at least {block_size + 1})"
            )
        self.data = tokens.long()
        self.chars = list(chars)
        self.block_size = block_size
        self.random_offsets = random_offsets
        self.num_samples = num_samples
        self.name = name
        self._stoi = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> Tensor:
        """Token ids ``(len(text),)`` int64 of ``text``; characters outside the vocabulary are an error."""
        try:
            return torch.tensor([self._stoi[c] for c in text], dtype=torch.long)
        except KeyError as e:
            raise ValueError(
                f"character {e.args[0]!r} is not in the vocabulary of {self.name or 'this dataset'}"
            ) from None

    def decode(self, ids: Tensor | Sequence[int]) -> str:
        """The text of token ids (a 1-D tensor or sequence of ints)."""
        seq = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return "".join(self.chars[i] for i in seq)

    def __len__(self) -> int:
        if self.num_samples is not None:
            return self.num_samples
        return (self.data.numel() - 1) // self.block_size

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} windows")
        t = self.block_size
        if self.random_offsets:
            start = int(torch.randint(0, self.data.numel() - t, ()).item())
        else:
            start = (i % len(self)) * t
        chunk = self.data[start : start + t + 1]  # (T+1,)
        return chunk[:-1], chunk[1:]

    def __repr__(self) -> str:
        return (
            f"CharDataset({self.name or '?'}, windows={len(self)}, block_size={self.block_size}, "
            f"vocab={self.vocab_size})"
        )


def tokenize(text: str) -> tuple[list[str], np.ndarray]:
    """``(vocabulary, ids)``: the sorted distinct characters of ``text`` and ``text`` as int64 ids."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")  # one code point per character
    vocab = np.unique(codes)  # sorted, as sorted(set(text)) orders by code point
    ids = np.searchsorted(vocab, codes).astype(np.int64)
    return [chr(c) for c in vocab], ids


def find_text(root: str | os.PathLike[str] | None = None) -> Path:
    """The tiny Shakespeare text file, looked up in every place of ``search_places``."""
    places = search_places("tinyshakespeare", root)
    for place in places:
        for name in FILE_NAMES:
            if (place.path / name).is_file():
                return place.path / name
    raise not_found_error("tinyshakespeare", " or ".join(FILE_NAMES[1:]), places)


def read_text(path: Path) -> str:
    """A UTF-8 text file's content; undecodable or unreadable files are an error naming them."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SlimtorchError(f"{path}: not UTF-8 text ({e})") from None
    except OSError as e:
        raise SlimtorchError(f"cannot read {path}: {e}") from None


@register_dataset("tinyshakespeare", splits=("train", "val", "test"))
def load_tinyshakespeare(
    split: str,
    root: str | os.PathLike[str] | None = None,
    augment: bool = False,
    block_size: int = 128,
    path: str | os.PathLike[str] | None = None,
    num_samples: int | None = None,
) -> CharDataset:
    """Char-level windows of tiny Shakespeare (or of any UTF-8 file given as ``path``).

    Args:
        split: ``"train"`` (first 90%) or ``"val"``/``"test"`` (last 10%).
        root: directory searched first (ignored when ``path`` is given).
        augment: random window offsets instead of non-overlapping windows.
        block_size: window length ``T``.
        path: an explicit text file.
        num_samples: dataset length; implies random offsets.
    """
    file = Path(path).expanduser() if path is not None else find_text(root)
    if path is not None and not file.is_file():
        raise SlimtorchError(f"text file {file} (path= argument) does not exist")
    chars, ids = tokenize(read_text(file))
    cut = int(len(ids) * TRAIN_FRACTION)
    part = ids[:cut] if split == "train" else ids[cut:]
    return CharDataset(
        torch.from_numpy(part.copy()),
        chars,
        block_size,
        random_offsets=augment or num_samples is not None,
        num_samples=num_samples,
        name=f"{file.name}/{split}",
    )
