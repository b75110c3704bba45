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

from slimtorch.core.registry import Registry

C = TypeVar("C", bound="Config")

#: Schema version of ``Config.to_dict``; ``from_dict`` reads every version up to this one.
CONFIG_VERSION = 1

#: Every Config subclass by class name (case-sensitive), so ``Config.from_dict({"type": "Channel", ...})`` works.
#: A later class of the same name (a redefinition, a test's local class) replaces the earlier one.
CONFIG_TYPES: Registry[type[Config]] = Registry("config type", case_sensitive=True)


class Config:
    """Base class of all slimtorch configs (subclasses must be dataclasses)."""

    #: Short name used in recipes and reports; defaults to the class name.
    kind: ClassVar[str] = ""
    #: Former field names still accepted (``{"ignore": "exclude"}``): the constructor takes them as
    #: ``InitVar``s and maps them onto the field; :meth:`from_dict` accepts them as keys.
    aliases: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        CONFIG_TYPES.register(cls.__name__, cls, overwrite=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (nested configs become dicts with a ``type`` key; tuples become lists), with the
        config schema ``version`` that :meth:`from_dict` checks (dicts without one, older, still load)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out[f.name] = _to_plain(getattr(self, f.name))
        out["version"] = CONFIG_VERSION
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], path: str = "") -> C:
        """Build a config from plain data; unknown keys are an error naming the allowed ones.

        Args:
            data: mapping of field name to value. A ``type`` key, if present, must name ``cls`` or a
                subclass of it.
            path: where ``data`` came from (``"stages[2].prune"``), used as a prefix in error messages.
        """
        problems: list[str] = []
        config = parse_config(cls, data, path, problems)
        if problems:
            raise ValueError(problems[0] if len(problems) == 1 else "\n".join(problems))
        return config

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def _to_plain(v: Any) -> Any:
    if isinstance(v, Config):
        d = v.to_dict()
        d.pop("version", None)  # the schema version is the outermost config's
        d["type"] = type(v).__name__
        return d
    if isinstance(v, (list, tuple)):
        return [_to_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _to_plain(x) for k, x in v.items()}
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


# ---- the one parser: plain data -> typed config, every problem collected --------------------------
def parse_config(cls: type[Config], data: Any, path: str, problems: list[str], extra_allowed: Any = ()) -> Any:
    """Build ``cls`` from plain ``data``, appending every problem (with its path) to ``problems``.

    Nested configs (fields typed as a Config, possibly chosen by a ``type`` key, or lists of them)
    are parsed recursively so their problems carry their own paths. When the whole config is
    refused, each given field is tried on its own so each bad field is reported.

    Args:
        cls: the config class.
        data: a mapping (``None`` means all defaults).
        path: prefix for messages (``stages[2].prune``).
        problems: list the problems are appended to.
        extra_allowed: other keys valid at this level (named in the "allowed" list of an unknown-key error).

    Returns:
        The config, or ``None`` when there were problems.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{path or cls.__name__}: expected a mapping of {cls.__name__} options, got {describe(data)}")
        return None
    data = dict(data)
    if "type" in data:
        name = data.pop("type")
        sub = CONFIG_TYPES.find(name)
        if sub is None or not issubclass(sub, cls):
            allowed = sorted(n for n, t in CONFIG_TYPES.items() if issubclass(t, cls) and t is not cls) or [
                cls.__name__
            ]
            problems.append(f"{path or cls.__name__}.type: {name!r} is not one of {allowed}")
            return None
        cls = sub
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    aliases = getattr(cls, "aliases", {})
    if "version" in data:
        version = data.pop("version")
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= CONFIG_VERSION:
            problems.append(f"{_join(path, 'version')}: {version!r} is not a config schema version this "
                            f"slimtorch reads (1..{CONFIG_VERSION})")
    unknown = [k for k in data if k not in fields and k not in aliases]
    n_before = len(problems)
    if unknown:
        allowed = sorted(set(fields) | set(extra_allowed))
        problems.append(f"{path or cls.__name__}: unknown key(s) {key_list(unknown)}; allowed: {allowed}")
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # unresolvable annotations: take values as given
        hints = {}
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        if k in fields or k in aliases:
            kwargs[k] = _convert(v, hints.get(aliases.get(k, k), Any), _join(path, k), problems)
    if len(problems) > n_before:
        return None
    try:
        return cls(**kwargs)
    except Exception as whole:  # noqa: BLE001 - any refusal of a config is a recipe problem
        per_field, raw = [], set()
        for k, v in kwargs.items():
            try:
                cls(**{k: v})
            except Exception as e:  # noqa: BLE001
                per_field.append(_located(path, k, e))
                raw.add(_message(e))
        if _message(whole) not in raw:
            # a check across fields (observer_kwargs for the chosen observer): a field tried alone meets the
            # other fields' defaults and would be blamed for the wrong reason, so report the real refusal
            lead = next((k for k in kwargs if _message(whole).startswith(k)), None)
            per_field = [_located(path, lead, whole) if lead else (f"{path}: {_message(whole)}" if path
                                                                   else _message(whole))]
        problems.extend(per_field)
        return None


def _convert(v: Any, hint: Any, path: str, problems: list[str]) -> Any:
    """Plain value -> the field's type where the type is a config, a list of configs or a tuple."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        configs = [a for a in args if isinstance(a, type) and issubclass(a, Config)]
        if configs and isinstance(v, dict):
            return parse_config(configs[0], v, path, problems)
        tuples = [a for a in args if typing.get_origin(a) in (tuple, list)]
        if tuples and isinstance(v, list):
            return _convert(v, tuples[0], path, problems)
        return v
    if isinstance(hint, type) and issubclass(hint, Config):
        return parse_config(hint, v, path, problems) if isinstance(v, dict) else v
    if origin in (tuple, list) and isinstance(v, list):
        elem = args[0] if args else Any
        if isinstance(elem, type) and issubclass(elem, Config):
            items = []
            for i, item in enumerate(v):
                if not isinstance(item, dict):
                    problems.append(f"{path}[{i}]: expected a mapping with a 'type' key, got {describe(item)}")
                    continue
                items.append(parse_config(elem, item, f"{path}[{i}]", problems))
            v = items
        return tuple(v) if origin is tuple else list(v)
    return v


def _message(e: BaseException) -> str:
    return str(e).strip() or type(e).__name__


def _located(path: str, key: str, e: BaseException) -> str:
    msg = _message(e)
    if not path or msg.startswith(path):
        return msg
    if msg.startswith(key) and msg[len(key) : len(key) + 1] in (":", " ", "["):
        return f"{path}.{msg}"
    return f"{path}.{key}: {msg}"


def describe(v: Any) -> str:
    """A value as error messages show it (``int 3``, ``nothing``, ``list``)."""
    if v is None:
        return "nothing"
    if isinstance(v, (str, int, float, bool)):
        return f"{type(v).__name__} {v!r}"[:80]
    return type(v).__name__


def key_list(keys: list[Any]) -> str:
    """``['a', 'b']`` as messages show a list of keys."""
    return "[" + ", ".join(repr(k) for k in keys) + "]"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
