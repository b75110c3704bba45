"""io.atomic: temp + fsync + rename, OS errors as StorageError, nothing partial left, temp files swept."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from slimtorch.core.errors import SlimtorchError
from slimtorch.io import atomic
from slimtorch.io.atomic import (
    StorageError,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    ensure_dir,
    sweep_temp_files,
)


def _disk_full(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_write_publishes_whole_file_with_default_mode(tmp_path):
    p = atomic_write_text(tmp_path / "a" / "b.txt", "hello")
    assert p.read_text() == "hello"
    assert stat.S_IMODE(p.stat().st_mode) == atomic.default_file_mode()
    assert [f.name for f in p.parent.iterdir()] == ["b.txt"]
    atomic_write_json(tmp_path / "c.json", {"x": 1})
    assert (tmp_path / "c.json").read_text() == '{\n  "x": 1\n}\n'


def test_failed_writer_keeps_old_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "f.bin"
    atomic_write_bytes(p, b"old")
    with pytest.raises(KeyboardInterrupt):  # a kill inside the writer
        with atomic_path(p) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert p.read_bytes() == b"old"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["f.bin"]


def test_disk_full_is_a_named_error_and_nothing_partial_is_left(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_fsync", _disk_full)
    with pytest.raises(StorageError, match=r"cannot write .*f\.bin: No space left on device \(the disk is full"):
        atomic_write_bytes(tmp_path / "f.bin", b"x" * 100)
    assert list(tmp_path.iterdir()) == []


def test_read_only_folder_is_a_named_error(tmp_path, monkeypatch):
    def read_only(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", read_only)
    with pytest.raises(StorageError, match="Read-only file system .*choose a writable --out folder") as e:
        atomic_write_text(tmp_path / "x.txt", "x")
    assert e.value.errno == errno.EROFS and isinstance(e.value, SlimtorchError)


def test_permission_denied_is_a_named_error(tmp_path, monkeypatch):
    def denied(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", denied)
    with pytest.raises(StorageError, match="Permission denied .*a folder you can write to"):
        atomic_write_text(tmp_path / "x.txt", "x")


def test_output_path_under_a_file_is_a_named_error(tmp_path):
    (tmp_path / "file").write_text("I am a file")
    with pytest.raises(StorageError, match="a file of that name .* is in the way"):
        atomic_write_text(tmp_path / "file" / "out.json", "{}")
    with pytest.raises(StorageError, match="cannot create folder"):
        ensure_dir(tmp_path / "file" / "sub")
    assert (tmp_path / "file").read_text() == "I am a file"


def test_torch_zip_writer_short_write_is_a_named_error(tmp_path):
    # torch.save reports a full disk as "unexpected pos N vs M" without an errno
    with pytest.raises(StorageError, match=r"c\.pt: Input/output error \(the write came up short; is the disk full\?"):
        with atomic_path(tmp_path / "c.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 287680 vs 287616")
    assert list(tmp_path.iterdir()) == []


def test_unrelated_runtime_error_passes_through(tmp_path):
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with atomic_path(tmp_path / "c.pt"):
            raise RuntimeError("shape mismatch")
    assert list(tmp_path.iterdir()) == []


def test_sweep_removes_only_temp_files(tmp_path):
    (tmp_path / ".tmp-abc.pt").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".tmp-def.json").write_text("{")
    (tmp_path / "keep.pt").write_bytes(b"y")
    assert [p.name for p in sweep_temp_files(tmp_path)] == [".tmp-abc.pt"]
    assert (tmp_path / "sub" / ".tmp-def.json").exists()
    assert [p.name for p in sweep_temp_files(tmp_path, recursive=True)] == [".tmp-def.json"]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["keep.pt"]
