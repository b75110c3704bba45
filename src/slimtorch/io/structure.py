"""A model's structure as data: the attributes that say how wide each layer is, applied and read back.

:func:`structure_of` reads the :data:`STRUCTURAL_ATTRS` of every module, :func:`apply_structure` sets
recorded ones, and :func:`resize_like` gives every parameter the shape of a stored tensor (a pruned
checkpoint loaded into a model built at the original widths). Shared by :mod:`.storage` (zoo models)
and :mod:`.hf` (Hugging Face models).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimtorch.core.errors import SlimtorchError
from slimtorch.io.spec import STRUCTURAL_ATTRS


def structure_of(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module fqn: {attr: value}}`` of every :data:`STRUCTURAL_ATTRS` entry the modules hold."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        attrs = {}
        for a in STRUCTURAL_ATTRS:
            v = getattr(type(m), a, None)
            if isinstance(v, property):  # derived values (e.g. head_dim) are not stored
                continue
            v = getattr(m, a, None)
            if isinstance(v, (bool, int, float, tuple, list)) and not isinstance(v, torch.Tensor):
                attrs[a] = list(v) if isinstance(v, tuple) else v
        if attrs:
            out[name] = attrs
    return out


def _plain_like(v: Any, cur: Any) -> bool:
    """``v`` is plain data of the type the attribute holds now (a number for a number, ints for a tuple)."""
    if isinstance(cur, bool) or isinstance(v, bool):
        return isinstance(cur, bool) and isinstance(v, bool)
    if isinstance(cur, (int, float)):
        return isinstance(v, (int, float)) and type(cur) is type(v) or (isinstance(cur, float) and isinstance(v, int))
    if isinstance(cur, (tuple, list)):
        return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    return False


def apply_structure(model: nn.Module, changed: Any, where: str = "the structure") -> None:
    """Set recorded structural attributes (``{fqn: {attr: value}}``) on ``model``'s modules.

    The record is untrusted data (it comes from a file): only :data:`STRUCTURAL_ATTRS` that the module
    already carries may be set, with a plain value of the same type; anything else is a
    :class:`~slimtorch.core.errors.SlimtorchError` naming the entry.
    """
    if not isinstance(changed, dict):
        raise SlimtorchError(f"{where}: expected a mapping of layer names to attributes, got {type(changed).__name__}")
    for name, attrs in changed.items():
        try:
            m = model.get_submodule(name) if name else model
        except AttributeError:
            raise SlimtorchError(f"{where}: layer {name!r} does not exist in {type(model).__name__}") from None
        if not isinstance(attrs, dict):
            raise SlimtorchError(f"{where}: entry {name!r} is not a mapping of attributes")
        for a, v in attrs.items():
            cur = getattr(m, a, None)
            if a not in STRUCTURAL_ATTRS or cur is None or not _plain_like(v, cur):
                raise SlimtorchError(
                    f"{where}: {name or '<root>'}.{a} = {str(v)[:40]} is refused (only structural attributes the "
                    "layer already has, with a value of the same type, may be set)"
                )
            setattr(m, a, tuple(v) if isinstance(v, list) and isinstance(cur, tuple) else v)


#: Layer type -> (attribute, weight dim) pairs that follow the weight's shape when a load resizes it.
_SHAPE_ATTRS: dict[type, tuple[tuple[str, int], ...]] = {
    nn.Linear: (("out_features", 0), ("in_features", 1)),
    nn.Embedding: (("num_embeddings", 0), ("embedding_dim", 1)),
}


def _sync_shape_attrs(m: nn.Module) -> None:
    """Make ``in_features``/``out_features`` (etc.) agree with a resized weight (a fresh skeleton had the
    unpruned widths: a 1075-row weight in a Linear that still said ``out_features=1536``)."""
    for t, pairs in _SHAPE_ATTRS.items():
        if isinstance(m, t) and isinstance(getattr(m, "weight", None), torch.Tensor):
            for attr, dim in pairs:
                setattr(m, attr, int(m.weight.shape[dim]))
    if isinstance(m, nn.modules.conv._ConvNd):
        m.out_channels, m.in_channels = int(m.weight.shape[0]), int(m.weight.shape[1]) * m.groups
    elif isinstance(m, nn.LayerNorm) and m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)


def resize_like(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Replace every parameter/buffer whose shape differs from ``state`` by an empty one of the new shape
    (and update the layer's width attributes to match)."""
    for key, t in state.items():
        mod_name, _, attr = key.rpartition(".")
        try:
            m = model.get_submodule(mod_name) if mod_name else model
        except AttributeError:
            continue
        cur = getattr(m, attr, None)
        if isinstance(cur, torch.Tensor) and cur.shape != t.shape:
            new = torch.empty(t.shape, dtype=t.dtype)
            if isinstance(cur, nn.Parameter):
                setattr(m, attr, nn.Parameter(new, requires_grad=cur.requires_grad))
            else:
                m._buffers[attr] = new
            _sync_shape_attrs(m)
