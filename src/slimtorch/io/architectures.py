"""The architecture registry: ``create(name, **kwargs)`` and ``list_models()``.

It lives in ``io`` (not in ``models``) because it is the half of the structural spec that rebuilds a
model from a file: :func:`slimtorch.io.storage.load` calls :func:`create` with the name a file stores,
and ``io`` sits below ``models`` in the layer order. The zoo (``slimtorch.models``) registers its
constructors here with ``@register_model("name")``; so can any user model. ``create`` records the name and
keyword arguments on the model (``model.slimtorch_spec``) so :func:`slimtorch.save` can store the
architecture next to the weights and :func:`slimtorch.load` can rebuild it without user code.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from slimtorch.core.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")

#: Attribute on a model holding ``{"name": ..., "kwargs": {...}}``.
SPEC_ATTR = "slimtorch_spec"


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a zoo constructor under ``name``."""
    return MODELS.register(name)


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build a zoo model by name.

    Args:
        name: one of :func:`list_models` (case-insensitive).
        **kwargs: passed to the constructor (e.g. ``num_classes=10``, ``hidden=(300, 100)``).

    Returns:
        The model, with ``model.slimtorch_spec`` set to ``{"name": name, "kwargs": kwargs}``.
    """
    ctor = MODELS.get(name)
    try:
        model = ctor(**kwargs)
    except (TypeError, ValueError, RuntimeError, OverflowError, MemoryError) as e:
        # e.g. hidden=[-5]: torch's "Trying to create tensor with negative dimension"
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"bad arguments for model {name!r} ({_args_text(kwargs)}): {first}; its arguments are "
                         f"{name}{inspect.signature(ctor)}") from None
    setattr(model, SPEC_ATTR, {"name": name.lower(), "kwargs": copy.deepcopy(_plain(kwargs))})
    return model


def _args_text(kwargs: dict[str, Any]) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return text if len(text) <= 200 else text[:197] + "..."


def list_models() -> list[str]:
    """Names accepted by :func:`create`."""
    return MODELS.names()


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v
