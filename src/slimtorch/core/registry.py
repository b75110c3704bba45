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
        case_sensitive: keep names as given (class names: ``"AGP"``); by default names are lower-cased.
    """

    def __init__(self, kind: str, case_sensitive: bool = False) -> None:
        self.kind = kind
        self.case_sensitive = case_sensitive
        self._items: dict[str, T] = {}

    def _key(self, name: str) -> str:
        return name if self.case_sensitive else name.lower()

    def register(self, name: str, obj: T | None = None, *, overwrite: bool = False) -> Any:
        """Register ``obj`` under ``name``; without ``obj`` returns a decorator."""

        def deco(o: T) -> T:
            key = self._key(name)
            if key in self._items and not overwrite:
                raise ValueError(f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it")
            self._items[key] = o
            return o

        return deco(obj) if obj is not None else deco

    def get(self, name: str) -> T:
        """Return the object registered under ``name`` (case-insensitive)."""
        if not isinstance(name, str):
            raise ValueError(f"{self.kind} name must be a string, got {type(name).__name__}")
        key = self._key(name)
        if key not in self._items:
            close = difflib.get_close_matches(key, self._items, n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._items))}.{hint}")
        return self._items[key]

    def find(self, name: object) -> T | None:
        """The object registered under ``name``, else None (also for a name that is not a string)."""
        return self._items.get(self._key(name)) if isinstance(name, str) else None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


class TypeRegistry(Generic[T]):
    """Maps types to objects (config type -> handler, layer type -> surgery rule), looked up along the MRO.

    The one dispatch table of the library: ``quantize_``/``prune_`` find the handler of a config's type,
    surgery and MAC counting find the rule of a layer's type. A subclass without its own entry uses its
    nearest registered base.

    Args:
        kind: what is registered (``"quantizer"``, ``"surgery rule"``, ...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[type, T] = {}

    def register(self, key: type, obj: T | None = None, *, overwrite: bool = False) -> Any:
        """Register ``obj`` for ``key`` (a class); without ``obj`` returns a decorator."""
        if not isinstance(key, type):
            raise ValueError(f"a {self.kind} is registered for a class, got {key!r}")

        return _store(self._items, key, obj, overwrite, f"a {self.kind} for {key.__name__}")

    def find(self, key: type) -> T | None:
        """The entry of ``key`` or of its nearest registered base class, else None."""
        for t in key.__mro__:
            if t in self._items:
                return self._items[t]
        return None

    def get(self, key: type) -> T:
        """Like :meth:`find`, but an unregistered type raises an error listing the registered ones."""
        found = self.find(key)
        if found is None:
            known = ", ".join(sorted(t.__name__ for t in self._items))
            raise ValueError(f"no {self.kind} registered for {key.__name__}; known: {known}")
        return found

    def types(self) -> list[type]:
        """Registered types, in registration order."""
        return list(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def pop(self, key: type) -> T:
        """Remove and return the entry registered for exactly ``key`` (e.g. to undo a test's registration)."""
        return self._items.pop(key)

    def __delitem__(self, key: type) -> None:
        del self._items[key]

    def __iter__(self) -> Iterator[type]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[type, T]]:
        return list(self._items.items())

    def __repr__(self) -> str:
        return f"TypeRegistry({self.kind!r}, {[t.__name__ for t in self._items]})"


def _store(table: dict[Any, Any], key: Any, obj: Any, overwrite: bool, what: str) -> Any:
    """Put ``obj`` under ``key`` (or return a decorator that does); another object already there is an
    error naming ``what`` unless ``overwrite``. Re-registering the same object is a no-op."""

    def deco(o: Any) -> Any:
        if key in table and table[key] is not o and not overwrite:
            raise ValueError(f"{what} is already registered; pass overwrite=True to replace it")
        table[key] = o
        return o

    return deco(obj) if obj is not None else deco


#: Class attribute by which a layer names the rule family it follows (``slimtorch_kind = "qkv_attention"``).
#: Layers defined below the technique that handles them (the model zoo sits below ``prune`` and
#: ``metrics``) declare a kind instead of being imported by the technique's rule table.
KIND_ATTR = "slimtorch_kind"


class LayerRuleRegistry(TypeRegistry[T]):
    """A :class:`TypeRegistry` of layer rules that also answers for layers declaring a kind.

    ``find(cls)`` walks ``cls.__mro__``; at each class it takes the rule registered for that class, else
    the rule registered for the kind the class itself declares in :data:`KIND_ATTR`. A declaration thus
    counts where the class stands in the MRO: a subclass of ``nn.Linear`` that declares a kind uses the
    kind's rule, one that does not inherits ``nn.Linear``'s.
    """

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self._kinds: dict[str, T] = {}

    def register_kind(self, name: str, obj: T | None = None, *, overwrite: bool = False) -> Any:
        """Register ``obj`` for layers declaring ``slimtorch_kind = name``; without ``obj``, a decorator."""

        return _store(self._kinds, name, obj, overwrite, f"a {self.kind} for kind {name!r}")

    def find(self, key: type) -> T | None:
        for t in key.__mro__:
            if t in self._items:
                return self._items[t]
            declared = t.__dict__.get(KIND_ATTR)
            if declared in self._kinds:
                return self._kinds[declared]
        return None

    def kinds(self) -> list[str]:
        """Kinds that have a rule, sorted."""
        return sorted(self._kinds)


def call_with_known_kwargs(fn: Callable[..., T], **kwargs: Any) -> T:
    """Call ``fn`` with only the keyword arguments its signature accepts."""
    import inspect

    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(**kwargs)
    return fn(**{k: v for k, v in kwargs.items() if k in params})
