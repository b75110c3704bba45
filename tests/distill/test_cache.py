"""Offline teacher cache: exact logits by index, reuse, stale detection with a rebuild message."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from slimtorch.distill import (
    KD,
    CachedTeacher,
    Distiller,
    IndexedDataset,
    cache_teacher_outputs,
    data_hash,
    model_hash,
)
from slimtorch.models import create


def _setup(n=40):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))
    teacher = create("mlp", in_features=64, hidden=(24,), num_classes=10).eval()
    return data, teacher


def test_cache_holds_teacher_logits_by_index(tmp_path):
    data, teacher = _setup()
    cached = cache_teacher_outputs(teacher, data, tmp_path / "c", batch_size=16)
    assert isinstance(cached, CachedTeacher) and len(cached) == 40 and cached.num_classes == 10
    idx = torch.tensor([3, 0, 39, 3])
    with torch.no_grad():
        ref = teacher(data.tensors[0][idx])
    assert torch.allclose(cached(idx), ref, atol=1e-6)
    assert isinstance(np.load(tmp_path / "c" / "logits.npy", mmap_mode="r"), np.memmap)


def test_cache_is_reused_when_nothing_changed(tmp_path, caplog):
    data, teacher = _setup()
    cache_teacher_outputs(teacher, data, tmp_path)
    mtime = (tmp_path / "logits.npy").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="slimtorch.distill"):
        cache_teacher_outputs(teacher, data, tmp_path)
    assert (tmp_path / "logits.npy").stat().st_mtime_ns == mtime
    assert "stale" not in caplog.text and "building" not in caplog.text


def test_stale_cache_is_rebuilt_with_a_message(tmp_path, caplog):
    data, teacher = _setup()
    cache_teacher_outputs(teacher, data, tmp_path)
    with torch.no_grad():
        teacher.net[1].weight.add_(0.1)  # teacher changed after the cache was written
    with caplog.at_level(logging.WARNING, logger="slimtorch.distill"):
        cached = cache_teacher_outputs(teacher, data, tmp_path)
    assert "is stale (teacher weights changed); rebuilding" in caplog.text
    with torch.no_grad():
        assert torch.allclose(cached(torch.arange(5)), teacher(data.tensors[0][:5]), atol=1e-6)
    caplog.clear()
    other = TensorDataset(data.tensors[0] * 2, data.tensors[1])
    with caplog.at_level(logging.WARNING, logger="slimtorch.distill"):
        cache_teacher_outputs(teacher, other, tmp_path)
    assert "is stale (data changed); rebuilding" in caplog.text


def test_hashes_are_content_based():
    data, teacher = _setup()
    t2 = create("mlp", in_features=64, hidden=(24,), num_classes=10)
    t2.load_state_dict(teacher.state_dict())
    assert model_hash(t2) == model_hash(teacher)
    assert data_hash(data, None) == data_hash(TensorDataset(*[t.clone() for t in data.tensors]), None)
    assert data_hash(data, None) != data_hash(TensorDataset(data.tensors[0][:-1], data.tensors[1][:-1]), None)


def test_distiller_with_cached_teacher_matches_live_teacher(tmp_path):
    data, teacher = _setup()
    cached = cache_teacher_outputs(teacher, data, tmp_path)
    student = create("mlp", in_features=64, hidden=(16,), num_classes=10)
    live = Distiller(student, teacher, [KD(temperature=4.0)])
    offline = Distiller(student, cached, [KD(temperature=4.0)])
    x, y, idx = next(iter(DataLoader(IndexedDataset(data), batch_size=8, shuffle=True)))
    assert torch.allclose(offline(x, y, index=idx)["loss"], live(x, y)["loss"], atol=1e-6)
    with pytest.raises(ValueError, match="CachedTeacher needs the sample indices"):
        offline(x, y)
    with pytest.raises(ValueError, match="out of range"):
        cached(torch.tensor([40]))


def test_cached_teacher_cannot_give_features(tmp_path):
    from slimtorch.distill import Hint

    data, teacher = _setup()
    cached = cache_teacher_outputs(teacher, data, tmp_path)
    with pytest.raises(ValueError, match="stores logits only"):
        Distiller(create("mlp", in_features=64, hidden=(16,)), cached, [Hint("net.2", "net.2")])


def test_class_count_mismatch_with_cache(tmp_path):
    data, teacher = _setup()
    cached = cache_teacher_outputs(teacher, data, tmp_path)
    with pytest.raises(ValueError, match="student has 5 classes but teacher 0 has 10"):
        Distiller(create("mlp", in_features=64, hidden=(16,), num_classes=5), cached, [KD(temperature=2.0)])


def test_fit_forwards_sample_indices_to_a_cached_teacher(tmp_path):
    """``fit`` passes a batch's third item as ``index=``, so offline distillation runs in the trainer."""
    from slimtorch.train import fit

    data, teacher = _setup()
    cached = cache_teacher_outputs(teacher, data, tmp_path / "c")
    torch.manual_seed(0)
    s_live = create("mlp", in_features=64, hidden=(16,), num_classes=10)
    s_off = create("mlp", in_features=64, hidden=(16,), num_classes=10)
    s_off.load_state_dict(s_live.state_dict())
    fit(Distiller(s_live, teacher, [KD(temperature=4.0)]), IndexedDataset(data), 2, batch_size=8, lr=0.05,
        progress=False, seed=1)
    fit(Distiller(s_off, cached, [KD(temperature=4.0)]), IndexedDataset(data), 2, batch_size=8, lr=0.05,
        progress=False, seed=1)
    for a, b in zip(s_live.parameters(), s_off.parameters()):
        assert torch.allclose(a, b, atol=1e-5)


def test_disk_full_while_caching_is_a_named_error_without_partial_files(tmp_path, monkeypatch):
    import errno
    import os

    from slimtorch.io import atomic

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic, "_fsync", full)
    data, teacher = _setup()
    with pytest.raises(atomic.StorageError, match=r"cannot write teacher cache .*logits\.npy: No space left on device"):
        cache_teacher_outputs(teacher, data, tmp_path / "c", batch_size=16)
    assert [p.name for p in (tmp_path / "c").iterdir()] == []  # no logits, no meta, no temp file
    monkeypatch.undo()
    assert len(cache_teacher_outputs(teacher, data, tmp_path / "c", batch_size=16)) == 40  # rebuilt cleanly
