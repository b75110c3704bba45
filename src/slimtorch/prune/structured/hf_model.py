"""Channel pruning of Hugging Face models: the adapter that keeps the model's config true.

``prune_(hf_model, Channel(ratio=0.3))`` prunes attention heads (the rules of :mod:`.hf_rules`) and FFN
widths without any ``exclude``; this adapter then

* keeps the hidden size unless ``Channel(hidden=True)``: BERT, GPT-2 and ViT configs derive the head size
  from ``hidden_size / num_attention_heads``, and the residual stream touches every layer;
* writes the new widths into ``model.config`` (``num_attention_heads``, ``num_key_value_heads``,
  ``intermediate_size`` / ``n_inner``, ``hidden_size``, ``head_dim``). Widths that differ between layers
  are listed per layer in ``config.slimtorch_widths`` (the uniform field then holds the widest layer);
* records the structure a fresh ``type(model)(config)`` would get wrong in ``config.slimtorch_structure``
  (:func:`slimtorch.io.hf.record_structure`), so a ``save_pretrained`` folder always reloads with
  ``slimtorch.load(folder)``, and says in the report whether ``AutoModel.from_pretrained`` can reload it
  (``report.extra["model"]["from_pretrained"]``; it can when widths are uniform and the config can state
  them: not for head-pruned BERT or GPT-2, whose configs have no head size).
"""

from __future__ import annotations

import fnmatch
from typing import Any

import torch
from torch import nn

from slimtorch.io import hf
from slimtorch.prune.structured.adapters import ModelAdapter, register_adapter
from slimtorch.prune.structured.graph import ChannelGroup, DependencyGraph
from slimtorch.prune.structured.hf_rules import HFAttentionSurgery
from slimtorch.prune.structured.importance import IMPORTANCE, NEEDS_GRADIENTS, CoupledTensor
from slimtorch.prune.structured.surgery import find_surgery

#: Name patterns of the first layer of each block's FFN (its output width is the FFN width).
FFN_LAYERS = ("*.intermediate.dense", "*.mlp.fc1", "*.mlp.up_proj", "*.mlp.c_fc")


def _width(m: nn.Module) -> int:
    return int(getattr(m, "nf", None) or m.out_features)


def _embedding_prefix(model: nn.Module) -> str | None:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    for name, m in model.named_modules():
        if m is emb:
            return name
    return None


def attention_dims(model: nn.Module) -> list[tuple[str, tuple[int, int, int, int]]]:
    """``(fqn, (n_q, n_kv, head_dim, hidden))`` of every attention block with a head rule, in order."""
    out = []
    for name, m in model.named_modules():
        rule = find_surgery(type(m))
        if isinstance(rule, HFAttentionSurgery) and rule.spaces(m):
            out.append((name, rule.dims(m)))
    return out


def ffn_widths(model: nn.Module) -> list[int]:
    """The FFN width of every block (output width of the layers :data:`FFN_LAYERS` names), in order."""
    for pattern in FFN_LAYERS:
        found = [_width(m) for n, m in model.named_modules() if fnmatch.fnmatchcase(n, pattern)]
        if found:
            return found
    return []


def _set_uniform(config: Any, field: str, values: list[int], widths: dict[str, list[int]]) -> None:
    """Set ``field`` to the layers' common value; differing values are kept per layer in ``widths`` and the
    field keeps its former value (the model is then rebuilt from the former config plus the structure)."""
    if not values:
        return
    if len(set(values)) > 1:
        widths[field] = values
    else:
        setattr(config, field, values[0])


def _constructible(model: nn.Module) -> bool:
    try:
        hf._fresh(model)
    except (ValueError, ZeroDivisionError):  # e.g. BERT: hidden_size not a multiple of the head count
        return False
    return True


def from_pretrained_compatible(model: nn.Module) -> tuple[bool, str]:
    """Whether ``type(model).from_pretrained`` of a ``save_pretrained`` folder rebuilds these shapes."""
    if not _constructible(model):
        return False, f"{type(model.config).__name__} cannot be built with these widths; reload with slimtorch.load"
    fresh = hf._fresh(model)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    bad = [k for k in want if k in got and got[k] != want[k]]
    if bad:
        return False, (f"{type(model.config).__name__} cannot state these widths ({bad[0]}: {want[bad[0]]} "
                       f"here, {got[bad[0]]} from the config); reload with slimtorch.load")
    changed = hf.hf_structure(model)
    if changed:
        name = next(iter(changed))
        return False, f"{name} differs from a fresh build ({changed[name]}); reload with slimtorch.load"
    return True, ""


def sort_query_heads(m: nn.Module, config: Any) -> None:
    """Sort each key-value group's query heads by ``config.importance`` (most important first), so that the
    GQA slot units (``query_heads``) hold every group's s-th best head; the block's function is unchanged.

    Slot scores are sums over the groups of sorted scores, so they decrease with the slot and pruning the
    lowest slots removes each group's own least important heads. Gradient criteria are not sorted here
    (their gradients are taken after this step); their slots are the heads' original positions.
    """
    rule = find_surgery(type(m))
    nq, nkv, _, _ = rule.dims(m)
    # each slice views the head's rows first, head_dim consecutive rows per head: (n_q, -1) per head
    units = [CoupledTensor(ws.view(ws.param.detach().double()).reshape(nq, -1), ws.role)
             for ws in rule.query_head_units(m)]
    scores = IMPORTANCE.get(config.importance)(units, reduce=config.group_reduce, seed=config.seed)
    r = nq // nkv
    by_group = torch.as_tensor(scores, dtype=torch.float64).reshape(nkv, r)
    order = (torch.argsort(-by_group, dim=1, stable=True) + torch.arange(nkv)[:, None] * r).reshape(-1)
    if not torch.equal(order, torch.arange(nq)):
        rule.permute_query_heads(m, order)


class HFAdapter(ModelAdapter):
    """Adapter of Hugging Face ``PreTrainedModel``s (see the module docstring)."""

    def example_inputs(self, model: nn.Module) -> Any:
        config = model.config
        if getattr(model, "main_input_name", "input_ids") == "pixel_values":
            size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
            return torch.zeros(1, getattr(config, "num_channels", 3), size, size)
        return torch.zeros(1, 8, dtype=torch.long)

    def select(self, model: nn.Module, graph: DependencyGraph, config: Any) -> DependencyGraph:
        graph = super().select(model, graph, config)
        slots = {k[1] for g in graph.groups for k in g.members if k[0] == "module" and k[2] == "query_heads"}
        removes = config.ratio > 0 or config.target_macs is not None or config.target_speedup is not None
        if slots and removes and config.importance.lower() not in NEEDS_GRADIENTS:
            for name in slots:
                sort_query_heads(model.get_submodule(name), config)
        return graph

    def keep_reason(self, model: nn.Module, graph: DependencyGraph, group: ChannelGroup, config: Any) -> str | None:
        why = super().keep_reason(model, graph, group, config)
        if why is not None or getattr(config, "hidden", None):
            return why
        prefix = _embedding_prefix(model)
        if prefix is not None and any(k[1] == prefix or k[1].startswith(prefix + ".") for k in group.members):
            return ("hidden size kept (the residual stream of every block; pass hidden=True to prune it, "
                    "then only slimtorch.load reloads BERT/GPT-2/ViT-style models)")
        return None

    def finish(self, model: nn.Module) -> dict[str, Any]:
        config = model.config
        old_hidden = getattr(config, "hidden_size", None)
        widths: dict[str, list[int]] = {}
        attn = [dims for _, dims in attention_dims(model)]
        if attn:
            before = {f: getattr(config, f, None) for f in ("num_attention_heads", "num_key_value_heads")}
            _set_uniform(config, "num_attention_heads", [a[0] for a in attn], widths)
            if hasattr(config, "num_key_value_heads"):
                _set_uniform(config, "num_key_value_heads", [a[1] for a in attn], widths)
            if not _constructible(model):  # e.g. BERT with 3 heads of 8 in a hidden size of 32
                for f, v in before.items():
                    if v is not None:
                        widths[f] = [a[0] if f == "num_attention_heads" else a[1] for a in attn]
                        setattr(config, f, v)
            config.head_dim = attn[0][2]
        ffn = ffn_widths(model)
        field = "n_inner" if hasattr(config, "n_inner") else "intermediate_size"
        _set_uniform(config, field, ffn, widths)
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        w = getattr(emb, "embedding_dim", None) or getattr(getattr(emb, "projection", None), "out_channels", None)
        if w and w != old_hidden:
            config.hidden_size = int(w)
            for m in model.modules():  # GPT-2 keeps the model width as embed_dim
                if getattr(m, "embed_dim", None) == old_hidden and not isinstance(m, nn.MultiheadAttention):
                    m.embed_dim = int(w)
        if widths:
            setattr(config, hf.WIDTHS_KEY, widths)
        elif hasattr(config, hf.WIDTHS_KEY):
            delattr(config, hf.WIDTHS_KEY)
        hf.record_structure(model)
        ok, why = from_pretrained_compatible(model)
        return {
            "num_attention_heads": [a[0] for a in attn],
            "num_key_value_heads": [a[1] for a in attn],
            "ffn_widths": ffn,
            "hidden_size": int(w) if w else None,
            "from_pretrained": ok,
            "from_pretrained_note": why,
        }


register_adapter(hf.is_hf_model)(HFAdapter)
