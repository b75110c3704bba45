"""Every file slimtorch publishes is written atomically, through this one helper.

``with atomic_path(dest) as tmp:`` yields a temporary path in ``dest``'s folder (named ``.tmp-*``, with
``dest``'s suffix so writers that look at the extension behave); the caller writes ``tmp`` with any
writer (``torch.save``, ``safetensors``, ``onnx.save``, ``np.save``); on success the bytes are made
durable (``fsync``), given the mode a plain ``open()`` would give, and renamed over ``dest``
(``os.replace``: atomic on POSIX), then the folder entry is made durable. A kill at any point leaves
either the old file or the new one, never half of one; an exception (including ``KeyboardInterrupt``)
removes the temporary file.

Every ``OSError`` on the way (disk full, read-only folder, no permission, an output path under a file)
becomes a :class:`StorageError` naming the file and what to do, so the CLI prints one line instead of a
traceback and no partial file is left. :func:`sweep_temp_files` removes ``.tmp-*`` files a killed
process left behind; run folders call it when they start.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from slimtorch.core.errors import SlimtorchError

#: Prefix of every temporary file this module creates (what :func:`sweep_temp_files` removes).
TEMP_PREFIX = ".tmp-"

_HINTS = {
    errno.ENOSPC: "the disk is full; free space or choose another --out folder",
    errno.EDQUOT: "the disk quota is exhausted; free space or choose another --out folder",
    errno.EROFS: "the file system is read-only; choose a writable --out folder",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "operation not permitted; choose a folder you can write to",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EEXIST: "a part of the path exists and is not a folder; choose another path",
    errno.EISDIR: "the path is a folder, not a file; choose a file name",
    errno.ENAMETOOLONG: "the path is too long; choose a shorter one",
    errno.EIO: "the write came up short; is the disk full?",
}


class StorageError(SlimtorchError):
    """Writing or reading a file failed at the operating-system level (disk full, read-only, bad path).

    Attributes:
        path: the file or folder involved.
        errno: the ``errno`` of the underlying ``OSError`` (``errno.ENOSPC`` for a full disk), or ``None``.
    """

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None, err: int | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)
        self.errno = err


def storage_error(e: OSError, path: str | os.PathLike[str], action: str = "write") -> StorageError:
    """A :class:`StorageError` for ``e`` raised while doing ``action`` to ``path``."""
    if isinstance(e, StorageError):
        return e
    reason = os.strerror(e.errno) if e.errno else str(e)
    hint = _HINTS.get(e.errno or -1, "check the path and the disk")
    return StorageError(f"cannot {action} {path}: {reason} ({hint}); nothing partial was left behind",
                        path, e.errno)


def _fsync(fd: int) -> None:
    """``os.fsync``, as one name tests patch to simulate a full disk for every writer at once."""
    os.fsync(fd)


def default_file_mode() -> int:
    """The mode ``open()`` would give a new file under the current umask (usually 0o644).

    ``tempfile.mkstemp`` creates 0o600 files; an atomically renamed temp file keeps that mode, so files we
    publish that way get this mode first, as a plain ``open(path, "w")`` would have given them.
    """
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def ensure_dir(path: str | os.PathLike[str]) -> Path:
    """``mkdir -p path``, with an ``OSError`` (a file in the way, read-only disk) as a :class:`StorageError`."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StorageError(f"cannot create folder {p}: a file of that name (or above it) is in the way; "
                           "choose another path", p, errno.EEXIST) from None
    except OSError as e:
        raise storage_error(e, p, "create folder") from None
    return p


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # some file systems cannot open folders; the rename is still atomic
    try:
        _fsync(fd)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EBADF):  # folders that cannot be fsynced (some network FS)
            return
        raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, what: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; publish it as ``path`` when the block succeeds.

    Args:
        path: the file to write.
        what: a short name for messages (``"checkpoint"``); defaults to the file name.

    Raises:
        StorageError: any ``OSError`` while creating, writing, syncing or renaming (the temp file is removed).
    """
    dest = Path(path)
    ensure_dir(dest.parent)
    label = f"{what} {dest}" if what else str(dest)
    try:
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=TEMP_PREFIX, suffix=dest.suffix or ".part")
        os.close(fd)
    except OSError as e:
        raise storage_error(e, label) from None
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the bytes reach the disk before the rename publishes them
            _fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except OSError as e:
        raise storage_error(e, label) from None
    except RuntimeError as e:  # torch.save / onnx wrap the OS error of a failed write in a RuntimeError
        cause = _os_cause(e)
        if cause is None:
            raise
        raise storage_error(cause, label) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _os_cause(e: BaseException) -> OSError | None:
    """The ``OSError`` behind a library's wrapper exception, if any (``torch.save`` raises RuntimeError)."""
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 8:
        if isinstance(cur, OSError):
            return cur
        cur = cur.__cause__ or cur.__context__
        seen += 1
    text = str(e)
    for code in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
        if os.strerror(code) in text:
            return OSError(code, os.strerror(code))
    if any(m in text for m in _WRITE_FAILURES):
        return OSError(errno.EIO, f"the write failed ({text.splitlines()[0][:120]})")
    return None


#: What torch's zip writer says when a write comes up short (e.g. ``unexpected pos 287680 vs 287616`` on a
#: full disk): it reports no errno, so these messages count as a failed write.
_WRITE_FAILURES = ("unexpected pos", "file write failed", "PytorchStreamWriter failed")


def atomic_write(path: str | os.PathLike[str], writer: Callable[[Path], Any], *, what: str = "") -> Path:
    """Call ``writer(tmp_path)`` and publish the result as ``path`` (see :func:`atomic_path`)."""
    with atomic_path(path, what=what) as tmp:
        writer(tmp)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | bytearray | memoryview, *,
                       what: str = "") -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), what=what)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, what: str = "") -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), what=what)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, default: Callable[[Any], Any] | None = None,
                      what: str = "") -> Path:
    """Write ``obj`` as indented JSON (plus a newline) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=default) + "\n", what=what)


def sweep_temp_files(folder: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """Remove the ``.tmp-*`` files a killed writer left in ``folder`` (and its sub-folders if ``recursive``).

    Returns:
        The paths removed.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    pattern = f"**/{TEMP_PREFIX}*" if recursive else f"{TEMP_PREFIX}*"
    removed = []
    for p in root.glob(pattern):
        if p.is_file() or p.is_symlink():
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed
