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

    Attributes:
        name: the scheme name (``"int8"``, ``"w4a8"``, ...).
        build: ``build(options) -> Config`` from a plain dict of options (the CLI passes ``vars(args)``:
            ``observer``, ``calib``, ``method``, ``bits``, ``group_size``, ``qat_epochs``, ``lr``,
            ``per_tensor``, ``exclude``, ...; unknown keys must be ignored).
        data: which batches ``quantize_`` receives: ``"calib"`` (``--calib`` training images),
            ``"train"`` (the whole training set, e.g. for QAT) or ``"none"``.
        help: one line for ``--help``.
    """

    name: str
    build: Callable[[dict[str, Any]], Config]
    data: str = "calib"
    help: str = ""


#: scheme name -> :class:`Scheme`.
SCHEMES: Registry[Scheme] = Registry("quantization scheme")


def register_scheme(name: str, data: str = "calib", help: str = "") -> Callable[[Callable], Callable]:
    """Decorator: ``@register_scheme("w4a8", data="calib")`` on a ``build(options) -> Config`` function."""
    if data not in ("calib", "train", "none"):
        raise ValueError(f"data must be 'calib', 'train' or 'none', got {data!r}")

    def deco(build: Callable[[dict[str, Any]], Config]) -> Callable[[dict[str, Any]], Config]:
        if name in SCHEMES and SCHEMES.get(name).build is build:  # the same module imported again
            return build
        SCHEMES.register(name, Scheme(name, build, data, help))
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
    return handler(model, config, calib_data)
