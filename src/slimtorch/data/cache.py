"""Decode once, then reload fast: decoded datasets are cached as ``.npy`` files in the cache directory.

The cache key is a fingerprint of the source files (resolved path, size, modification time), so a
changed or different source is decoded again instead of silently reusing stale arrays. Files are
written to a temporary name and renamed, so an interrupted decode never leaves a half-written cache;
a cache that cannot be written (read-only home, full disk) only costs speed, never correctness.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from slimtorch.data.paths import cache_dir
from slimtorch.io.atomic import StorageError, atomic_write, atomic_write_text, ensure_dir, sweep_temp_files

#: Bump when the decoded layout changes so old caches are ignored.
CACHE_VERSION = 1
_MANIFEST = "manifest.json"


def fingerprint(paths: Iterable[Path]) -> str:
    """A short hash of the files' resolved paths, sizes and modification times."""
    h = hashlib.sha1(f"v{CACHE_VERSION}".encode())
    for p in paths:
        st = Path(p).stat()
        h.update(f"{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def decoded_dir(dataset: str, key: str) -> Path:
    """Where the decoded arrays of ``dataset`` with source fingerprint ``key`` live."""
    return cache_dir() / "decoded" / f"{dataset}-{key}"


def cached_arrays(
    dataset: str, key: str, build: Callable[[], dict[str, np.ndarray]], *, use_cache: bool = True
) -> dict[str, np.ndarray]:
    """Load the arrays cached under ``(dataset, key)``, or ``build()`` them and cache the result.

    Args:
        dataset: dataset name (part of the cache directory name).
        key: fingerprint of the source files (see :func:`fingerprint`).
        build: decodes the source; returns named arrays (no object dtypes: caches load without pickle).
        use_cache: read and write the cache; ``False`` always decodes.

    Returns:
        The named arrays.
    """
    d = decoded_dir(dataset, key)
    if use_cache:
        arrays = _read(d)
        if arrays is not None:
            return arrays
    arrays = build()
    if use_cache:
        try:
            _write(d, arrays)
        except (OSError, StorageError) as e:
            shutil.rmtree(d, ignore_errors=True)  # no half-written cache stays behind
            warnings.warn(
                f"could not write the {dataset} cache to {d} ({e}); it will be decoded again next time",
                stacklevel=2,
            )
    return arrays


def _read(d: Path) -> dict[str, np.ndarray] | None:
    manifest = d / _MANIFEST
    if not manifest.is_file():
        return None
    try:
        names = json.loads(manifest.read_text())["arrays"]
        return {n: np.load(d / f"{n}.npy", allow_pickle=False) for n in names}
    except (OSError, ValueError, KeyError, TypeError):
        return None  # damaged cache: decode again and overwrite it


def _write(d: Path, arrays: dict[str, np.ndarray]) -> None:
    ensure_dir(d)
    sweep_temp_files(d)  # what a killed earlier write left
    for name, arr in arrays.items():
        atomic_write(d / f"{name}.npy", lambda tmp, arr=arr: _save_npy(tmp, arr), what="data cache")
    # The manifest is written last: its presence means every array is complete.
    atomic_write_text(d / _MANIFEST, json.dumps({"version": CACHE_VERSION, "arrays": sorted(arrays)}),
                      what="data cache")


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)
