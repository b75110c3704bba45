"""Your own text as character-level language-model data: any UTF-8 file, given as ``root``.

The same windows, vocabulary and 90/10 split as ``tinyshakespeare`` (:mod:`slimtorch.data.text`), from
the file you name.
"""

from __future__ import annotations

import os

from slimtorch.core.errors import SlimtorchError
from slimtorch.data.registry import register_dataset
from slimtorch.data.text import CharDataset, load_tinyshakespeare
from slimtorch.data.user_split import user_root

WHAT = "a UTF-8 text file"


@register_dataset("text", splits=("train", "val", "test"))
def load_text_file(split: str, root: str | os.PathLike[str] | None = None, augment: bool = False,
                   block_size: int = 128, num_samples: int | None = None) -> CharDataset:
    """Char-level windows of the text file ``root`` (see :func:`slimtorch.data.text.load_tinyshakespeare`).

    Args:
        split: ``train`` (first 90% of the characters) or ``val``/``test`` (last 10%).
        root: the text file.
        augment: random window offsets.
        block_size: window length.
        num_samples: dataset length; implies random offsets.
    """
    path = user_root("text", root, WHAT)
    if not path.is_file():
        raise SlimtorchError(f"dataset 'text': {path} is not a file; expected {WHAT}")
    return load_tinyshakespeare(split, augment=augment, block_size=block_size, path=path, num_samples=num_samples)
