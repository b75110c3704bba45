"""Structured pruning: physically remove channels, heads and groups through a dependency graph.

>>> from slimtorch.prune import prune_, Channel
>>> report = prune_(model, Channel(ratio=0.5, importance="l1"), example_inputs=torch.zeros(1, 3, 32, 32))

See docs/structured_pruning.md.
"""

from slimtorch.prune.structured import hf_model as _hf_model  # noqa: F401  (registers the HF adapter)
from slimtorch.prune.structured.adapters import ADAPTERS, ModelAdapter, adapter_for, register_adapter
from slimtorch.prune.structured.channel import (
    Channel,
    allocate,
    apply_removal,
    collect_gradients,
    coupled_tensors,
    prune_channels_,
    score_groups,
)
from slimtorch.prune.structured.graph import ChannelGroup, DependencyGraph, build_dependency_graph
from slimtorch.prune.structured.group_taylor import group_taylor_scores
from slimtorch.prune.structured.importance import (
    IMPORTANCE,
    NEEDS_GRADIENTS,
    CoupledTensor,
    fpgm_scores,
    group_reduce,
    l1_scores,
    l2_scores,
    lamp_scores,
    register_importance,
    taylor_scores,
)
from slimtorch.prune.structured.surgery import (
    LayerSurgery,
    PinnedSurgery,
    WeightSlice,
    find_surgery,
    register_rule_provider,
    register_surgery,
    register_surgery_kind,
    registered_types,
    slice_tensor_,
)

__all__ = [
    "ADAPTERS",
    "ModelAdapter",
    "adapter_for",
    "register_adapter",
    "register_rule_provider",
    "IMPORTANCE",
    "NEEDS_GRADIENTS",
    "group_taylor_scores",
    "Channel",
    "ChannelGroup",
    "CoupledTensor",
    "DependencyGraph",
    "LayerSurgery",
    "PinnedSurgery",
    "WeightSlice",
    "allocate",
    "apply_removal",
    "build_dependency_graph",
    "collect_gradients",
    "coupled_tensors",
    "find_surgery",
    "fpgm_scores",
    "group_reduce",
    "l1_scores",
    "l2_scores",
    "lamp_scores",
    "prune_channels_",
    "register_importance",
    "register_surgery",
    "register_surgery_kind",
    "registered_types",
    "score_groups",
    "slice_tensor_",
    "taylor_scores",
]
