"""Atomic training checkpoints.

A checkpoint is a ``torch.save`` of plain data only (tensors, numbers, strings, lists, dicts), so it is
read back with ``torch.load(weights_only=True)``: loading a checkpoint never unpickles code. It is
written to a temporary file in the same directory and renamed over the old one, so a kill in the middle
of a write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from slimtorch.core.errors import SlimtorchError
from slimtorch.io.atomic import atomic_write

CHECKPOINT_FILE = "checkpoint.pt"


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to ``path`` through :func:`slimtorch.io.atomic.atomic_path` (temp + fsync + rename)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp), what="checkpoint")


def rng_state() -> dict[str, Any]:
    """The torch, numpy and python RNG states as plain data."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": _to_lists(random.getstate()),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    random.setstate(_to_tuples(state["python"]))


def _to_lists(v: Any) -> Any:
    return [_to_lists(x) for x in v] if isinstance(v, (tuple, list)) else v


def _to_tuples(v: Any) -> Any:
    return tuple(_to_tuples(x) for x in v) if isinstance(v, (tuple, list)) else v


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by the trainer (``weights_only=True``: no code is unpickled)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SlimtorchError(f"cannot read checkpoint {path}: {e}") from None
