"""Weight rounding algorithms as sub-configs: how the integer codes of a weight-only layer are chosen.

A rounding algorithm is one :class:`Rounding` dataclass (its options) plus one function registered for
it with :func:`register_rounding`::

    @dataclass
    class MSEClip(Rounding):
        grid: int = 100

    @register_rounding("mse", MSEClip)
    def _mse(model, layers, config, batches): ...

It is then usable as ``WeightOnly(bits=4, rounding=MSEClip(grid=50))``, by its short name
``WeightOnly(method="mse")``, in ``LowBitStatic(rounding=...)`` and in recipes
(``rounding: {type: MSEClip, grid: 50}``), with no field added to any other config.

The function gets the model, the selected float layers (``fqn -> module``), the
:class:`~slimtorch.quant.workflows.weight_only.WeightOnly` config (``config.rounding`` holds the
algorithm's options) and the calibration batches; it replaces every layer by its packed form
(:func:`replace_with_codes`) in the order it needs and returns ``fqn -> details`` for the report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from slimtorch.core.config import Config, check_choice
from slimtorch.core.registry import Registry, TypeRegistry
from slimtorch.core.selection import display_name, set_submodule
from slimtorch.quant.groupwise import GroupCodes
from slimtorch.quant.modules.packed import WEIGHT_ONLY_MODULES, flat_weight


@dataclass
class Rounding(Config):
    """Base class of rounding sub-configs (the fields of a subclass are its algorithm's options)."""

    #: Whether the algorithm needs calibration batches.
    needs_data: ClassVar[bool] = False
    #: Shorthand fields of ``WeightOnly``/``LowBitStatic`` written before sub-configs existed
    #: (``"gptq_act_order" -> "act_order"``); new algorithms leave it empty.
    legacy_fields: ClassVar[dict[str, str]] = {}


#: ``fn(model, layers, config, batches) -> {fqn: details}`` (see the module docstring).
RoundingFn = Callable[[nn.Module, dict[str, nn.Module], Any, list[tuple[torch.Tensor, ...]]], dict[str, dict[str, Any]]]

#: short name (``method="gptq"``) -> rounding sub-config class.
ROUNDING: Registry[type[Rounding]] = Registry("weight-only method")
#: rounding sub-config class -> the function that applies it.
ROUNDERS: TypeRegistry[RoundingFn] = TypeRegistry("rounding algorithm")


def register_rounding(name: str, config_type: type[Rounding]) -> Callable[[RoundingFn], RoundingFn]:
    """Decorator: register ``fn`` as the rounding algorithm of ``config_type``, short name ``name``."""
    if not (isinstance(config_type, type) and issubclass(config_type, Rounding)):
        raise ValueError(f"register_rounding expects a Rounding subclass, got {config_type!r}")

    def deco(fn: RoundingFn) -> RoundingFn:
        ROUNDING.register(name, config_type)
        ROUNDERS.register(config_type, fn)
        return fn

    return deco


def rounding_name(rounding: Rounding) -> str:
    """The short name ``rounding`` was registered under (``"gptq"`` for ``GPTQ(...)``)."""
    for name, cls in ROUNDING.items():
        if type(rounding) is cls:
            return name
    raise ValueError(f"{type(rounding).__name__} is not a registered rounding algorithm; known: {ROUNDING.names()}")


def resolve_rounding(method: str | None, rounding: Rounding | None, legacy: dict[str, Any]) -> Rounding:
    """The rounding sub-config a workflow config means, from either spelling.

    Args:
        method: the string shorthand (``"gptq"``), or None.
        rounding: the sub-config (``GPTQ(act_order=True)``), or None.
        legacy: the prefixed shorthand fields (``{"gptq_act_order": True, "adaround_iters": None}``);
            None means not given. Those of another algorithm than the chosen one are ignored, as before.

    Raises:
        ValueError: an unknown method, a sub-config that is not a :class:`Rounding`, a method that names
            another algorithm than the sub-config, or prefixed fields given beside a sub-config.
    """
    if rounding is None:
        cls = ROUNDING.get(method or "rtn")
        given = {cls.legacy_fields[k]: v for k, v in legacy.items() if v is not None and k in cls.legacy_fields}
        return cls(**given)
    if not isinstance(rounding, Rounding):
        raise ValueError(f"rounding must be a Rounding sub-config (e.g. GPTQ(act_order=True)), got {rounding!r}; "
                         f"known: {[c.__name__ for _, c in ROUNDING.items()]}")
    name = rounding_name(rounding)
    if method is not None and method != name:
        raise ValueError(f"method {method!r} and rounding {type(rounding).__name__} name different algorithms; "
                         "give one of them")
    clash = sorted(k for k, v in legacy.items() if v is not None)
    if clash:
        raise ValueError(f"{clash} are shorthand for rounding options; with rounding={type(rounding).__name__}(...) "
                         "set them on the sub-config")
    return rounding


class ChoosesRounding:
    """Mixin of workflow configs with ``method``/``rounding`` fields and prefixed shorthand fields.

    The config's ``__post_init__`` calls :meth:`_resolve_rounding`; afterwards ``rounding`` is the
    sub-config, ``method`` its short name and every shorthand field None (left out of ``to_dict``).
    """

    #: names of the config's prefixed shorthand fields (``"gptq_act_order"``, ...).
    rounding_shorthand: ClassVar[tuple[str, ...]] = ()

    def _resolve_rounding(self) -> None:
        if self.method is not None:  # type: ignore[attr-defined]
            check_choice("method", self.method, ROUNDING.names())  # type: ignore[attr-defined]
        legacy = {k: getattr(self, k) for k in self.rounding_shorthand}
        self.rounding = resolve_rounding(self.method, self.rounding, legacy)  # type: ignore[attr-defined]
        self.method = rounding_name(self.rounding)
        for k in self.rounding_shorthand:
            setattr(self, k, None)

    def to_dict(self) -> dict[str, Any]:
        """Plain data with the rounding as a nested sub-config (unset shorthand fields left out)."""
        plain = super().to_dict()  # type: ignore[misc]
        return {k: v for k, v in plain.items() if not (k in self.rounding_shorthand and v is None)}


@dataclass
class RTN(Rounding):
    """Round to nearest on the min-max grid of each group (no data needed)."""


def fan_in(module: nn.Module) -> int:
    """Entries per output row of the flattened weight (``in_features``, or ``in/groups * kh * kw``)."""
    return module.weight[0].numel()


def layer_group_size(module: nn.Module, name: str, group_size: int | None) -> int:
    """The group size for one layer (``fan_in`` when None), checked to divide its fan-in."""
    n = fan_in(module)
    if group_size is None:
        return n
    if n % group_size:
        what = "in_features" if isinstance(module, nn.Linear) else "fan-in (in_channels/groups*kh*kw)"
        raise ValueError(
            f"group_size {group_size} does not divide {what} {n} of layer {display_name(name)!r}; "
            f"choose a divisor of {n} or exclude the layer"
        )
    return group_size


def replace_with_codes(model: nn.Module, name: str, module: nn.Module, codes: GroupCodes) -> nn.Module:
    """Swap the float layer at ``name`` for its packed weight-only form and return the new module."""
    new = WEIGHT_ONLY_MODULES.get(type(module)).from_float(module, codes)
    set_submodule(model, name, new)
    return new


def round_layers(
    model: nn.Module,
    layers: dict[str, nn.Module],
    config: Any,
    codes_fn: Callable[[torch.Tensor, int], GroupCodes],
) -> dict[str, dict[str, Any]]:
    """Replace each layer by the codes ``codes_fn(w, group_size)`` of its flat weight ``w`` (out, fan_in).

    The loop of every data-free rounding algorithm (RTN, MSE clipping): layers are independent.
    """
    out = {}
    for name, m in layers.items():
        w = flat_weight(m)
        codes = codes_fn(w, layer_group_size(m, name, config.group_size))
        replace_with_codes(model, name, m, codes)
        out[name] = {"weight_mse": (codes.dequantize() - w).pow(2).mean().item()}
    return out


@register_rounding("rtn", RTN)
def round_to_nearest_(
    model: nn.Module, layers: dict[str, nn.Module], config: Any, batches: list[tuple[torch.Tensor, ...]]
) -> dict[str, dict[str, Any]]:
    """RTN on every layer (:meth:`GroupCodes.round_to_nearest`)."""
    return round_layers(
        model, layers, config, lambda w, g: GroupCodes.round_to_nearest(w, config.bits, g, config.symmetric)
    )
