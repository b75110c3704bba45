"""Typed configuration dataclasses.

Every technique takes one config object (``Channel(ratio=0.5)``, ``Int8Static(observer="percentile")``).
Configs are ``@dataclass`` subclasses of :class:`Config`. They validate in ``__post_init__`` by raising
``ValueError`` with what was given and what is allowed, round-trip through ``to_dict``/``from_dict``,
and are what a YAML recipe is parsed into (the pipeline never keeps a second copy of the options).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable
from typing import Any, ClassVar, TypeVar

C = TypeVar("C", bound="Config")

#: Every concrete Config subclass by class name, so ``Config.from_dict({"type": "Channel", ...})`` works.
CONFIG_TYPES: dict[str, type[Config]] = {}


class Config:
    """Base class of all slimtorch configs (subclasses must be dataclasses)."""

    #: Short name used in recipes and reports; defaults to the class name.
    kind: ClassVar[str] = ""
    #: Former field names still accepted (``{"ignore": "exclude"}``): the constructor takes them as
    #: ``InitVar``s and maps them onto the field; :meth:`from_dict` accepts them as keys.
    aliases: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        CONFIG_TYPES[cls.__name__] = cls

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (nested configs become dicts with a ``type`` key; tuples become lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out[f.name] = _to_plain(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], path: str = "") -> C:
        """Build a config from plain data; unknown keys are an error naming the allowed ones.

        Args:
            data: mapping of field name to value. A ``type`` key, if present, must name ``cls`` or a
                subclass of it.
            path: where ``data`` came from (``"stages[2].prune"``), used as a prefix in error messages.
        """
        if not isinstance(data, dict):
            raise ValueError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
        data = dict(data)
        target: type[Config] = cls
        if "type" in data:
            name = data.pop("type")
            if name not in CONFIG_TYPES or not issubclass(CONFIG_TYPES[name], cls):
                allowed = sorted(n for n, t in CONFIG_TYPES.items() if issubclass(t, cls))
                raise ValueError(f"{path or cls.__name__}.type: {name!r} is not one of {allowed}")
            target = CONFIG_TYPES[name]
        fields = {f.name: f for f in dataclasses.fields(target)}  # type: ignore[arg-type]
        aliases = target.aliases
        unknown = sorted(set(data) - set(fields) - set(aliases))
        if unknown:
            raise ValueError(
                f"{path or target.__name__}: unknown key(s) {unknown}; allowed: {sorted(fields)}"
            )
        hints = typing.get_type_hints(target)
        kwargs = {}
        for k, v in data.items():
            kwargs[k] = _from_plain(v, hints.get(aliases.get(k, k), Any), f"{path}.{k}" if path else k)
        return target(**kwargs)  # type: ignore[return-value]

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def _to_plain(v: Any) -> Any:
    if isinstance(v, Config):
        d = v.to_dict()
        d["type"] = type(v).__name__
        return d
    if isinstance(v, (list, tuple)):
        return [_to_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _to_plain(x) for k, x in v.items()}
    return v


def _from_plain(v: Any, hint: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for a in args:
            if isinstance(a, type) and issubclass(a, Config) and isinstance(v, dict):
                return a.from_dict(v, path)
        return v
    if isinstance(hint, type) and issubclass(hint, Config) and isinstance(v, dict):
        return hint.from_dict(v, path)
    if origin is tuple and isinstance(v, list):
        return tuple(v)
    return v


def check_range(
    name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False
) -> None:
    """Raise ``ValueError`` unless ``lo <= value <= hi`` (``<`` on open ends); also rejects NaN and bools."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    ok_lo = value > lo if lo_open else value >= lo
    ok_hi = value < hi if hi_open else value <= hi
    if not (ok_lo and ok_hi):
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"{name}: {value!r} is not in {interval}")


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` unless ``value > 0`` (or ``>= 0`` with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name}: {value!r} is not one of {choices}")
