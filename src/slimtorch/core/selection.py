"""Which modules a transform touches, separated from how it transforms them (DESIGN.md, API style 3).

Every technique accepts ``include``/``exclude`` patterns on module names (fnmatch globs such as
``"layer1.*"`` or ``"fc"``) and/or a ``filter_fn(module, fqn) -> bool``, and per-layer ``overrides``
(``{pattern: value}``, first matching pattern wins); one mechanism for all, in this module.

A model may itself be one layer (``prune_(nn.Linear(64, 32), ...)``). Its fully qualified name is
``""`` (what ``named_modules`` and ``state_dict`` keys use); messages show it as :data:`ROOT_NAME`
(see :func:`display_name`). :meth:`Selector.select` yields the root when it is an instance of one of
the selector's layer ``types`` and nothing else in the model is selected, and :func:`set_submodule`
replaces it in place.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from slimtorch.core.config import check_range

FilterFn = Callable[[nn.Module, str], bool]

#: How messages and reports show the fqn ``""`` of a model that is itself the selected layer.
ROOT_NAME = "<root>"


def display_name(fqn: str) -> str:
    """``fqn`` as messages show it: the root module's empty name becomes :data:`ROOT_NAME`."""
    return fqn or ROOT_NAME


def as_patterns(p: str | Sequence[str] | None) -> tuple[str, ...]:
    """``None`` -> ``()``, ``"fc"`` -> ``("fc",)``, a sequence -> a tuple."""
    if p is None:
        return ()
    if isinstance(p, str):
        return (p,)
    return tuple(p)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    # A pattern matches a module and everything inside it: "layer1" selects "layer1.0.conv1" too.
    if not name:  # the root: "*" and "<root>" match it (a glob cannot match "" except "*"-only ones)
        return any(fnmatch.fnmatchcase(ROOT_NAME, p) or p == "" for p in patterns)
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
        self.include = as_patterns(self.include)
        self.exclude = as_patterns(self.exclude)

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
        """Yield ``(fqn, module)`` for every selected module of ``model`` in definition order.

        The model itself (fqn ``""``) is yielded only when no module inside it is selected and it
        passes :meth:`accepts`: a model that is one layer (``nn.Linear(64, 32)``) selects itself, a
        ``Sequential`` of layers never does. Patterns match the root as ``"<root>"`` (so ``"*"`` and
        ``"<root>"`` do); ``filter_fn`` sees it with the name ``""``.
        """
        found = False
        for name, module in model.named_modules():
            if name and self.accepts(module, name):
                found = True
                yield name, module
        if not found and self.accepts(model, ""):
            yield "", model

    def select_some(self, model: nn.Module, purpose: str) -> list[tuple[str, nn.Module]]:
        """:meth:`select` as a list; an empty selection is an error naming the candidates.

        Args:
            purpose: what the layers are selected for, in the message (``"pruning"``).
        """
        layers = list(self.select(model))
        if not layers:
            candidates = [display_name(n) for n, _ in Selector(self.types).select(model)]
            raise ValueError(
                f"no layer of {type(model).__name__} is selected for {purpose} (include={list(self.include)}, "
                f"exclude={list(self.exclude)}, filter_fn={'set' if self.filter_fn else None}); layers of types "
                f"{[t.__name__ for t in self.types]}: {candidates[:20]}"
            )
        return layers


# ---- per-layer overrides -------------------------------------------------------------------------
def check_overrides(overrides: Mapping[str, float], field: str = "overrides", hi: float = 1) -> None:
    """Every per-layer value (a sparsity or ratio) in ``overrides`` must be in ``[0, hi)``."""
    if not isinstance(overrides, Mapping):
        raise ValueError(f"{field} must be a mapping of layer-name pattern to a value, got {overrides!r}")
    for pattern, value in overrides.items():
        check_range(f"{field}[{pattern!r}]", value, 0, hi, hi_open=True)


def override_for(names: str | Iterable[str], overrides: Mapping[str, float]) -> float | None:
    """The value of the first pattern in ``overrides`` that matches ``names`` (a module name, or any of
    several: a channel group's layers), else ``None``."""
    names = [names] if isinstance(names, str) else list(names)
    for pattern, value in overrides.items():
        if any(_matches(n, (pattern,)) for n in names):
            return float(value)
    return None


def unused_overrides(names: Sequence[str], overrides: Mapping[str, float]) -> list[str]:
    """Override patterns that match none of ``names`` (almost always a typo)."""
    return [p for p in overrides if override_for(names, {p: 0.0}) is None]


def unmatched_patterns(model: nn.Module, patterns: str | Sequence[str] | None) -> list[str]:
    """The include/exclude ``patterns`` that match no module name of ``model`` (almost always a typo)."""
    names = [n for n, _ in model.named_modules() if n]
    return [p for p in as_patterns(patterns) if not any(_matches(n, [p]) for n in names)]


def named_modules_matching(
    model: nn.Module,
    types: tuple[type[nn.Module], ...] = (nn.Module,),
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    filter_fn: FilterFn | None = None,
) -> list[tuple[str, nn.Module]]:
    """Shortcut for ``list(Selector(...).select(model))``."""
    return list(Selector(types, as_patterns(include), as_patterns(exclude), filter_fn).select(model))


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
    """Replace the module at ``fqn`` (dotted path) with ``new``.

    ``fqn == ""`` replaces ``model`` itself, in place: the caller's reference must see the new module,
    so ``model`` takes ``new``'s class and state (see :func:`become_`).
    """
    if not fqn:
        become_(model, new)
        return
    parent_name, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def become_(model: nn.Module, new: nn.Module) -> None:
    """Turn ``model`` into ``new`` in place: same class, same state, so every reference sees ``new``.

    An in-place verb (``quantize_(layer, ...)``) cannot hand back a new root object, so when the model
    is itself the layer being replaced, the model object *becomes* the replacement. An ``nn.Module``
    keeps all its state (parameters, buffers, submodules, hooks, flags) in its instance ``__dict__``
    and has no ``__slots__``, so taking ``new``'s class and ``__dict__`` makes ``model`` behave exactly
    as ``new`` does. The quant wrappers (``QuantLinear(nn.Linear)``, ``QuantConv2d(nn.Conv2d)``)
    subclass the layer they wrap and share its parameters, so ``isinstance(model, nn.Linear)`` stays
    true for them. ``model.__dict__`` is the *same* dict object as ``new.__dict__`` (not a copy): a
    handler that keeps using its ``new`` reference (setting an attribute, registering a hook) changes
    ``model`` too. Hooks registered on the old root are dropped, as for any replaced submodule.

    Raises:
        ValueError: if ``new`` contains ``model`` (the model would become its own child).
    """
    if new is model:
        return
    if any(m is model for m in new.modules()):
        raise ValueError(
            f"cannot replace the root {type(model).__name__} by a {type(new).__name__} that contains it; "
            "wrap a copy of the root instead"
        )
    model.__class__ = type(new)
    model.__dict__ = new.__dict__
