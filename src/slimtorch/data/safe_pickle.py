"""A restricted unpickler for data files (e.g. ``cifar-10-batches-py``) that cannot run code.

``pickle.load`` on an untrusted file can call any importable function. :class:`RestrictedUnpickler`
only resolves the few globals needed to rebuild numpy arrays and dtypes; any other global (``os.system``,
``builtins.eval``, a user class, ...) is refused with an error naming the file.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

from slimtorch.core.errors import SlimtorchError

#: ``(module, name)`` pairs a data pickle may reference: numpy array/dtype reconstruction (numpy 1 and
#: 2 module paths) and ``_codecs.encode``, which protocol-2 pickles use to store ``bytes``.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }
)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS`.

    Python 2 ``str`` objects (as in the original CIFAR-10 batches) are read as ``bytes``.
    """

    def __init__(self, file: io.BufferedIOBase) -> None:
        super().__init__(file, encoding="bytes")

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data file")


def restricted_loads(data: bytes, name: str) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`.

    Args:
        data: the pickle bytes.
        name: file name used in error messages.

    Raises:
        SlimtorchError: naming the file, if it references a forbidden global or is corrupt/truncated.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:
        raise SlimtorchError(f"{name}: refused or corrupt pickle: {e}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as e:
        raise SlimtorchError(f"{name}: corrupt or truncated pickle ({type(e).__name__}: {e})") from None
