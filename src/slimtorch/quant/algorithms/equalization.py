"""Cross-layer equalization and bias correction (data-free quantization).

Nagel, van Baalen, Blankevoort, Welling, "Data-Free Quantization Through Weight Equalization and Bias
Correction", ICCV 2019 (arXiv 1906.04721).

**Cross-layer equalization (CLE, section 4.1).** For two layers ``y = f(W1 x + b1)``, ``z = W2 y + b2``
with a positively homogeneous ``f`` (ReLU: ``f(x / s) = f(x) / s`` for ``s > 0``), scaling output
channel ``i`` of layer 1 by ``1/s_i`` and input channel ``i`` of layer 2 by ``s_i`` leaves the function
unchanged. With ``r1_i`` the range (max |.|) of output channel ``i`` of ``W1`` and ``r2_i`` that of
input channel ``i`` of ``W2``, the choice

    s_i = sqrt(r1_i * r2_i) / r2_i          (so that r1_i / s_i = r2_i * s_i = sqrt(r1_i r2_i))

makes both channel ranges equal, which maximises the per-tensor quantization precision of both layers
(eq. 10-11). Chains ``A -> B -> C`` are equalized pair by pair, repeatedly, until the scales converge.
A BatchNorm between layer 1 and the ReLU is handled without folding: the output of channel ``i`` is
scaled by dividing the BN's ``gamma_i`` and ``beta_i`` by ``s_i``, and ``r1_i`` is the range of the
*effective* weight ``W1[i] * gamma_i / sigma_i``.

**Bias correction (section 4.2, empirical form).** Quantizing ``W`` to ``W~ = W + eps`` shifts the
expected output by ``eps E[x]``; subtracting it from the bias, ``b <- b - eps E[x]``, removes the bias
of the quantization error. For a convolution ``E[x]`` is the per-channel input mean and ``eps`` is summed
over the kernel window (border padding is ignored).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from slimtorch.core.blockwise import run_inputs
from slimtorch.core.config import Config, check_positive
from slimtorch.quant.api import QuantReport, register_quantizer

_LAYERS = (nn.Conv2d, nn.Linear)
_BNS = (nn.BatchNorm2d, nn.BatchNorm1d)


def cle_scales(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """``s = sqrt(r1 r2) / r2`` per channel; 1 where either range is 0 (a dead channel stays as it is)."""
    s = torch.sqrt(r1 * r2) / r2
    return torch.where((r1 > 0) & (r2 > 0), s, torch.ones_like(s))


def input_channel_view(w: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """``w`` (out, in/groups, *k) rearranged to (in_channels, out/groups * prod(k)): row c = every weight
    reading input channel ``c``. Returns a copy; see :func:`scale_input_channels` to write back."""
    out, cin_g = w.shape[:2]
    k = w[0, 0].numel()
    v = w.reshape(groups, out // groups, cin_g, k)  # (G, out_g, cin_g, k)
    return v.permute(0, 2, 1, 3).reshape(groups * cin_g, -1)  # (C_in, out_g * k)


def scale_input_channels(w: torch.Tensor, s: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """``w`` with every weight reading input channel ``c`` multiplied by ``s[c]``."""
    out, cin_g = w.shape[:2]
    per_channel = s.view(groups, 1, cin_g).expand(groups, out // groups, cin_g).reshape(out, cin_g)
    return w * per_channel.view(out, cin_g, *([1] * (w.dim() - 2)))


def output_ranges(layer: nn.Module, bn: nn.Module | None) -> torch.Tensor:
    """max |W1[i]| per output channel of the effective weight (BN scaling included)."""
    r = layer.weight.detach().reshape(layer.weight.shape[0], -1).abs().amax(1)
    if bn is not None:
        r = r * (bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)).abs()
    return r


@torch.no_grad()
def equalize_pair_(layer1: nn.Module, bn: nn.Module | None, layer2: nn.Module) -> torch.Tensor:
    """Equalize one pair in place (see the module docstring) and return the scales ``s`` (C,)."""
    groups2 = getattr(layer2, "groups", 1)
    r1 = output_ranges(layer1, bn)  # (C,)
    r2 = input_channel_view(layer2.weight.detach(), groups2).abs().amax(1)  # (C,)
    s = cle_scales(r1, r2)
    if bn is not None:
        bn.weight.div_(s)
        bn.bias.div_(s)
    else:
        layer1.weight.div_(s.view(-1, *([1] * (layer1.weight.dim() - 1))))
        if layer1.bias is not None:
            layer1.bias.div_(s)
    layer2.weight.copy_(scale_input_channels(layer2.weight, s, groups2))
    return s


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), nn.ReLU)
    return node.op in ("call_function", "call_method") and node.target in (F.relu, torch.relu, "relu")


def find_equalization_pairs(model: nn.Module) -> list[tuple[str, str | None, str]]:
    """``(layer1, bn_or_None, layer2)`` chains ``Conv/Linear -> [BatchNorm] -> ReLU -> Conv/Linear``.

    Found by symbolic tracing (``torch.fx``); every intermediate value must have exactly one user, so
    residual branches (whose other consumer would see the rescaled channels) are never equalized.
    Returns ``[]`` for a model that cannot be traced.
    """
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception:  # untraceable control flow: the user passes pairs explicitly
        return []
    modules = dict(model.named_modules())

    def module_of(node: fx.Node, types: tuple[type, ...]) -> str | None:
        if node.op == "call_module" and isinstance(modules.get(str(node.target)), types):
            return str(node.target)
        return None

    pairs = []
    for node in graph.nodes:
        first = module_of(node, _LAYERS)
        if first is None or len(node.users) != 1:
            continue
        cur = next(iter(node.users))
        bn = module_of(cur, _BNS)
        if bn is not None:
            if len(cur.users) != 1:
                continue
            cur = next(iter(cur.users))
        if not _is_relu(cur, modules) or len(cur.users) != 1:
            continue
        second = module_of(next(iter(cur.users)), _LAYERS)
        if second is not None:
            pairs.append((first, bn, second))
    return pairs


@dataclass
class CrossLayerEqualization(Config):
    """Cross-layer equalization (Nagel et al. 2019) as a float-preserving pre-quantization transform.

    Args:
        pairs: explicit ``(layer1, layer2)`` or ``(layer1, bn, layer2)`` module names; empty = find
            ``Conv/Linear -> [BN] -> ReLU -> Conv/Linear`` chains automatically.
        iterations: maximum sweeps over all pairs.
        tol: stop when every scale of a sweep is within ``tol`` of 1.
    """

    pairs: tuple[tuple[str, ...], ...] = ()
    iterations: int = 20
    tol: float = 1e-4

    def __post_init__(self) -> None:
        check_positive("iterations", self.iterations)
        check_positive("tol", self.tol)
        self.pairs = tuple(tuple(p) for p in self.pairs)
        for p in self.pairs:
            if len(p) not in (2, 3):
                raise ValueError(f"each pair must be (layer1, layer2) or (layer1, bn, layer2), got {p!r}")


def _resolve(model: nn.Module, config: CrossLayerEqualization) -> list[tuple[str, str | None, str]]:
    if not config.pairs:
        return find_equalization_pairs(model)
    out = []
    for p in config.pairs:
        a, bn, b = (p[0], None, p[1]) if len(p) == 2 else p
        for name in (a, b):
            if not isinstance(model.get_submodule(name), _LAYERS):
                raise ValueError(f"equalization pair {p!r}: {name!r} is not a Conv2d or Linear")
        out.append((a, bn, b))
    return out


@register_quantizer(CrossLayerEqualization)
def equalize_(
    model: nn.Module, config: CrossLayerEqualization | None = None, calib_data: Iterable[Any] | None = None
) -> QuantReport:
    """Equalize weight ranges across ``Conv/Linear -> [BN] -> ReLU -> Conv/Linear`` pairs in place.

    The float function is unchanged. The report lists the pairs and, per pair, the worst ratio between
    the two channel ranges before and after (1.0 = equalized).
    """
    config = config or CrossLayerEqualization()
    pairs = _resolve(model, config)
    mods = dict(model.named_modules())

    def imbalance(a: str, bn: str | None, b: str) -> float:
        r1 = output_ranges(mods[a], mods[bn] if bn else None)
        r2 = input_channel_view(mods[b].weight.detach(), getattr(mods[b], "groups", 1)).abs().amax(1)
        ok = (r1 > 0) & (r2 > 0)
        ratio = torch.maximum(r1[ok] / r2[ok], r2[ok] / r1[ok])
        return ratio.max().item() if ratio.numel() else 1.0

    before = {f"{a}->{b}": imbalance(a, bn, b) for a, bn, b in pairs}
    sweeps = 0
    for sweeps in range(1, config.iterations + 1):  # noqa: B007 (reported below)
        worst = 0.0
        for a, bn, b in pairs:
            s = equalize_pair_(mods[a], mods[bn] if bn else None, mods[b])
            worst = max(worst, (s - 1).abs().max().item())
        if worst < config.tol:
            break
    after = {f"{a}->{b}": imbalance(a, bn, b) for a, bn, b in pairs}
    return QuantReport(
        scheme="cle",
        details={
            "pairs": [list(p) for p in pairs],
            "sweeps": sweeps,
            "range_ratio_before": before,
            "range_ratio_after": after,
        },
    )


def bias_correction_delta(
    w_float: torch.Tensor, w_quant: torch.Tensor, mean_input: torch.Tensor
) -> torch.Tensor:
    """Expected output shift ``eps E[x]`` (out,) of quantizing ``w_float`` to ``w_quant``.

    Args:
        w_float / w_quant: (out, in) Linear or (out, in/groups, kh, kw) Conv weights.
        mean_input: (in,) mean input per feature / channel.
    """
    eps = (w_quant - w_float).to(torch.float64)
    if eps.dim() == 2:
        return (eps @ mean_input.to(torch.float64)).to(w_float.dtype)
    out, cin_g = eps.shape[:2]
    groups = mean_input.numel() // cin_g
    e = eps.reshape(out, cin_g, -1).sum(2)  # (out, cin_g): the error summed over the kernel window
    m = (
        mean_input.to(torch.float64)
        .view(groups, 1, cin_g)
        .expand(groups, out // groups, cin_g)
        .reshape(out, cin_g)
    )
    return (e * m).sum(1).to(w_float.dtype)


@torch.no_grad()
def mean_layer_inputs(
    model: nn.Module, layers: dict[str, nn.Module], batches: list[tuple[torch.Tensor, ...]]
) -> dict[str, torch.Tensor]:
    """Mean input per feature (Linear) or per channel (Conv) of each layer over the calibration batches."""
    sums: dict[str, list[Any]] = {n: [0.0, 0] for n in layers}

    def make_hook(name: str):
        def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach().to(torch.float64)
            flat = (
                x.movedim(1, -1).reshape(-1, x.shape[1])
                if isinstance(_m, nn.Conv2d)
                else x.reshape(-1, x.shape[-1])
            )
            sums[name][0] = sums[name][0] + flat.sum(0)
            sums[name][1] += flat.shape[0]

        return hook

    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in layers.items()]
    try:
        for args in batches:
            run_inputs(model, args)
    finally:
        for h in handles:
            h.remove()
    return {n: (s / c).to(torch.float32) for n, (s, c) in sums.items() if c}
