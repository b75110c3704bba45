"""A name -> object registry used for models, datasets, observers, importance scores, losses, ...

A new method is one file plus one decorator::

    IMPORTANCE = Registry("importance")

    @IMPORTANCE.register("l1")
    def l1_scores(weight): ...
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; unknown names raise an error that lists the valid ones.

    Args:
        kind: what is registered ("model", "dataset", ...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None, *, overwrite: bool = False) -> Any:
        """Register ``obj`` under ``name``; without ``obj`` returns a decorator."""

        def deco(o: T) -> T:
            key = name.lower()
            if key in self._items and not overwrite:
                raise ValueError(f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it")
            self._items[key] = o
            return o

        return deco(obj) if obj is not None else deco

    def get(self, name: str) -> T:
        """Return the object registered under ``name`` (case-insensitive)."""
        if not isinstance(name, str):
            raise ValueError(f"{self.kind} name must be a string, got {type(name).__name__}")
        key = name.lower()
        if key not in self._items:
            close = difflib.get_close_matches(key, self._items, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._items))}.{hint}")
        return self._items[key]

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def call_with_known_kwargs(fn: Callable[..., T], **kwargs: Any) -> T:
    """Call ``fn`` with only the keyword arguments its signature accepts."""
    import inspect

    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(**kwargs)
    return fn(**{k: v for k, v in kwargs.items() if k in params})
