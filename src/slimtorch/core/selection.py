"""Which modules a transform touches, separated from how it transforms them (DESIGN.md, API style 3).

Every technique accepts ``include``/``exclude`` patterns on module names (fnmatch globs such as
``"layer1.*"`` or ``"fc"``) and/or a ``filter_fn(module, fqn) -> bool``; one mechanism for all.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from torch import nn

FilterFn = Callable[[nn.Module, str], bool]


def _as_patterns(p: str | Sequence[str] | None) -> tuple[str, ...]:
    if p is None:
        return ()
    if isinstance(p, str):
        return (p,)
    return tuple(p)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    # A pattern matches a module and everything inside it: "layer1" selects "layer1.0.conv1" too.
    return any(fnmatch.fnmatchcase(name, p) or name.startswith(p + ".") for p in patterns)


@dataclass
class Selector:
    """Picks modules by type, name patterns and an optional predicate.

    Args:
        types: module classes that are candidates at all (e.g. ``(nn.Conv2d, nn.Linear)``).
        include: glob patterns on fully qualified names; empty means "every candidate".
        exclude: glob patterns removed after ``include``.
        filter_fn: extra predicate ``filter_fn(module, fqn)``; a module is kept only if it returns True.
    """

    types: tuple[type[nn.Module], ...] = (nn.Module,)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    filter_fn: FilterFn | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.include = _as_patterns(self.include)
        self.exclude = _as_patterns(self.exclude)

    def accepts(self, module: nn.Module, name: str) -> bool:
        """Whether ``module`` at ``name`` is selected."""
        if not isinstance(module, self.types):
            return False
        if self.include and not _matches(name, self.include):
            return False
        if self.exclude and _matches(name, self.exclude):
            return False
        return self.filter_fn is None or bool(self.filter_fn(module, name))

    def select(self, model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
        """Yield ``(fqn, module)`` for every selected module of ``model`` in definition order."""
        for name, module in model.named_modules():
            if name and self.accepts(module, name):
                yield name, module


def named_modules_matching(
    model: nn.Module,
    types: tuple[type[nn.Module], ...] = (nn.Module,),
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    filter_fn: FilterFn | None = None,
) -> list[tuple[str, nn.Module]]:
    """Shortcut for ``list(Selector(...).select(model))``."""
    return list(Selector(types, _as_patterns(include), _as_patterns(exclude), filter_fn).select(model))


def get_submodule(model: nn.Module, fqn: str) -> nn.Module:
    """``model.get_submodule`` with an error that lists the closest existing names."""
    try:
        return model.get_submodule(fqn)
    except AttributeError:
        import difflib

        names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(fqn, names, n=5, cutoff=0.4)
        raise ValueError(
            f"no module named {fqn!r} in {type(model).__name__}; closest: {close or names[:10]}"
        ) from None


def set_submodule(model: nn.Module, fqn: str, new: nn.Module) -> None:
    """Replace the module at ``fqn`` (dotted path) with ``new``."""
    parent_name, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
