"""Offline distillation: teacher logits computed once, stored memory-mapped, looked up by sample index.

Layout of a cache directory::

    logits.npy   float32 (N, C), row i = teacher logits of dataset[i] (read with numpy mmap)
    meta.json    {"key": sha256(teacher hash + data hash), "teacher_hash", "data_hash", "n", "num_classes"}

The key covers every teacher weight and buffer and a fingerprint of the data (length plus the bytes of
evenly spaced samples, all of them with ``data_samples=None``). When the key differs from the one on
disk the cache is stale: it is rebuilt and a warning is logged on the ``slimtorch.distill`` logger.

How the sample index reaches the teacher: wrap the dataset in :class:`IndexedDataset`, which yields
``(x, y, index)``; pass ``index=`` to ``Distiller(...)(x, y, index=index)``. The cached logits are those
of the *un-augmented* sample, so use this with data that is not augmented on the fly (Hinton et al.
trained the MNIST student on un-jittered images, which is what makes the cache exact).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from slimtorch.core.batches import output_tensor, split_batch

log = logging.getLogger("slimtorch.distill")

LOGITS_FILE = "logits.npy"
META_FILE = "meta.json"


class IndexedDataset(Dataset):
    """Wraps a dataset of ``(x, y)`` so items become ``(x, y, index)`` (index = position in ``dataset``).

    Dict items (``{"input_ids", "attention_mask", "labels"}``) become ``(named inputs, labels, index)``.

    Args:
        dataset: any map-style dataset of ``(x, y)`` pairs.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        item = self.dataset[i]
        if isinstance(item, Mapping):  # named inputs with their labels: ({input_ids, ...}, labels, i)
            inputs, y = split_batch(item)
            if y is None:
                raise ValueError(f"IndexedDataset item {i} is a dict without 'labels' (it has {sorted(item)}); "
                                 "the (inputs, labels, index) triples need a label per sample")
            return inputs.kwargs, y, i
        x, y = item[:2]
        return x, y, i


def model_hash(model: nn.Module) -> str:
    """sha256 over every parameter and buffer (names, shapes, dtypes and bytes) of ``model``."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _item_bytes(v: Any) -> bytes:
    if isinstance(v, Mapping):  # named inputs: every one, in key order
        return b"".join(k.encode() + _item_bytes(v[k]) for k in sorted(v))
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    if isinstance(v, np.ndarray):
        return np.ascontiguousarray(v).tobytes()
    return repr(v).encode()


def data_hash(dataset: Dataset, samples: int | None = 256) -> str:
    """Fingerprint of a dataset: its length and the bytes of ``samples`` evenly spaced items (all if None)."""
    n = len(dataset)  # type: ignore[arg-type]
    h = hashlib.sha256(f"n={n}".encode())
    idx = range(n) if samples is None or samples >= n else np.linspace(0, n - 1, samples).round().astype(int)
    for i in idx:
        item = dataset[int(i)]
        for part in ((item,) if isinstance(item, Mapping) else item[:2]):
            h.update(_item_bytes(part))
    return h.hexdigest()


class CachedTeacher(nn.Module):
    """A "teacher" that returns stored logits for sample indices instead of running a network.

    ``forward(index)`` takes a ``(B,)`` long tensor of dataset positions and returns ``(B, C)`` float32
    logits on the index's device. Build it with :func:`cache_teacher_outputs`.

    Args:
        path: cache directory (holding ``logits.npy`` and ``meta.json``).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        self.meta: dict[str, Any] = json.loads((self.path / META_FILE).read_text())
        self._logits = np.load(self.path / LOGITS_FILE, mmap_mode="r")  # (N, C), not loaded into RAM
        self.num_classes = int(self._logits.shape[-1])

    def __len__(self) -> int:
        return int(self._logits.shape[0])

    def forward(self, index: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, C)
        idx = torch.as_tensor(index).detach().cpu().long().numpy()
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise ValueError(
                f"sample index out of range for a teacher cache of {len(self)} samples: "
                f"min {idx.min()}, max {idx.max()}"
            )
        rows = np.asarray(self._logits[idx], dtype=np.float32)
        return torch.from_numpy(rows).to(torch.as_tensor(index).device)


def cache_teacher_outputs(
    teacher: nn.Module,
    dataset: Dataset,
    path: str | os.PathLike[str],
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    data_samples: int | None = 256,
) -> CachedTeacher:
    """Compute (or reuse) the teacher's logits for every sample of ``dataset``.

    Args:
        teacher: the trained teacher; run in eval mode under ``torch.no_grad()``.
        dataset: map-style dataset of ``(x, y)`` items, in the order the indices will refer to.
        path: cache directory (created if missing).
        batch_size: teacher batch size while building.
        device: where to run the teacher (default: where its parameters are).
        data_samples: items hashed for the data fingerprint (``None`` = every item).

    Returns:
        A :class:`CachedTeacher` over the stored logits.
    """
    path = Path(path)
    t_hash, d_hash = model_hash(teacher), data_hash(dataset, data_samples)
    key = hashlib.sha256(f"{t_hash}:{d_hash}".encode()).hexdigest()
    meta_path = path / META_FILE
    if meta_path.exists() and (path / LOGITS_FILE).exists():
        try:
            old = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            old = {}
        if old.get("key") == key:
            return CachedTeacher(path)
        what = [
            w
            for w, a, b in (
                ("teacher weights", old.get("teacher_hash"), t_hash),
                ("data", old.get("data_hash"), d_hash),
            )
            if a != b
        ]
        log.warning(
            "teacher cache %s is stale (%s changed); rebuilding it", path, " and ".join(what) or "format"
        )
    else:
        log.info("building teacher cache %s (%d samples)", path, len(dataset))  # type: ignore[arg-type]
    _build(teacher, dataset, path, batch_size, device)
    meta = {
        "key": key,
        "teacher_hash": t_hash,
        "data_hash": d_hash,
        "n": len(dataset),  # type: ignore[arg-type]
        "data_samples": data_samples,
    }
    tmp = path / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, meta_path)  # the meta file is written last: a crash leaves a cache that is rebuilt
    return CachedTeacher(path)


@torch.no_grad()
def _build(
    teacher: nn.Module, dataset: Dataset, path: Path, batch_size: int, device: str | torch.device | None
) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / META_FILE).unlink(missing_ok=True)
    if device is None:
        p = next(teacher.parameters(), None)
        device = p.device if p is not None else "cpu"
    was_training = teacher.training
    teacher.eval()
    n = len(dataset)  # type: ignore[arg-type]
    out: np.ndarray | None = None
    tmp = path / (LOGITS_FILE + ".tmp.npy")
    start = 0
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            inputs = split_batch(batch)[0].to(device)  # every named input (input_ids, attention_mask, ...)
            z = output_tensor(inputs(teacher)).float().cpu()  # (B, C) or (B, T, C)
            if out is None:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, *z.shape[1:]))
            out[start : start + len(z)] = z.numpy()
            start += len(z)
        if out is None:
            raise ValueError("cannot cache teacher outputs of an empty dataset")
        out.flush()
        del out
        os.replace(tmp, path / LOGITS_FILE)
    finally:
        tmp.unlink(missing_ok=True)
        teacher.train(was_training)
