"""Surgery rules for Hugging Face transformers layers: attention heads (GQA too), ``Conv1D``, RMSNorm.

The rules are supplied on first use by a provider registered for the ``transformers`` package
(:func:`~slimtorch.prune.structured.surgery.register_rule_provider`), so slimtorch never imports
transformers unless a model does. Classes are recognised by name (``BertAttention``, ``LlamaAttention``,
``GPT2Attention``, ``ViTAttention``, ... see :data:`ATTENTION_LAYOUTS`), and a subclass gets its base's rule.

**Attention as one leaf.** Heads cannot be seen channel by channel (``view(B, T, -1, head_dim)`` splits the
channel dim), so the whole attention block is one layer with these index spaces:

* ``"heads"``: one unit per key-value group. Without GQA a group is one head: ``head_dim`` rows of q, k,
  v and the same columns of the output projection. With GQA (``n_kv < n_q`` key-value heads, each shared
  by ``r = n_q / n_kv`` query heads) unit ``g`` is key-value head ``g`` with its ``r`` query heads: rows
  ``g*d .. (g+1)*d`` of k and v, ``g*r*d .. (g+1)*r*d`` of q and those columns of o.
* ``"query_heads"`` (GQA only): one unit per *slot* ``s`` in ``[0, r)``: query head ``s`` of every group
  (heads ``g*r + s``). Removing slots keeps the key-value heads and removes the same number of query
  heads from each group, so every group still serves the same number of query heads (``repeat_kv``
  stays valid). Its score is summed over the groups. Before scoring, the Hugging Face adapter sorts each
  group's query heads by importance (:meth:`HFAttentionSurgery.permute_query_heads`, which leaves the
  function unchanged), so slot ``s`` holds every group's ``s``-th most important head and removing the
  last slots removes each group's own weakest heads.
* ``"in"`` / ``"out"`` (input columns of q, k, v / rows of o), or one ``"hidden"`` space when the block adds
  its residual and normalises inside (BERT's ``BertAttention``: output = LayerNorm(dense(ctx) + x)).

Pruning keeps the head size and updates what the forward reads: ``num_attention_heads`` / ``num_heads``,
``all_head_size`` / ``split_size`` (= heads x head_dim), ``num_key_value_groups`` (= n_q / n_kv).
``Channel(gqa="query" | "kv")`` picks which of the two GQA spaces is pruned.

``Conv1D`` (GPT-2's linear layer with the weight stored transposed, ``(in, out)``) gets a rule like
``nn.Linear``'s; GPT-2's packed ``c_attn`` (q, k, v side by side in one ``Conv1D``) is cut section by
section. RMSNorm layers (``weight * x / rms(x)``) are cut like a LayerNorm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from slimtorch.prune.structured.surgery import (
    LayerSurgery,
    WeightSlice,
    _blocks,
    register_rule_provider,
    slice_tensor_,
)


# ---- Conv1D -----------------------------------------------------------------------------------------
class Conv1DSurgery(LayerSurgery):
    """``transformers.pytorch_utils.Conv1D``: ``y = x @ W + b`` with ``W`` of shape ``(nx, nf)`` = (in, out)."""

    def spaces(self, m):  # noqa: ANN001
        return {"in": m.nx, "out": m.nf}

    def bind(self, m, args, kwargs, output):  # noqa: ANN001
        return [("in", args[0], -1)], [("out", output, -1)]

    def tensors(self, m, space):  # noqa: ANN001
        if space == "out":
            return [WeightSlice("weight", m.weight, 1), WeightSlice("bias", m.bias, 0)]
        return [WeightSlice("weight", m.weight, 0)]

    def prune(self, m, space, keep):  # noqa: ANN001
        _keep_out(m, keep) if space == "out" else _keep_in(m, keep)


class RMSNormSurgery(LayerSurgery):
    """RMSNorm (``weight * x / sqrt(mean(x^2) + eps)``, e.g. ``LlamaRMSNorm``): a per-channel scale."""

    def spaces(self, m):  # noqa: ANN001
        return {"out": m.weight.shape[0]}

    def bind(self, m, args, kwargs, output):  # noqa: ANN001
        x = args[0] if args else kwargs["hidden_states"]
        return [("out", x, -1)], [("out", output, -1)]

    def tensors(self, m, space):  # noqa: ANN001
        return [WeightSlice("norm", m.weight, 0)]

    def prune(self, m, space, keep):  # noqa: ANN001
        slice_tensor_(m, "weight", 0, keep)


# ---- projections (Linear or Conv1D) ---------------------------------------------------------------
def _out_dim(m: nn.Module) -> int:
    """The weight dim of the output features: 1 for Conv1D (weight ``(in, out)``), 0 for Linear."""
    return 1 if _is_conv1d_attrs(m) else 0


def _keep_out(m: nn.Module, keep: torch.Tensor) -> None:
    """Keep output features ``keep`` of a Linear or Conv1D (weight rows, or columns when transposed)."""
    slice_tensor_(m, "weight", _out_dim(m), keep)
    slice_tensor_(m, "bias", 0, keep)
    if _is_conv1d_attrs(m):
        m.nf = len(keep)
    else:
        m.out_features = len(keep)


def _keep_in(m: nn.Module, keep: torch.Tensor) -> None:
    slice_tensor_(m, "weight", 1 - _out_dim(m), keep)
    if _is_conv1d_attrs(m):
        m.nx = len(keep)
    else:
        m.in_features = len(keep)


def _is_conv1d_attrs(m: nn.Module) -> bool:
    return hasattr(m, "nf") and hasattr(m, "nx")


def _rows(m: nn.Module, attr: str, lo: int, size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A view putting output features ``lo .. lo+size`` of ``m.<attr>`` first, as a 2-D ``(size, -1)``."""
    d = _out_dim(m) if attr == "weight" else 0
    return lambda t: t.movedim(d, 0)[lo : lo + size].reshape(size, -1)


def _slots(view: Callable[[torch.Tensor], torch.Tensor], n_kv: int, r: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Regroup q rows ``(n_kv * r * d, k)`` (head ``g*r + s``) by slot: ``(r, n_kv * d * k)``."""
    return lambda t: view(t).reshape(n_kv, r, -1).transpose(0, 1).reshape(r, -1)


# ---- attention --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttentionLayout:
    """Where a Hugging Face attention block keeps its projections.

    Attributes:
        q, k, v, o: child paths of the query, key, value and output projections (Linear or Conv1D). GPT-2
            packs q, k and v into one Conv1D: the same path three times, then ``packed=True``.
        head_dim: attribute path of the head size.
        norm: child path of a LayerNorm applied after a residual add *inside* the block (BERT), else None.
        packed: q, k, v are consecutive output sections of one layer.
    """

    q: str
    k: str
    v: str
    o: str
    head_dim: str = "head_dim"
    norm: str | None = None
    packed: bool = False


_BERT = AttentionLayout("self.query", "self.key", "self.value", "output.dense",
                        head_dim="self.attention_head_size", norm="output.LayerNorm")
_QKVO = AttentionLayout("q_proj", "k_proj", "v_proj", "o_proj")

#: Attention class name -> layout. Add a model family here (or register a rule for its class).
ATTENTION_LAYOUTS: dict[str, AttentionLayout] = {
    "BertAttention": _BERT,
    "RobertaAttention": _BERT,
    "XLMRobertaAttention": _BERT,
    "ElectraAttention": _BERT,
    "ViTAttention": _QKVO,
    "LlamaAttention": _QKVO,
    "MistralAttention": _QKVO,
    "Qwen2Attention": _QKVO,
    "GPT2Attention": AttentionLayout("c_attn", "c_attn", "c_attn", "c_proj", packed=True),
}

#: Module attributes the attention forward reads, and how each follows the head counts.
_HEAD_ATTRS: dict[str, Callable[[int, int, int], int]] = {
    "num_attention_heads": lambda nq, nkv, d: nq,
    "num_heads": lambda nq, nkv, d: nq,
    "num_key_value_heads": lambda nq, nkv, d: nkv,
    "all_head_size": lambda nq, nkv, d: nq * d,
    "split_size": lambda nq, nkv, d: nq * d,
    "num_key_value_groups": lambda nq, nkv, d: nq // nkv,
}


def _attr(m: nn.Module, path: str):  # noqa: ANN202
    for part in path.split("."):
        m = getattr(m, part)
    return m


class HFAttentionSurgery(LayerSurgery):
    """Head pruning of a Hugging Face attention block described by an :class:`AttentionLayout`.

    See the module docstring for the spaces; cross-attention blocks keep their channels.
    """

    def __init__(self, layout: AttentionLayout) -> None:
        self.layout = layout

    # shapes read from the weights, so rules stay right after any earlier cut
    def dims(self, m: nn.Module) -> tuple[int, int, int, int]:
        """``(n_q, n_kv, head_dim, hidden)`` of ``m`` as its weights are now."""
        lay = self.layout
        d = int(_attr(m, lay.head_dim))
        q = _attr(m, lay.q)
        hidden = q.weight.shape[1 - _out_dim(q)]
        if lay.packed:
            nq = nkv = q.weight.shape[_out_dim(q)] // (3 * d)
        else:
            nq = q.weight.shape[_out_dim(q)] // d
            k = _attr(m, lay.k)
            nkv = k.weight.shape[_out_dim(k)] // d
        return nq, nkv, d, hidden

    def _supported(self, m: nn.Module) -> bool:
        return not getattr(m, "is_cross_attention", False)

    def spaces(self, m):  # noqa: ANN001
        if not self._supported(m):
            return {}
        nq, nkv, d, hidden = self.dims(m)
        out = {"heads": nkv}
        if nq > nkv:
            out["query_heads"] = nq // nkv
        o = _attr(m, self.layout.o)
        if self.layout.norm is not None:
            out["hidden"] = hidden
        else:
            out.update({"in": hidden, "out": o.weight.shape[_out_dim(o)]})
        return out

    def bind(self, m, args, kwargs, output):  # noqa: ANN001
        if not self._supported(m):
            return [], []
        x = args[0] if args else kwargs["hidden_states"]
        y = output[0] if isinstance(output, (tuple, list)) else output
        if self.layout.norm is not None:
            return [("hidden", x, -1)], [("hidden", y, -1)]
        return [("in", x, -1)], [("out", y, -1)]

    def _qkv(self, m: nn.Module) -> list[tuple[nn.Module, int, int]]:
        """``(layer, first output feature, size)`` of the q, k and v sections."""
        nq, nkv, d, _ = self.dims(m)
        lay = self.layout
        if lay.packed:
            c = _attr(m, lay.q)
            return [(c, 0, nq * d), (c, nq * d, nkv * d), (c, (nq + nkv) * d, nkv * d)]
        return [(_attr(m, lay.q), 0, nq * d), (_attr(m, lay.k), 0, nkv * d), (_attr(m, lay.v), 0, nkv * d)]

    def tensors(self, m, space):  # noqa: ANN001
        lay = self.layout
        o = _attr(m, lay.o)
        in_slices = [WeightSlice("weight", lin.weight, 1 - _out_dim(lin)) for lin in dict.fromkeys(
            _attr(m, p) for p in (lay.q, lay.k, lay.v))]
        out_slices = [WeightSlice("weight", o.weight, _out_dim(o))] + (
            [WeightSlice("bias", o.bias, 0)] if o.bias is not None else [])
        if space in ("in", "out", "hidden"):
            got = {"in": in_slices, "out": out_slices, "hidden": in_slices + out_slices}[space]
            if space == "hidden":
                norm = _attr(m, lay.norm)
                got = got + [WeightSlice("norm", norm.weight, 0), WeightSlice("bias", norm.bias, 0)]
            return got
        nq, nkv, d, _ = self.dims(m)
        r = nq // nkv
        (q, q0, qn), (k, k0, kn), (v, v0, vn) = self._qkv(m)
        o_cols = lambda t: t.movedim(1 - _out_dim(o), 0).reshape(nq * d, -1)  # noqa: E731  (n_q*d, hidden)
        if space == "heads":  # unit g: kv head g and its r query heads
            out = [WeightSlice("weight", q.weight, 0, r * d, _rows(q, "weight", q0, qn)),
                   WeightSlice("weight", k.weight, 0, d, _rows(k, "weight", k0, kn)),
                   WeightSlice("weight", v.weight, 0, d, _rows(v, "weight", v0, vn)),
                   WeightSlice("weight", o.weight, 0, r * d, o_cols)]
            for lin, lo, n, blk in ((q, q0, qn, r * d), (k, k0, kn, d), (v, v0, vn, d)):
                if lin.bias is not None:
                    out.append(WeightSlice("bias", lin.bias, 0, blk, _rows(lin, "bias", lo, n)))
            return out
        # "query_heads": slot s = query head s of every group
        out = [WeightSlice("weight", q.weight, 0, 1, _slots(_rows(q, "weight", q0, qn), nkv, r)),
               WeightSlice("weight", o.weight, 0, 1, _slots(o_cols, nkv, r))]
        if q.bias is not None:
            out.append(WeightSlice("bias", q.bias, 0, 1, _slots(_rows(q, "bias", q0, qn), nkv, r)))
        return out

    def prune(self, m, space, keep):  # noqa: ANN001
        lay = self.layout
        if space in ("in", "out", "hidden"):
            if space in ("in", "hidden"):
                for lin in dict.fromkeys(_attr(m, p) for p in (lay.q, lay.k, lay.v)):
                    _keep_in(lin, keep)
            if space in ("out", "hidden"):
                _keep_out(_attr(m, lay.o), keep)
            if space == "hidden":
                norm = _attr(m, lay.norm)
                slice_tensor_(norm, "weight", 0, keep)
                slice_tensor_(norm, "bias", 0, keep)
                norm.normalized_shape = (len(keep),)
            return
        nq, nkv, d, _ = self.dims(m)
        r = nq // nkv
        if space == "heads":
            kv = keep.numpy()
            q_heads = (kv[:, None] * r + np.arange(r)).reshape(-1)
        else:
            kv = np.arange(nkv)
            q_heads = (kv[:, None] * r + keep.numpy()[None, :]).reshape(-1)
        q_idx = _blocks(torch.as_tensor(q_heads), d)
        kv_idx = _blocks(torch.as_tensor(kv), d)
        (q, q0, _), (k, k0, _), (v, v0, _) = self._qkv(m)
        if lay.packed:
            _keep_out(q, torch.cat([q0 + q_idx, k0 + kv_idx, v0 + kv_idx]))
        else:
            _keep_out(q, q_idx)
            _keep_out(k, kv_idx)
            _keep_out(v, kv_idx)
        _keep_in(_attr(m, lay.o), q_idx)
        n_q, n_kv = len(q_heads), len(kv)
        # the forward reads them from the block, and for BERT from its q/k/v owner (``self``)
        owner = _attr(m, lay.q.rpartition(".")[0]) if "." in lay.q else m
        for holder in dict.fromkeys((m, owner)):
            for name, value in _HEAD_ATTRS.items():
                if isinstance(getattr(holder, name, None), int):
                    setattr(holder, name, value(n_q, n_kv, d))

    def query_head_units(self, m: nn.Module) -> list[WeightSlice]:
        """One unit per query head: its ``head_dim`` rows of q and columns of o (for ranking within groups)."""
        nq, _, d, _ = self.dims(m)
        (q, q0, qn), _, _ = self._qkv(m)
        o = _attr(m, self.layout.o)
        o_cols = lambda t: t.movedim(1 - _out_dim(o), 0).reshape(nq * d, -1)  # noqa: E731
        return [WeightSlice("weight", q.weight, 0, d, _rows(q, "weight", q0, qn)),
                WeightSlice("weight", o.weight, 0, d, o_cols)]

    def permute_query_heads(self, m: nn.Module, order: torch.Tensor) -> None:
        """Reorder the query heads (q rows, o columns) to ``order``, a permutation that keeps every head in
        its key-value group: the block computes exactly the same function."""
        if self.layout.packed:
            raise ValueError("packed q/k/v layers have no grouped key-value heads to reorder")
        _, _, d, _ = self.dims(m)
        idx = _blocks(order, d)
        _keep_out(_attr(m, self.layout.q), idx)
        _keep_in(_attr(m, self.layout.o), idx)


def is_attention_rule(rule: LayerSurgery | None) -> bool:
    """True for the head-pruning rule of a Hugging Face attention block."""
    return isinstance(rule, HFAttentionSurgery)


# ---- the provider -----------------------------------------------------------------------------------
_CONV1D = Conv1DSurgery()
_RMSNORM = RMSNormSurgery()
_ATTENTION = {name: HFAttentionSurgery(layout) for name, layout in ATTENTION_LAYOUTS.items()}


def transformers_rule(cls: type) -> LayerSurgery | None:
    """The rule of a transformers class, by its name (see :data:`ATTENTION_LAYOUTS`), else None."""
    name = cls.__name__
    if name == "Conv1D":
        return _CONV1D
    if name.endswith("RMSNorm"):
        return _RMSNORM
    return _ATTENTION.get(name)


register_rule_provider("transformers", transformers_rule)
