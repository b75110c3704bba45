"""``quantize_(model, config, calib_data)``: one in-place verb, dispatched on the config's type.

Each technique is one config class plus one handler registered with :func:`register_quantizer`::

    @dataclass
    class WeightOnly(Config):
        bits: int = 4
        ...

    @register_quantizer(WeightOnly)
    def _weight_only(model, config, calib_data):
        ...
        return QuantReport(...)

A handler changes ``model`` in place and returns a :class:`QuantReport` naming what was quantized, what
was folded, and which layers stayed in float and why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from slimtorch.core.config import Config
from slimtorch.core.numerics import check_finite_weights
from slimtorch.core.registry import Registry, TypeRegistry
from slimtorch.core.selection import display_name

#: Handler signature: ``handler(model, config, calib_data) -> QuantReport``.
Handler = Callable[[nn.Module, Config, "Iterable[Any] | None"], "QuantReport"]

#: config type -> handler (looked up along the config's MRO by :func:`quantize_`).
QUANTIZERS: TypeRegistry[Handler] = TypeRegistry("quantizer")


@dataclass
class QuantReport:
    """What a quantization pass did.

    Attributes:
        scheme: short name of the scheme (``"int8_static"``, ``"w4a8"``, ...).
        quantized: fully qualified names of the layers now in quantized form (``""`` when the model is
            itself the one layer; :meth:`summary` shows it as ``"<root>"``).
        skipped: layers left in float, ``fqn -> reason`` (no quantized form, excluded by the user, ...).
        folded: ``(conv_fqn, bn_fqn)`` pairs whose BatchNorm was folded into the convolution.
        details: anything else worth reporting (calibration batches, throughput, per-layer errors).
    """

    scheme: str
    quantized: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    folded: list[tuple[str, str]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (for JSON reports)."""
        return {
            "scheme": self.scheme,
            "quantized": list(self.quantized),
            "skipped": dict(self.skipped),
            "folded": [list(p) for p in self.folded],
            "details": dict(self.details),
        }

    def summary(self) -> str:
        """One human-readable paragraph."""
        lines = [f"{self.scheme}: {len(self.quantized)} layer(s) quantized, "
                 f"{len(self.folded)} BatchNorm(s) folded"]
        if self.skipped:
            lines.append("left in float: " + ", ".join(f"{display_name(k)} ({v})" for k, v in self.skipped.items()))
        return "\n".join(lines)


@dataclass
class Scheme:
    """A named quantization scheme for front ends (the ``slimtorch quantize --scheme NAME`` CLI, recipes).

    A scheme is data, not code: a config type, its default keys and which data ``quantize_`` gets. The
    front end builds the config with ``config.from_dict({**defaults, <its options>})``, so every field
    of the config (and of its sub-configs) is reachable with no code of the scheme's.

    Attributes:
        name: the scheme name (``"int8"``, ``"w4a8"``, ...).
        config: the config type the scheme builds (``Int8Static``).
        defaults: plain-data keys applied before the user's (``{"granularity": "tensor"}``; nested
            sub-configs as dicts with a ``type`` key: ``{"rounding": {"type": "GPTQ"}}``).
        data: which batches ``quantize_`` receives: ``"calib"`` (``--calib`` training images),
            ``"train"`` (the whole training set) or ``"none"``.
        help: one line for ``--help``.
        trained: the config type used instead of ``config`` when the front end trains (``--qat-epochs N``),
            e.g. ``QAT`` for ``w4a8``; the same ``defaults`` apply.
        build: former form, kept for code that registers a ``build(options) -> Config`` function (the
            options are the CLI's: ``observer``, ``calib``, ``method``, ``bits``, ``group_size``,
            ``qat_epochs``, ``lr``, ``per_tensor``, ``exclude``, ``percentile``, ``target``); None for
            data schemes.
    """

    name: str
    config: type[Config] | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    data: str = "calib"
    help: str = ""
    trained: type[Config] | None = None
    build: Callable[[dict[str, Any]], Config] | None = None

    def config_type(self, trains: bool = False) -> type[Config] | None:
        """The config type built (``trained`` when the front end trains and the scheme has one)."""
        return self.trained if trains and self.trained is not None else self.config


#: scheme name -> :class:`Scheme`.
SCHEMES: Registry[Scheme] = Registry("quantization scheme")


def register_scheme(name: str, config: type[Config] | str | None = None, *, data: str = "calib", help: str = "",
                    defaults: dict[str, Any] | None = None, trained: type[Config] | None = None) -> Any:
    """Register a scheme for front ends: a name -> config type, default keys and data kind.

    ``register_scheme("w4-gptq", WeightOnly, defaults={"rounding": {"type": "GPTQ"}})`` registers it; the
    CLI then offers ``--scheme w4-gptq`` with every ``WeightOnly`` field settable by ``--set``.

    Former form, still accepted: without ``config`` it returns a decorator for a
    ``build(options) -> Config`` function (``@register_scheme("w4a8", data="calib")``; ``data`` may also be
    the second positional argument).

    Raises:
        ValueError: ``data`` is not ``calib``, ``train`` or ``none``, or ``config``/``trained`` is not a
            Config subclass.
    """
    if isinstance(config, str):  # former signature register_scheme(name, data, help)
        config, data = None, config
    if data not in ("calib", "train", "none"):
        raise ValueError(f"data must be 'calib', 'train' or 'none', got {data!r}")
    for what, t in (("config", config), ("trained", trained)):
        if t is not None and not (isinstance(t, type) and issubclass(t, Config)):
            raise ValueError(f"register_scheme {name!r}: {what} must be a Config subclass, got {t!r}")
    if config is not None:
        scheme = Scheme(name, config, dict(defaults or {}), data, help, trained)
        if name in SCHEMES and SCHEMES.get(name) == scheme:  # the same module imported again
            return scheme
        SCHEMES.register(name, scheme)
        return scheme

    def deco(build: Callable[[dict[str, Any]], Config]) -> Callable[[dict[str, Any]], Config]:
        if name in SCHEMES and SCHEMES.get(name).build is build:  # the same module imported again
            return build
        SCHEMES.register(name, Scheme(name, data=data, help=help, build=build))
        return build

    return deco


def register_quantizer(config_type: type[Config]) -> Callable[[Handler], Handler]:
    """Decorator registering ``handler`` as the implementation of ``config_type`` for :func:`quantize_`."""
    if not (isinstance(config_type, type) and issubclass(config_type, Config)):
        raise ValueError(f"register_quantizer expects a Config subclass, got {config_type!r}")

    return QUANTIZERS.register(config_type)


def quantize_(model: nn.Module, config: Config, calib_data: Iterable[Any] | None = None) -> QuantReport:
    """Quantize ``model`` in place as ``config`` says.

    Args:
        model: any ``nn.Module`` (put in eval mode for post-training schemes).
        config: a registered quantization config (``Int8Static()``, ``Int8Dynamic()``,
            ``WeightOnly(...)``, ``QAT(...)``).
        calib_data: calibration batches for schemes that need them: any iterable of tensors or
            ``(inputs, targets)`` pairs (a ``DataLoader`` works as is).

    Returns:
        A :class:`QuantReport`.

    Raises:
        ValueError: for a config type with no registered quantizer (the message lists the known ones).
    """
    handler = QUANTIZERS.find(type(config))
    if handler is None:
        known = sorted(t.__name__ for t in QUANTIZERS)
        raise ValueError(f"no quantizer registered for {type(config).__name__}; known configs: {known}")
    check_finite_weights(model, "quantize_")
    return handler(model, config, calib_data)
