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

#: Attributes that describe a layer's structure. Recorded when they differ from a freshly created zoo
#: model; extend it for custom layers whose forward reads such an attribute.
STRUCTURAL_ATTRS: list[str] = [
    "in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
    "normalized_shape", "num_embeddings", "embedding_dim", "num_heads", "embed_dim", "head_dim",
    "num_groups", "num_channels", "use_res", "kdim", "vdim",
    # Hugging Face layers (Conv1D, attention): what their forward reads besides the weights' shapes
    "nf", "nx", "num_attention_heads", "attention_head_size", "all_head_size", "num_key_value_groups",
    "split_size", "scaling",
]


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


def apply_structure(model: nn.Module, changed: dict[str, dict[str, Any]]) -> None:
    """Set the recorded structural attributes (``{fqn: {attr: value}}``) on ``model``'s modules."""
    for name, attrs in changed.items():
        m = model.get_submodule(name) if name else model
        for a, v in attrs.items():
            setattr(m, a, tuple(v) if isinstance(v, list) else v)


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
