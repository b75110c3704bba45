"""Reading IDX files (the MNIST format of LeCun et al.), gzipped or not, with full validation.

Layout: a 4-byte big-endian magic ``0x0000 TT DD`` (``TT`` the element type, ``DD`` the number of
dimensions), then ``DD`` big-endian ``uint32`` sizes, then ``prod(sizes)`` elements. MNIST images have
magic 2051 (``0x00000803``: ubyte, 3 dims ``N, rows, cols``) and labels 2049 (``0x00000801``: ubyte, 1 dim).
Every failure names the file: a wrong magic number, a header that promises more (or fewer) bytes
than the file holds, a truncated or corrupt gzip stream.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from slimtorch.core.errors import SlimtorchError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
#: IDX element type code -> numpy dtype (multi-byte types are big-endian).
IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The file's content, gunzipped if it is a gzip stream (detected by content, not by name)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SlimtorchError(f"cannot read {path}: {e}") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise SlimtorchError(f"{path}: corrupt or truncated gzip file ({e})") from None
    return raw


def parse_idx(raw: bytes, name: str, expected_magic: int | None = None) -> np.ndarray:
    """Decode IDX bytes into an array of the header's shape (native byte order).

    Args:
        raw: the uncompressed file content.
        name: file name used in error messages.
        expected_magic: required magic number (e.g. :data:`IMAGES_MAGIC`), or ``None`` for any.
    """
    if len(raw) < 4:
        raise SlimtorchError(f"{name}: truncated IDX file ({len(raw)} bytes, not even a header)")
    magic = int.from_bytes(raw[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise SlimtorchError(
            f"{name}: bad IDX magic number {magic} (expected {expected_magic}); the file is corrupt "
            f"or not the expected IDX file"
        )
    code, ndim = raw[2], raw[3]
    if raw[:2] != b"\x00\x00" or code not in IDX_DTYPES or ndim == 0:
        raise SlimtorchError(f"{name}: not an IDX file (magic number {magic})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise SlimtorchError(f"{name}: truncated IDX header ({len(raw)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(IDX_DTYPES[code])
    want = math.prod(dims) * dtype.itemsize
    have = len(raw) - header
    if have != want:
        what = "truncated" if have < want else "has trailing bytes"
        raise SlimtorchError(
            f"{name}: header says shape {tuple(dims)} ({want} data bytes) but the file holds {have}: "
            f"the file {what} or is corrupt"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)  # writable, native order


def read_idx(path: str | os.PathLike[str], expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or not); see :func:`parse_idx`."""
    return parse_idx(read_bytes(path), str(path), expected_magic)
