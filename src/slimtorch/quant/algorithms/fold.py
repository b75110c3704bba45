"""BatchNorm folding: merge an eval-mode BatchNorm into the convolution (or Linear) before it.

With ``y = gamma * (conv(x) - mu) / sqrt(var + eps) + beta`` and ``a = gamma / sqrt(var + eps)`` per
output channel (Jacob et al. 2018, §3.2; Krishnamoorthi 2018, §2.4)::

    W' = a * W          b' = a * (b - mu) + beta

so ``conv'(x) == bn(conv(x))`` in eval mode and the BatchNorm becomes ``nn.Identity``. Quantizing the
folded weight is what an integer runtime executes.
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from slimtorch.core.selection import set_submodule

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def fold_bn_weights(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Folded ``(W', b')`` of a layer with ``weight`` (out, ...) and ``bias`` (out,) followed by ``bn``."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    a = torch.rsqrt(bn.running_var.double() + bn.eps)  # (out,)
    if bn.weight is not None:
        a = a * bn.weight.double()
    b = bias.double() if bias is not None else torch.zeros_like(a)
    b = a * (b - bn.running_mean.double())
    if bn.bias is not None:
        b = b + bn.bias.double()
    w = weight.double() * a.view(-1, *([1] * (weight.dim() - 1)))
    return w.to(weight.dtype), b.to(weight.dtype)


def fold_bn_into_(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold ``bn`` into ``layer`` in place (``layer`` gains a bias if it had none)."""
    if layer.weight.shape[0] != bn.num_features:
        raise ValueError(f"cannot fold: {type(layer).__name__} has {layer.weight.shape[0]} output channels "
                         f"but the BatchNorm has {bn.num_features}")
    w, b = fold_bn_weights(layer.weight.detach(), None if layer.bias is None else layer.bias.detach(), bn)
    with torch.no_grad():
        layer.weight.copy_(w)
        if layer.bias is None:
            layer.bias = nn.Parameter(b)
        else:
            layer.bias.copy_(b)


def find_conv_bn_pairs(model: nn.Module, graph: fx.Graph | None = None) -> list[tuple[str, str]]:
    """``(layer_fqn, bn_fqn)`` pairs where a BatchNorm reads only the output of a Conv/Linear.

    Uses the traced dataflow ``graph`` (from ``torch.fx.symbolic_trace``) when given; otherwise
    falls back to adjacency inside ``nn.Sequential`` containers.
    """
    mods = dict(model.named_modules())
    pairs: list[tuple[str, str]] = []
    if graph is not None:
        for node in graph.nodes:
            if node.op != "call_module" or not isinstance(mods.get(node.target), _BN):
                continue
            src = node.args[0] if node.args else None
            if (isinstance(src, fx.Node) and src.op == "call_module"
                    and isinstance(mods.get(src.target), _FOLDABLE)
                    and len(src.users) == 1):
                pairs.append((str(src.target), str(node.target)))
        return pairs
    for name, m in model.named_modules():
        if isinstance(m, nn.Sequential):
            children = list(m.named_children())
            for (n1, a), (n2, b) in zip(children, children[1:]):
                if isinstance(a, _FOLDABLE) and isinstance(b, _BN):
                    prefix = f"{name}." if name else ""
                    pairs.append((prefix + n1, prefix + n2))
    return pairs


def fold_bn_(model: nn.Module, pairs: list[tuple[str, str]] | None = None,
             graph: fx.Graph | None = None) -> list[tuple[str, str]]:
    """Fold every BatchNorm that follows a Conv/Linear into it; the BatchNorms become ``nn.Identity``.

    Args:
        model: the model (folding uses running statistics, i.e. eval-mode BatchNorm).
        pairs: ``(layer_fqn, bn_fqn)`` to fold; found with :func:`find_conv_bn_pairs` if None.
        graph: traced graph used to find the pairs.

    Returns:
        The pairs folded.
    """
    if pairs is None:
        pairs = find_conv_bn_pairs(model, graph)
    for layer_name, bn_name in pairs:
        fold_bn_into_(model.get_submodule(layer_name), model.get_submodule(bn_name))
        set_submodule(model, bn_name, nn.Identity())
    return pairs
