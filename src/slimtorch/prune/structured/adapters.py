"""Model-family adapters of channel pruning: what to prune in a family, and what to update afterwards.

The dependency graph finds every removable group of any model. A family of models may need more than
that: Hugging Face models keep their hidden size by default (their configs derive the head size from
it), carry a config that must follow the new widths, and have a natural example input. An adapter says
so in three steps around :func:`~slimtorch.prune.structured.channel.prune_channels_`:

* ``example_inputs(model)``: the tracing input when the caller gives none (None: the default rule);
* ``select(model, graph, config)``: the groups to prune (others keep their channels, with a note why);
* ``finish(model)``: after the cut, update what the family keeps outside the layers (a config) and
  return what the report should say (``report.extra["model"]``).

Adapters are found through :data:`ADAPTERS` (first predicate that accepts the model wins; the base
adapter otherwise). Register one with ``@register_adapter(predicate)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from slimtorch.prune.structured.graph import ChannelGroup, DependencyGraph

#: Index spaces of attention blocks whose units are heads (see :mod:`.hf_rules`).
HEAD_SPACES = ("heads", "query_heads")


def head_space(group: ChannelGroup) -> str | None:
    """``"heads"`` / ``"query_heads"`` if the group's units are attention heads, else None."""
    for kind, _, space in group.members:
        if kind == "module" and space in HEAD_SPACES:
            return space
    return None


class ModelAdapter:
    """The base adapter (any ``nn.Module``): every group may be pruned, except as the config says.

    ``Channel(heads=False)`` keeps every head. ``Channel(gqa=...)`` picks, in attention blocks with
    grouped key-value heads, whether whole key-value groups (``"kv"``) or query heads within the groups
    (``"query"``) are removed.
    """

    def example_inputs(self, model: nn.Module) -> Any:
        return None

    def select(self, model: nn.Module, graph: DependencyGraph, config: Any) -> DependencyGraph:
        keep: list[ChannelGroup] = []
        for g in graph.groups:
            why = self.keep_reason(model, graph, g, config)
            if why is None:
                keep.append(g)
            elif why not in graph.notes:
                graph.notes.append(why)
        graph.groups = keep
        return graph

    def keep_reason(self, model: nn.Module, graph: DependencyGraph, group: ChannelGroup, config: Any) -> str | None:
        """Why ``group`` is not pruned under ``config``, or None to prune it."""
        space = head_space(group)
        if space is None:
            return None
        if not getattr(config, "heads", True):
            return "attention heads kept (heads=False)"
        gqa = getattr(config, "gqa", "query")
        owner = next(k[1] for k in group.members if k[0] == "module" and k[2] == space)
        grouped = ("module", owner, "query_heads") in graph.space_sizes
        if space == "query_heads" and gqa == "kv":
            return "GQA: whole key-value groups pruned (gqa='kv'); query heads within groups kept"
        if space == "heads" and grouped and gqa == "query":
            return "GQA: query heads pruned within their key-value groups (gqa='query'); key-value heads kept"
        return None

    def finish(self, model: nn.Module) -> dict[str, Any]:
        return {}


ADAPTERS: list[tuple[Callable[[nn.Module], bool], ModelAdapter]] = []
_BASE = ModelAdapter()


def register_adapter(predicate: Callable[[nn.Module], bool]) -> Callable[[Any], Any]:
    """Register an adapter (class or instance) for the models ``predicate`` accepts; newest first."""

    def deco(adapter: Any) -> Any:
        ADAPTERS.insert(0, (predicate, adapter() if isinstance(adapter, type) else adapter))
        return adapter

    return deco


def adapter_for(model: nn.Module) -> ModelAdapter:
    """The adapter of ``model``'s family (the base adapter if none claims it)."""
    for predicate, adapter in ADAPTERS:
        if predicate(model):
            return adapter
    return _BASE
