"""Channel surgery per layer type: how to read and how to cut each kind of layer.

A :class:`LayerSurgery` tells the dependency graph three things about a layer type, and then does the
cutting:

* ``spaces(m)``: its index spaces and their sizes, e.g. ``{"in": C_in, "out": C_out}``; attention
  adds ``"heads"`` (a unit there is a whole head: ``head_dim`` rows of q, k, v and columns of proj).
* ``bind(m, args, kwargs, output)``: which input/output tensor carries which space along which dim
  (``("in", x, 1)`` for a conv, ``("in", x, -1)`` for a Linear). Inputs it does not bind are kept
  whole (their channels are pinned).
* ``coupling(m)``: positions that must go together inside the layer (a depthwise conv couples input
  channel ``i`` with output channel ``i``; a GroupNorm couples the channels of one group).
* ``tensors(m, space)``: the weight slices that belong to a position, for importance scores.
* ``prune(m, space, keep)``: keep only positions ``keep`` (a sorted ``LongTensor``) and update the
  structural attributes (``out_channels``, ``num_heads``, ...) so the layer stays consistent.

Register a rule for a custom layer with ``register_surgery(MyLayer)(MyLayerSurgery())`` (or as a class
decorator on the rule). Layers found by type through the MRO, so subclasses inherit their base's rule.

Layers this package cannot import (the model zoo sits below ``prune``) declare a kind instead,
``slimtorch_kind = "qkv_attention"`` on the class, and the rule is registered for that kind with
:func:`register_surgery_kind` (see :class:`slimtorch.core.registry.LayerRuleRegistry`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from slimtorch.core.registry import LayerRuleRegistry

#: (space, tensor, dim): a tensor that carries a space along a dim.
Binding = tuple[str, torch.Tensor, int]


@dataclass
class WeightSlice:
    """The part of a parameter that belongs to the positions of one space.

    Position ``p`` owns ``view(param).index_select(dim, p*block ... p*block+block-1)``.

    Attributes:
        role: ``"weight"`` (conv/linear/embedding/attention weights), ``"norm"`` (BN/LN/GN scale),
            ``"bias"`` or ``"param"`` (a bare parameter such as a position embedding).
        param: the parameter (its ``.grad`` is read by gradient-based criteria).
        dim: the dim of ``view(param)`` indexed by the space.
        block: consecutive entries per position (``head_dim`` for heads, else 1).
        view: maps the full parameter (or its gradient) to the tensor that ``dim`` refers to.
    """

    role: str
    param: torch.Tensor
    dim: int
    block: int = 1
    view: Callable[[torch.Tensor], torch.Tensor] = lambda t: t


class LayerSurgery:
    """Base class of the rules; see the module docstring for the contract."""

    def spaces(self, m: nn.Module) -> dict[str, int]:
        raise NotImplementedError

    def bind(
        self, m: nn.Module, args: tuple, kwargs: dict, output: Any
    ) -> tuple[list[Binding], list[Binding]]:
        raise NotImplementedError

    def coupling(self, m: nn.Module) -> list[tuple[str, np.ndarray, str, np.ndarray]]:
        return []

    def tensors(self, m: nn.Module, space: str) -> list[WeightSlice]:
        return []

    def prune(self, m: nn.Module, space: str, keep: torch.Tensor) -> None:
        raise NotImplementedError


#: Layer type (or declared kind) -> surgery rule.
_SURGERY: LayerRuleRegistry[LayerSurgery] = LayerRuleRegistry("surgery rule")


def register_surgery(layer_type: type[nn.Module]) -> Callable[[Any], Any]:
    """Register the surgery rule of ``layer_type``; use on an instance or on a rule class.

    Example::

        @register_surgery(MyConv)
        class MyConvSurgery(LayerSurgery): ...
    """

    def deco(rule: Any) -> Any:
        _SURGERY.register(layer_type, rule() if isinstance(rule, type) else rule, overwrite=True)
        return rule

    return deco


def register_surgery_kind(kind: str) -> Callable[[Any], Any]:
    """Register the surgery rule of layers declaring ``slimtorch_kind = kind``; like :func:`register_surgery`."""

    def deco(rule: Any) -> Any:
        _SURGERY.register_kind(kind, rule() if isinstance(rule, type) else rule, overwrite=True)
        return rule

    return deco


#: Top-level package -> ``provider(cls) -> rule | None``, asked about that package's classes on a miss, so
#: rules for an optional library (transformers) are registered on first use without importing it.
_PROVIDERS: dict[str, Callable[[type], LayerSurgery | None]] = {}


def register_rule_provider(package: str, provider: Callable[[type], LayerSurgery | None]) -> None:
    """Let ``provider`` supply rules for classes defined in ``package`` (e.g. ``"transformers"``).

    On a lookup that finds no rule, each class of the MRO defined in ``package`` is offered to
    ``provider``; a rule it returns is registered for that class (later lookups are direct).
    """
    _PROVIDERS[package] = provider


def find_surgery(layer_type: type) -> LayerSurgery | None:
    """The rule registered for ``layer_type``, its declared kind or its nearest base class, else None."""
    rule = _SURGERY.find(layer_type)
    if rule is None and _PROVIDERS:
        for cls in layer_type.__mro__:
            provider = _PROVIDERS.get(cls.__module__.partition(".")[0])
            found = provider(cls) if provider is not None else None
            if found is not None:
                _SURGERY.register(cls, found, overwrite=True)
                return found
    return rule


def registered_types() -> list[type]:
    """Layer types that have a surgery rule."""
    return _SURGERY.types()


# ---- slicing helpers (pure on the module's tensors) --------------------------------------------
def _replace(m: nn.Module, attr: str, new: torch.Tensor) -> None:
    old = getattr(m, attr)
    if isinstance(old, nn.Parameter):
        setattr(m, attr, nn.Parameter(new.detach().clone().contiguous(), requires_grad=old.requires_grad))
    else:
        m._buffers[attr] = new.detach().clone().contiguous()


def slice_tensor_(m: nn.Module, attr: str, dim: int, keep: torch.Tensor) -> None:
    """Keep only entries ``keep`` along ``dim`` of parameter/buffer ``m.<attr>`` (if it exists)."""
    t = getattr(m, attr, None)
    if isinstance(t, torch.Tensor):
        _replace(m, attr, t.index_select(dim, keep))


def _blocks(keep: torch.Tensor, block: int) -> torch.Tensor:
    """Indices of whole blocks: ``[k*block + j for k in keep for j in range(block)]``."""
    return (keep[:, None] * block + torch.arange(block)).reshape(-1)


# ---- rules -----------------------------------------------------------------------------------
class ConvSurgery(LayerSurgery):
    """Conv1d/2d/3d, including grouped and depthwise (channels on dim 1).

    Weight ``(C_out, C_in / groups, *k)``. With ``groups > 1`` all input and output channels of one
    group are coupled, so whole groups are removed and ``groups`` drops accordingly (a depthwise conv
    has one channel per group: input channel ``i`` goes with output channel ``i``).
    """

    def spaces(self, m: nn.Module) -> dict[str, int]:
        return {"in": m.in_channels, "out": m.out_channels}

    def bind(self, m, args, kwargs, output):  # noqa: ANN001
        return [("in", args[0], 1)], [("out", output, 1)]

    def coupling(self, m):  # noqa: ANN001
        g = m.groups
        if g == 1:
            return []
        ipg, opg = m.in_channels // g, m.out_channels // g
        i = np.arange(m.in_channels)
        o = np.arange(m.out_channels)
        return [("in", i, "out", (i // ipg) * opg), ("out", o, "out", (o // opg) * opg)]

    def tensors(self, m, space):  # noqa: ANN001
        if space == "out":
            out = [WeightSlice("weight", m.weight, 0)]
            return out + ([WeightSlice("bias", m.bias, 0)] if m.bias is not None else [])
        return [WeightSlice("weight", m.weight, 1)] if m.groups == 1 else []

    def prune(self, m, space, keep):  # noqa: ANN001
        if space == "out":
            opg = m.out_channels // m.groups
            slice_tensor_(m, "weight", 0, keep)
            slice_tensor_(m, "bias", 0, keep)
            m.out_channels = len(keep)
            m.groups = max(1, len(keep) // opg) if m.groups > 1 else 1
        else:
            if m.weight.shape[1] == m.in_channels:  # dense conv: weight has every input channel
                slice_tensor_(m, "weight", 1, keep)
            m.in_channels = len(keep)


class LinearSurgery(LayerSurgery):
    """nn.Linear: weight ``(out, in)``, channels on the last dim of its input and output."""

    def spaces(self, m):  # noqa: ANN001
        return {"in": m.in_features, "out": m.out_features}

    def bind(self, m, args, kwargs, output):  # noqa: ANN001
        return [("in", args[0], -1)], [("out", output, -1)]

    def tensors(self, m, space):  # noqa: ANN001
        if space == "out":
            out = [WeightSlice("weight", m.weight, 0)]
            return out + ([WeightSlice("bias", m.bias, 0)] if m.bias is not None else [])
        return [WeightSlice("weight", m.weight, 1)]

    def prune(self, m, space, keep):  # noqa: ANN001
        if space == "out":
            slice_tensor_(m, "weight", 0, keep)
            slice_tensor_(m, "bias", 0, keep)
            m.out_features = len(keep)
        else:
            slice_tensor_(m, "weight", 1, keep)
            m.in_features = len(keep)


class BatchNormSurgery(LayerSurgery):
    """BatchNorm1d/2d/3d: per-channel scale, shift and running statistics (channels on dim 1)."""

    def spaces(self, m):  # noqa: ANN001
        return {"out": m.num_features}

    def bind(self, m, args, kwargs, output):  # noqa: ANN001
        return [("out", args[0], 1)], [("out", output, 1)]

    def tensors(self, m, space):  # noqa: ANN001
        if m.weight is None:
            return []
        return [WeightSlice("norm", m.weight, 0), WeightSlice("bias", m.bias, 0)]

    def prune(self, m, space, keep):  # noqa: ANN001
        for a in ("weight", "bias", "running_mean", "running_var"):
            slice_tensor_(m, a, 0, keep)
        m.num_features = len(keep)


class LayerNormSurgery(LayerSurgery):
    """LayerNorm over the last dim (a multi-dim ``normalized_shape`` keeps its channels)."""

    def spaces(self, m):  # noqa: ANN001
        return {"out": m.normalized_shape[0]} if len(m.normalized_shape) == 1 else {}

    def bind(self, m, args, kwargs, output):  # noqa: ANN001
        if len(m.normalized_shape) != 1:
            return [], []
        return [("out", args[0], -1)], [("out", output, -1)]

    def tensors(self, m, space):  # noqa: ANN001
        if m.weight is None:
            return []
        out = [WeightSlice("norm", m.weight, 0)]
        return out + ([WeightSlice("bias", m.bias, 0)] if m.bias is not None else [])

    def prune(self, m, space, keep):  # noqa: ANN001
        slice_tensor_(m, "weight", 0, keep)
        slice_tensor_(m, "bias", 0, keep)
        m.normalized_shape = (len(keep),)


class GroupNormSurgery(LayerSurgery):
    """GroupNorm: the channels of one group are coupled, so whole groups go and ``num_groups`` drops."""

    def spaces(self, m):  # noqa: ANN001
        return {"out": m.num_channels}

    def bind(self, m, args, kwargs, output):  # noqa: ANN001
        return [("out", args[0], 1)], [("out", output, 1)]

    def coupling(self, m):  # noqa: ANN001
        cpg = m.num_channels // m.num_groups
        c = np.arange(m.num_channels)
        return [("out", c, "out", (c // cpg) * cpg)]

    def tensors(self, m, space):  # noqa: ANN001
        return [WeightSlice("norm", m.weight, 0), WeightSlice("bias", m.bias, 0)] if m.affine else []

    def prune(self, m, space, keep):  # noqa: ANN001
        cpg = m.num_channels // m.num_groups
        slice_tensor_(m, "weight", 0, keep)
        slice_tensor_(m, "bias", 0, keep)
        m.num_channels = len(keep)
        m.num_groups = len(keep) // cpg


class EmbeddingSurgery(LayerSurgery):
    """nn.Embedding: ``embedding_dim`` is the output channel space (coupled to the residual stream)."""

    def spaces(self, m):  # noqa: ANN001
        return {"out": m.embedding_dim}

    def bind(self, m, args, kwargs, output):  # noqa: ANN001
        return [], [("out", output, -1)]

    def tensors(self, m, space):  # noqa: ANN001
        return [WeightSlice("weight", m.weight, 1)]

    def prune(self, m, space, keep):  # noqa: ANN001
        slice_tensor_(m, "weight", 1, keep)
        m.embedding_dim = len(keep)


class SelfAttentionSurgery(LayerSurgery):
    """Kind ``"qkv_attention"``: self-attention with separate ``q``, ``k``, ``v``, ``proj`` Linear children
    and a ``num_heads`` attribute, called on ``(B, T, dim)`` (slimtorch's
    :class:`~slimtorch.models.attention.SelfAttention` declares it).

    Spaces: ``"in"`` (q/k/v input columns), ``"out"`` (proj rows) and ``"heads"``: removing head ``h``
    removes rows ``h*d:(h+1)*d`` of q, k, v and the same columns of proj, and ``num_heads -= 1``.
    """

    def spaces(self, m):  # noqa: ANN001
        return {"in": m.q.in_features, "out": m.proj.out_features, "heads": m.num_heads}

    def bind(self, m, args, kwargs, output):  # noqa: ANN001
        x = args[0] if args else kwargs["x"]
        return [("in", x, -1)], [("out", output, -1)]

    def tensors(self, m, space):  # noqa: ANN001
        if space == "in":
            return [WeightSlice("weight", lin.weight, 1) for lin in (m.q, m.k, m.v)]
        if space == "out":
            out = [WeightSlice("weight", m.proj.weight, 0)]
            return out + ([WeightSlice("bias", m.proj.bias, 0)] if m.proj.bias is not None else [])
        dq, dv = m.q.out_features // m.num_heads, m.v.out_features // m.num_heads
        out = [
            WeightSlice("weight", m.q.weight, 0, dq),
            WeightSlice("weight", m.k.weight, 0, dq),
            WeightSlice("weight", m.v.weight, 0, dv),
            WeightSlice("weight", m.proj.weight, 1, dv),
        ]
        return out + [
            WeightSlice("bias", lin.bias, 0, d)
            for lin, d in ((m.q, dq), (m.k, dq), (m.v, dv))
            if lin.bias is not None
        ]

    def prune(self, m, space, keep):  # noqa: ANN001
        if space == "in":
            for lin in (m.q, m.k, m.v):
                LinearSurgery().prune(lin, "in", keep)
        elif space == "out":
            LinearSurgery().prune(m.proj, "out", keep)
        else:
            dq, dv = m.q.out_features // m.num_heads, m.v.out_features // m.num_heads
            for lin, d in ((m.q, dq), (m.k, dq), (m.v, dv)):
                LinearSurgery().prune(lin, "out", _blocks(keep, d))
            LinearSurgery().prune(m.proj, "in", _blocks(keep, dv))
            m.num_heads = len(keep)


class MultiheadAttentionSurgery(LayerSurgery):
    """``nn.MultiheadAttention`` with packed ``in_proj_weight`` ``(3E, E)``: whole heads only.

    Its model width ``embed_dim`` is both the input width and the q/k/v width, so a head cannot be
    removed without narrowing the residual stream: every channel of a head is coupled with the others,
    a unit is one head (``head_dim`` channels of the stream), and pruning updates ``embed_dim``
    (= ``kdim`` = ``vdim``) and ``num_heads`` while ``head_dim`` stays. Variants with separate
    ``kdim``/``vdim`` or ``bias_k`` keep their channels.
    """

    @staticmethod
    def _supported(m: nn.MultiheadAttention) -> bool:
        return m._qkv_same_embed_dim and m.bias_k is None and m.in_proj_weight is not None

    def spaces(self, m):  # noqa: ANN001
        return {"out": m.embed_dim} if self._supported(m) else {}

    def bind(self, m, args, kwargs, output):  # noqa: ANN001
        if not self._supported(m):
            return [], []
        ins = [
            a
            for a in list(args[:3]) + [kwargs.get(k) for k in ("query", "key", "value")]
            if isinstance(a, torch.Tensor)
        ]
        return [("out", t, -1) for t in ins], [("out", output[0], -1)]

    def coupling(self, m):  # noqa: ANN001
        c = np.arange(m.embed_dim)
        return [("out", c, "out", (c // m.head_dim) * m.head_dim)]

    def tensors(self, m, space):  # noqa: ANN001
        e = m.embed_dim
        out = []
        for j in range(3):  # q, k, v blocks of the packed projection: rows and columns
            out.append(WeightSlice("weight", m.in_proj_weight, 0, 1, lambda t, j=j: t[j * e : (j + 1) * e]))
        out.append(WeightSlice("weight", m.in_proj_weight, 1))
        out += [WeightSlice("weight", m.out_proj.weight, 0), WeightSlice("weight", m.out_proj.weight, 1)]
        return out

    def prune(self, m, space, keep):  # noqa: ANN001
        e = m.embed_dim
        rows = torch.cat([keep + j * e for j in range(3)])
        _replace(m, "in_proj_weight", m.in_proj_weight[rows][:, keep])
        if m.in_proj_bias is not None:
            _replace(m, "in_proj_bias", m.in_proj_bias[rows])
        p = m.out_proj
        _replace(p, "weight", p.weight[keep][:, keep])
        if p.bias is not None:
            _replace(p, "bias", p.bias[keep])
        p.in_features = p.out_features = len(keep)
        m.embed_dim = m.kdim = m.vdim = len(keep)
        m.num_heads = len(keep) // m.head_dim


class PinnedSurgery(LayerSurgery):
    """A layer whose channels are all kept (opaque): its inputs and outputs are pinned.

    Args:
        note: why, shown in the pruning report; ``{fqn}`` is replaced by the layer's name.
    """

    def __init__(self, note: str = "{fqn}: channels kept") -> None:
        self.note = note

    def spaces(self, m):  # noqa: ANN001
        return {}

    def bind(self, m, args, kwargs, output):  # noqa: ANN001
        return [], []

    def prune(self, m, space, keep):  # noqa: ANN001
        raise RuntimeError("a pinned layer is never pruned")


for _t in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_surgery(_t)(ConvSurgery())
register_surgery(nn.Linear)(LinearSurgery())
register_surgery(nn.modules.batchnorm._BatchNorm)(BatchNormSurgery())
register_surgery(nn.LayerNorm)(LayerNormSurgery())
register_surgery(nn.GroupNorm)(GroupNormSurgery())
register_surgery(nn.Embedding)(EmbeddingSurgery())
register_surgery_kind("qkv_attention")(SelfAttentionSurgery())
register_surgery(nn.MultiheadAttention)(MultiheadAttentionSurgery())
register_surgery_kind("channel_pad")(  # declared by the zoo's PadShortcut
    PinnedSurgery(
        "{fqn}: PadShortcut (ResNet shortcut option A) appends zero channels by position, so the channels on "
        "both sides of it are kept (not prunable); build the model with shortcut='B' to prune them"
    )
)
