"""Multiply-accumulate (MAC) counts, per layer, measured with forward hooks on one example batch.

A rule per layer type gives the dense MACs of one call from its inputs and output (zeros in the
weights are still counted: sparse kernels are a runtime matter). Counted:

* ``Conv1d/2d/3d``: ``out.numel() * (C_in / groups) * prod(kernel)`` (depthwise: ``groups = C_in``).
* ``ConvTranspose1d/2d/3d``: ``in.numel() * (C_out / groups) * prod(kernel)``.
* ``Linear``: ``out.numel() * in_features`` (any leading dims, e.g. ``(B, T, D)``).
* ``nn.MultiheadAttention``: the q/k/v and output projections plus the two matmuls
  ``Q K^T`` and ``A V``: ``B*h*Lq*Lk*d`` each (its projection sub-layers are not called as modules).
* layers declaring ``slimtorch_kind = "qkv_attention"`` (separate q/k/v/proj ``Linear`` children,
  e.g. slimtorch's :class:`~slimtorch.models.attention.SelfAttention`): only the matmuls
  ``2 * B * h * T * T * d``; its q/k/v/proj ``Linear`` children are counted by their own rule.
  Causal attention is counted dense (as if every query saw every key), as in most counters.

Not counted (0): biases (additions), activations, pooling, embeddings (table look-ups) and, by
default, normalisation layers. BatchNorm folds into the preceding convolution at deployment and
LayerNorm is element-wise, so neither is a multiply-accumulate of a matrix product; this matches the
figures Torch-Pruning / DepGraph publish (ResNet-56: 125.49M MACs = convolutions + fc only). Pass
``include_norm=True`` to count one MAC per output element of BatchNorm/LayerNorm/GroupNorm
(``y = x * a + b`` after folding the statistics), as ptflops does.

New layer types get a rule with :func:`register_mac_rule`; layers this package cannot import (the zoo sits
below ``metrics``) declare a kind (``slimtorch_kind``) that :func:`register_mac_rule_kind` gives a rule.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from slimtorch.core.batches import example_call
from slimtorch.core.registry import LayerRuleRegistry
from slimtorch.metrics._batches import Inputs, eval_mode

#: ``rule(module, args, kwargs, output) -> MACs of one call``.
MacRule = Callable[[nn.Module, tuple[Any, ...], dict[str, Any], Any], int]

#: Layer type -> MAC rule; looked up along the type's MRO so subclasses (e.g. fake-quant wrappers
#: deriving from ``nn.Linear``) inherit their base's rule.
MAC_RULES: LayerRuleRegistry[MacRule] = LayerRuleRegistry("MAC rule")

#: Normalisation layers: counted only with ``include_norm=True``.
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def register_mac_rule(*types: type[nn.Module]) -> Callable[[MacRule], MacRule]:
    """Decorator registering a MAC rule for one or more layer types (replaces an existing one)."""

    def deco(fn: MacRule) -> MacRule:
        for t in types:
            MAC_RULES.register(t, fn, overwrite=True)
        return fn

    return deco


def register_mac_rule_kind(kind: str) -> Callable[[MacRule], MacRule]:
    """Decorator registering a MAC rule for layers declaring ``slimtorch_kind = kind``."""

    def deco(fn: MacRule) -> MacRule:
        MAC_RULES.register_kind(kind, fn, overwrite=True)
        return fn

    return deco


def find_rule(module: nn.Module) -> MacRule | None:
    """The rule of the nearest registered type (or declared kind) in ``type(module).__mro__``, or ``None``.

    Layers of transformers (never imported here) are recognised by class name: ``Conv1D`` (GPT-2's linear
    layer, weight ``(in, out)``) and ``*RMSNorm``.
    """
    rule = MAC_RULES.find(type(module))
    if rule is None and type(module).__module__.startswith("transformers."):
        name = type(module).__name__
        rule = _conv1d if name == "Conv1D" else (_norm if name.endswith("RMSNorm") else None)
    return rule


def _conv1d(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: torch.Tensor) -> int:
    return linear_macs(out.numel(), m.nx)


# ---- pure formulas -------------------------------------------------------------------------------


def conv_macs(out_numel: int, in_channels: int, groups: int, kernel_size: tuple[int, ...]) -> int:
    """``out.numel() * (C_in / groups) * prod(kernel)``: each output element is one dot product."""
    return out_numel * (in_channels // groups) * math.prod(kernel_size)


def linear_macs(out_numel: int, in_features: int) -> int:
    """``out.numel() * in_features``: each output element is one dot product of length ``in_features``."""
    return out_numel * in_features


def attention_matmul_macs(batch: int, heads: int, q_len: int, k_len: int, qk_dim: int, v_dim: int) -> int:
    """MACs of ``Q K^T`` (``B*h*Lq*Lk*d_qk``) plus ``A V`` (``B*h*Lq*Lk*d_v``), per-head dims."""
    return batch * heads * q_len * k_len * (qk_dim + v_dim)


# ---- rules ---------------------------------------------------------------------------------------


@register_mac_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: torch.Tensor) -> int:
    return conv_macs(out.numel(), m.in_channels, m.groups, tuple(m.kernel_size))


@register_mac_rule(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _conv_transpose(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: torch.Tensor) -> int:
    # every input element (b, c_in, pos) is scattered into C_out/groups * prod(kernel) outputs
    return args[0].numel() * (m.out_channels // m.groups) * math.prod(m.kernel_size)


@register_mac_rule(nn.Linear)
def _linear(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: torch.Tensor) -> int:
    return linear_macs(out.numel(), m.in_features)


@register_mac_rule(nn.Embedding, nn.EmbeddingBag)
def _lookup(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    return 0


@register_mac_rule(*NORM_TYPES)
def _norm(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: torch.Tensor) -> int:
    return out.numel()  # y = x * a + b per element once the statistics are folded


@register_mac_rule(nn.MultiheadAttention)
def _mha(m: nn.MultiheadAttention, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    names = ("query", "key", "value")
    q, k, v = (args[i] if i < len(args) else kwargs[n] for i, n in enumerate(names))
    if q.dim() == 2:  # unbatched (L, E)
        batch, lq, lk = 1, q.shape[0], k.shape[0]
    elif m.batch_first:  # (B, L, E)
        batch, lq, lk = q.shape[0], q.shape[1], k.shape[1]
    else:  # (L, B, E)
        batch, lq, lk = q.shape[1], q.shape[0], k.shape[0]
    e, h = m.embed_dim, m.num_heads
    proj = batch * (lq * e * e + lk * m.kdim * e + lk * m.vdim * e + lq * e * e)  # q, k, v, out
    return proj + attention_matmul_macs(batch, h, lq, lk, e // h, e // h)


@register_mac_rule_kind("qkv_attention")
def _self_attention(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    x = args[0] if args else kwargs["x"]  # (B, T, dim)
    batch, t = x.shape[0], x.shape[1]
    h = m.num_heads
    return attention_matmul_macs(batch, h, t, t, m.q.out_features // h, m.v.out_features // h)


# ---- counting ------------------------------------------------------------------------------------


def _is_leaf(m: nn.Module) -> bool:
    """No submodules other than its own parametrizations (a custom layer doing its own math)."""
    return all(name == "parametrizations" for name, _ in m.named_children())


def count_macs(model: nn.Module, example_inputs: Inputs, per_layer: bool = False,
               include_norm: bool = False) -> int | tuple[int, dict[str, int]]:
    """Dense MACs of one forward pass on ``example_inputs`` (the batch size counts).

    Runs the model once in eval mode under ``no_grad`` (BatchNorm statistics are not touched) with a
    forward hook on every layer that has a rule. A layer called several times is summed.

    Args:
        model: any module.
        example_inputs: a tensor, a tuple of positional tensors (e.g. ``torch.zeros(1, 3, 32, 32)``) or a
            dict of named tensors (``{"input_ids": ids, "attention_mask": mask}``).
        per_layer: also return ``{fqn: MACs}`` of every counted layer that ran.
        include_norm: count BatchNorm/LayerNorm/GroupNorm as one MAC per output element.

    Returns:
        The total, or ``(total, {fqn: macs})`` when ``per_layer``.

    Warns:
        UserWarning: naming leaf layers that own parameters, ran, and have no rule (counted as 0).
    """
    call = example_call(example_inputs)
    counts: dict[str, int] = defaultdict(int)
    uncounted: set[str] = set()
    handles = []

    def counting_hook(fqn: str, rule: MacRule) -> Callable[..., None]:
        def hook(m: nn.Module, a: tuple[Any, ...], kw: dict[str, Any], out: Any) -> None:
            counts[fqn] += int(rule(m, a, kw, out))

        return hook

    def missing_hook(m: nn.Module, a: tuple[Any, ...], out: Any) -> None:
        uncounted.add(type(m).__name__)

    for fqn, m in model.named_modules():
        if ".parametrizations" in f".{fqn}":  # originals and masks of parametrized weights
            continue
        rule = find_rule(m)
        if (isinstance(m, NORM_TYPES) or rule is _norm) and not include_norm:
            continue
        if rule is not None:
            handles.append(m.register_forward_hook(counting_hook(fqn, rule), with_kwargs=True))
        elif _is_leaf(m) and any(True for _ in m.parameters(recurse=False)):
            handles.append(m.register_forward_hook(missing_hook))
    try:
        with eval_mode(model), torch.no_grad():
            call(model)
    finally:
        for h in handles:
            h.remove()
    if uncounted:
        warnings.warn(
            f"count_macs: no MAC rule for {sorted(uncounted)}; their own MACs are counted as 0. Register "
            "one with slimtorch.metrics.register_mac_rule", stacklevel=2,
        )
    total = sum(counts.values())
    return (total, dict(counts)) if per_layer else total
