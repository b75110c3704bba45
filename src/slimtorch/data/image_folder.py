"""Decoding image-classification trees: ``<split>/<class>/<file>.jpg`` in a directory or a tar archive.

Classes are the sorted sub-directory names of ``train/`` (index = label); within a class, files are
ordered by name, so the decoded arrays are the same however the tree or archive was ordered. All
images of a tree must have the same size. A file that does not decode is named in the error.
"""

from __future__ import annotations

import io
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np

from slimtorch.core.errors import SlimtorchError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm")
SPLITS = ("train", "test")


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, ...) into RGB ``(H, W, 3)`` ``uint8``.

    Raises:
        SlimtorchError: naming ``name`` if the image is corrupt, truncated or not an image.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # decodes fully: truncated data raises here, not later
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise SlimtorchError(f"corrupt image {name}: {e}") from None


class ImageCollector:
    """Accumulates decoded images per split and class, then stacks them into arrays."""

    def __init__(self) -> None:
        # split -> list of (class name, file name, full name for errors, (H, W, 3) uint8)
        self.items: dict[str, list[tuple[str, str, str, np.ndarray]]] = {s: [] for s in SPLITS}

    def __len__(self) -> int:
        return sum(len(v) for v in self.items.values())

    def add(self, split: str, cls: str, fname: str, data: bytes, name: str) -> None:
        """Decode ``data`` (named ``name`` in errors) as an image of class ``cls`` in ``split``."""
        self.items[split].append((cls, fname, name, decode_image(data, name)))

    def arrays(self, source: str) -> dict[str, np.ndarray]:
        """``{split}_images`` ``(N, 3, H, W)`` uint8, ``{split}_labels`` ``(N,)`` int64 and ``classes``.

        Args:
            source: the tree or archive, named in errors.
        """
        classes = sorted({c for c, *_ in self.items["train"]})
        if not classes:
            raise SlimtorchError(f"{source}: no images found under train/<class>/ ({', '.join(IMAGE_EXTS)})")
        out: dict[str, np.ndarray] = {"classes": np.array(classes)}
        shape = self.items["train"][0][3].shape
        for split in SPLITS:
            items = sorted(self.items[split], key=lambda t: (t[0], t[1]))
            if not items:
                raise SlimtorchError(f"{source}: no images found under {split}/<class>/")
            extra = sorted({c for c, *_ in items} - set(classes))
            if extra:
                raise SlimtorchError(f"{source}: {split}/ has classes {extra} that train/ lacks ({classes})")
            for _, _, name, arr in items:
                if arr.shape != shape:
                    raise SlimtorchError(
                        f"{name}: image size {arr.shape[:2]} differs from {shape[:2]} of the others"
                    )
            images = np.stack([t[3] for t in items])  # (N, H, W, 3)
            out[f"{split}_images"] = np.ascontiguousarray(images.transpose(0, 3, 1, 2))  # (N, 3, H, W)
            out[f"{split}_labels"] = np.array([classes.index(t[0]) for t in items], dtype=np.int64)
        return out


def split_class_file(member: str) -> tuple[str, str, str] | None:
    """``(split, class, file)`` if ``member`` looks like ``[prefix/]<split>/<class>/<file.jpg>``."""
    parts = PurePosixPath(member).parts
    if len(parts) < 3 or parts[-3] not in SPLITS or not parts[-1].lower().endswith(IMAGE_EXTS):
        return None
    return parts[-3], parts[-2], parts[-1]


def list_tree(base: Path) -> list[tuple[str, str, Path]]:
    """Every image file of ``base/<split>/<class>/`` as ``(split, class, path)``."""
    files = []
    for split in SPLITS:
        d = base / split
        if not d.is_dir():
            continue
        for cls_dir in sorted(p for p in d.iterdir() if p.is_dir()):
            for f in sorted(cls_dir.iterdir()):
                if f.is_file() and f.name.lower().endswith(IMAGE_EXTS):
                    files.append((split, cls_dir.name, f))
    return files


def iter_tar(path: Path) -> Iterator[tuple[str, bytes]]:
    """``(member name, content)`` of every regular file of a (compressed) tar, streamed in one pass.

    Nothing is extracted to disk, so member names cannot escape anywhere.

    Raises:
        SlimtorchError: naming the archive if it is corrupt or truncated.
    """
    try:
        with tarfile.open(path, mode="r|*") as tf:
            for m in tf:
                if m.isfile():
                    f = tf.extractfile(m)
                    if f is not None:
                        yield m.name, f.read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise SlimtorchError(f"{path}: corrupt or truncated tar archive ({e})") from None
