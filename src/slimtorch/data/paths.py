"""Where datasets are looked up and where decoded arrays are cached.

Lookup order (DESIGN.md, "Data"): the ``root=`` argument, then ``$SLIMTORCH_DATA``, then the cache
directory (``$SLIMTORCH_CACHE`` or ``~/.cache/slimtorch``). Within each of these bases a dataset may sit
in ``<base>/<name>/`` (the conventional place, e.g. ``$SLIMTORCH_DATA/mnist/*.gz``) or in ``<base>/``
itself. When nothing is found the error lists every place that was searched and how to fix it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from slimtorch.core.errors import SlimtorchError

#: Environment variable naming the directory that holds datasets (``$SLIMTORCH_DATA/<name>/...``).
ENV_DATA = "SLIMTORCH_DATA"
#: Environment variable overriding the cache directory (default ``~/.cache/slimtorch``).
ENV_CACHE = "SLIMTORCH_CACHE"


def cache_dir() -> Path:
    """The slimtorch cache directory: ``$SLIMTORCH_CACHE`` or ``~/.cache/slimtorch`` (may not exist)."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "slimtorch"


@dataclass(frozen=True)
class Place:
    """A directory searched for a dataset, with where it came from (for error messages)."""

    path: Path
    origin: str


def search_places(name: str, root: str | os.PathLike[str] | None = None) -> list[Place]:
    """Directories searched for dataset ``name``, in lookup order, without duplicates.

    Args:
        name: dataset name, used as the conventional sub-directory (``<base>/<name>/``).
        root: explicit base directory given by the caller (searched first).

    Returns:
        ``<base>/<name>`` then ``<base>`` for each base: ``root``, ``$SLIMTORCH_DATA``, the cache dir.
    """
    bases: list[tuple[Path, str]] = []
    if root is not None:
        bases.append((Path(root).expanduser(), "root= argument"))
    env = os.environ.get(ENV_DATA)
    if env:
        bases.append((Path(env).expanduser(), f"${ENV_DATA}"))
    bases.append((cache_dir(), "cache dir"))
    places: list[Place] = []
    seen: set[Path] = set()
    for base, origin in bases:
        for p in (base / name, base):
            if p not in seen:
                seen.add(p)
                places.append(Place(p, origin))
    return places


def not_found_error(
    name: str, wanted: str, places: Sequence[Place], notes: dict[Path, str] | None = None
) -> SlimtorchError:
    """The error raised when a dataset's files are nowhere: lists every place and how to fix it.

    Args:
        name: dataset name.
        wanted: what was looked for, e.g. ``"train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]"``.
        places: every directory searched, in order.
        notes: optional remark per directory (e.g. "has the images but not the labels").
    """
    notes = notes or {}
    lines = []
    for p in places:
        note = f"; {notes[p.path]}" if p.path in notes else ""
        lines.append(f"  {p.path}  ({p.origin}{note})")
    env = os.environ.get(ENV_DATA)
    env_state = f"${ENV_DATA}={env}" if env else f"${ENV_DATA} is not set"
    return SlimtorchError(
        f"{name} data not found: looked for {wanted} in:\n"
        + "\n".join(lines)
        + f"\n({env_state}.) Put the files in one of these places, pass root=DIR, or set {ENV_DATA} to a "
        f"directory holding {name}/, e.g. `export {ENV_DATA}=/path/to/data` with the files in "
        f"/path/to/data/{name}/."
    )
