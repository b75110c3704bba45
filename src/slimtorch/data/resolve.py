"""From what a user typed (``--data``, ``--root``) to a registered dataset name and a root that exists.

``--data`` is a registered name (``mnist``, ``image_folder``, ...) or a path to the user's data, whose
kind is told from what is there:

==========================================================  ==============
``dataset_dict.json`` / ``dataset_info.json`` / ``state.json``  ``hf_disk``
a ``.npz`` file, a ``.npy`` file, a folder of ``.npy`` files     ``arrays``
a folder of subfolders (classes, or ``train``/``test``)         ``image_folder``
any other file (UTF-8 text)                                     ``text``
==========================================================  ==============
"""

from __future__ import annotations

import os
from pathlib import Path

from slimtorch.core.errors import SlimtorchError
from slimtorch.data.registry import DATASETS

HF_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")


def detect_kind(path: Path) -> str:
    """The user dataset that reads ``path`` (see the module docstring)."""
    if path.is_dir():
        if any((path / m).is_file() for m in HF_MARKERS):
            return "hf_disk"
        if any(path.glob("*.npy")):
            return "arrays"
        if any(p.is_dir() for p in path.iterdir()):
            return "image_folder"
        raise SlimtorchError(f"{path}: cannot tell what data this folder holds; expected class subfolders of "
                             "images, x.npy and y.npy, or a datasets save_to_disk folder")
    if path.suffix in (".npz", ".npy"):
        return "arrays"
    return "text"


def resolve(data: str, root: str | os.PathLike[str] | None = None) -> tuple[str, str | None]:
    """``(dataset name, root)`` for ``--data`` / ``--root``.

    Raises:
        SlimtorchError: ``root`` does not exist; ``data`` is neither a registered name nor an existing path;
            both a data path and ``root`` were given.
    """
    if root is not None and not Path(root).expanduser().exists():
        raise SlimtorchError(f"--root {root} does not exist (it is not replaced by $SLIMTORCH_DATA; give a "
                             "folder or file that exists, or leave --root out)")
    if DATASETS.find(data) is not None:
        return data, None if root is None else str(root)
    p = Path(data).expanduser()
    if not p.exists():
        try:
            DATASETS.get(data)  # the registry's error: the valid names and the closest match
        except ValueError as e:
            raise SlimtorchError(f"--data: {e} (and no file or folder {data} exists)") from None
    if root is not None:
        raise ValueError(f"--data {data} is already a path; leave out --root {root}")
    return detect_kind(p), str(p)
