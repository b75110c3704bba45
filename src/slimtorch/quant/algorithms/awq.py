"""AWQ: activation-aware weight quantization (Lin, Tang, Tang, Yang, Chen, Wang, Xiao, Dang, Gan, Han,
"AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration", MLSys 2024,
arXiv 2306.00978).

A few input channels with large activations matter most to a layer's output. AWQ protects them by a
per-input-channel scale ``s`` applied before rounding, ``Q(W diag(s)) diag(s)^-1 X``: the scaled channels
get relatively finer steps. For the layers that read one input ``X`` (n tokens, in) (q/k/v of attention,
gate/up of a SwiGLU MLP; one "group" concatenating their weights ``W``):

    s(alpha) = mean_tokens |X|^alpha, normalised by sqrt(max(s) min(s))
    alpha*   = argmin_{alpha in {0, 1/grid, ..., (grid-1)/grid}} || Q(W diag(s)) (diag(s)^-1 X^T) - W X^T ||^2

(the paper's eq. 4-5 search; ``alpha = 0`` is plain RTN, so the search never does worse than RTN on the
calibration tokens). The scale is then **folded** into the op that produced ``X`` when the graph allows:
a LayerNorm/RMSNorm (``gamma /= s``, ``beta /= s``) or a Linear (its rows and bias ``/= s``), checked
numerically (the part of the model being calibrated must give the same output); otherwise (the input
is an attention output, a residual, an activation product) it is kept as an explicit input scale
(:class:`InputScaled`: ``layer(x * (1/s))``), or the group is left unscaled with
``explicit_scales=False``.

**Clipping search** (the paper's section 3.3 / reference ``auto_clip``): per (output row, group of
``group_size`` inputs) the min-max range is shrunk by a ratio ``c`` in ``[1 - max_shrink, 1]``, keeping the
``c`` with the least output error of that group, ``sum_tokens ((Q_c(w_g) - w_g) . x_g)^2``. As in the
reference, the query and key projections are not clipped (``clip_skip``): their outputs meet in ``q . k``
and the softmax, where a clipping error grows in a way their own output error does not show. The weights
are finally rounded to nearest on the chosen grid.

Measured on the benchmark's char GPT (``bench/llm_int4.py``, perplexity increase over fp32, 4-bit g32 /
4-bit g128 / 3-bit g32 / 3-bit g128): RTN +0.54 / +0.79 / +4.42 / +7.12%; clipping every layer with 256
clipping and 1,024 scale tokens +0.58 / +0.49 / +3.45 / +4.24% (worse than RTN at 4-bit g32); query/key
skipped +0.52 / +0.59 / +2.77 / +4.19%; query/key skipped with 4,096 tokens for both searches (the defaults)
+0.34 / +0.32 / +2.76 / +4.16%. Clipping symmetrically about ``max |w_g|`` (the reference's exact rule,
which with an asymmetric grid shrinks only the side that reaches it) was worse here than shrinking both ends
(+0.57 / +1.03 / +3.35 / +4.06%), so both ends shrink.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from slimtorch.core.batches import ModelInputs
from slimtorch.core.blockwise import (
    calibrate_blockwise,
    input_groups,
    observe_inputs,
    sample_matrix,
    subsample_rows,
)
from slimtorch.core.config import check_positive, check_range
from slimtorch.core.selection import set_submodule
from slimtorch.quant import primitives as P
from slimtorch.quant.algorithms.rounding import (
    Rounding,
    layer_group_size,
    register_rounding,
    replace_with_codes,
    round_to_nearest_,
)
from slimtorch.quant.groupwise import GroupCodes
from slimtorch.quant.modules.packed import flat_weight


@dataclass
class AWQ(Rounding):
    """AWQ (module docstring): ``WeightOnly(bits=4, group_size=128, method="awq")`` or ``rounding=AWQ(...)``.

    Args:
        grid: number of ``alpha`` values tried in ``[0, 1)`` (20 in the paper).
        clip: run the clipping search after scaling.
        clip_grid: clipping ratios tried from 1 down to ``1 - max_shrink``.
        max_shrink: largest range reduction tried, in [0, 1).
        samples: calibration tokens used by the scale search (evenly spaced over all tokens).
        clip_samples: tokens used by the clipping search.
        explicit_scales: keep a scale that cannot be folded as an input multiplication
            (:class:`InputScaled`); False: such groups are not scaled (clipping still applies).
        sequential: one transformer block at a time on the quantized previous blocks' outputs.
        clip_skip: layers whose last name component is one of these are not clipped (query/key
            projections, fused qkv layers; module docstring).
        objective: what the scale search minimises: ``"layer"``, the group's own output error
            ``||Q(W diag(s)) diag(s)^-1 X^T - W X^T||^2`` (the paper's eq. 4); ``"block"``, the error of the
            whole calibrated block's output with the group fake-quantized (closer to the reference code, which
            measures the attention / MLP module's output; costs one block pass per ``alpha``).
    """

    grid: int = 20
    clip: bool = True
    clip_grid: int = 20
    max_shrink: float = 0.5
    samples: int = 4096
    clip_samples: int = 4096
    explicit_scales: bool = True
    sequential: bool = True
    clip_skip: tuple[str, ...] = ("q", "k", "q_proj", "k_proj", "query", "key", "q_lin", "k_lin", "qkv", "Wqkv",
                                  "c_attn", "query_key_value")
    objective: str = "layer"

    needs_data: ClassVar[bool] = True

    def __post_init__(self) -> None:
        for name in ("grid", "clip_grid", "samples", "clip_samples"):
            check_positive(name, getattr(self, name))
        check_range("max_shrink", self.max_shrink, 0.0, 1.0, hi_open=True)
        if self.objective not in ("layer", "block"):
            raise ValueError(f"AWQ: objective must be 'layer' or 'block', got {self.objective!r}")

    def alphas(self) -> list[float]:
        """The ``alpha`` grid ``i / grid``, ``i = 0..grid-1``."""
        return [i / self.grid for i in range(self.grid)]


class InputScaled(nn.Module):
    """``layer(x * inv_scale)``: an AWQ scale that could not be folded into the preceding op.

    Args:
        layer: the (quantized) layer whose weight columns were multiplied by ``s``.
        scale: (in,) the AWQ scale ``s``; the input is multiplied by ``1 / s``.
    """

    def __init__(self, layer: nn.Module, scale: torch.Tensor) -> None:
        super().__init__()
        self.layer = layer
        self.register_buffer("inv_scale", (1.0 / scale).to(torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        return self.layer(x * self.inv_scale.to(x.dtype))


def fake_quantize_rows(w: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> torch.Tensor:
    """RTN round trip ``s (q - z)`` of ``w`` (out, in) on its per-group min-max grid."""
    return GroupCodes.round_to_nearest(w, bits, group_size, symmetric).dequantize()


def awq_scale_search(w: torch.Tensor, x: torch.Tensor, alphas: list[float], bits: int, group_size: int,
                     symmetric: bool) -> tuple[torch.Tensor, float, float, float]:
    """The best AWQ scale for weight ``w`` (out, in) reading inputs ``x`` (n, in).

    Returns:
        ``(s, alpha, loss, rtn_loss)``: the scale (in,), the chosen ``alpha``, its output MSE and the
        output MSE of plain RTN (``alpha = 0``).
    """
    w, x = w.float(), x.float()
    ref = x @ w.T  # (n, out)
    x_mean = x.abs().mean(0)  # (in,)
    best: tuple[float, float, torch.Tensor] | None = None
    rtn_loss = float("nan")
    for a in alphas:
        s = x_mean.pow(a).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        wq = fake_quantize_rows(w * s, bits, group_size, symmetric) / s
        loss = (x @ wq.T - ref).pow(2).mean().item()
        if a == 0:
            rtn_loss = loss
        if best is None or loss < best[0]:
            best = (loss, a, s)
    return best[2], best[1], best[0], rtn_loss  # type: ignore[index]


@torch.no_grad()
def awq_block_scale_search(mods: list[nn.Module], groups: list[int], x: torch.Tensor, alphas: list[float], bits: int,
                           symmetric: bool, run: Callable[..., list[torch.Tensor]]
                           ) -> tuple[torch.Tensor, float, float, float]:
    """The AWQ scale of least *block output* error: for each ``alpha`` the layers ``mods`` (reading the same
    input, samples ``x`` (n, in)) are set to ``Q(W diag(s)) diag(s)^-1`` (group sizes ``groups``), the block
    is run on the calibration inputs (``run()``) and compared with its output before; weights are restored.

    Returns:
        ``(s, alpha, loss, rtn_loss)`` as :func:`awq_scale_search`, the losses being block-output MSEs.
    """
    ref = run()
    saved = [m.weight.detach().clone() for m in mods]
    x_mean = x.float().abs().mean(0)
    best: tuple[float, float, torch.Tensor] | None = None
    rtn_loss = float("nan")
    try:
        for a in alphas:
            s = x_mean.pow(a).clamp(min=1e-4)
            s = s / (s.max() * s.min()).sqrt()
            for m, w, g in zip(mods, saved, groups):
                m.weight.copy_((fake_quantize_rows(w.float() * s, bits, g, symmetric) / s).to(w.dtype))
            loss = sum((o - r).float().pow(2).mean().item() for o, r in zip(run(), ref)) / len(ref)
            if a == 0:
                rtn_loss = loss
            if best is None or loss < best[0]:
                best = (loss, a, s)
    finally:
        for m, w in zip(mods, saved):
            m.weight.copy_(w)
    return best[2], best[1], best[0], rtn_loss  # type: ignore[index]


def awq_clip_codes(w: torch.Tensor, x: torch.Tensor, bits: int, group_size: int, symmetric: bool,
                   ratios: torch.Tensor) -> GroupCodes:
    """Codes of ``w`` (out, in) on the per-(row, group) clipped grid of least output error on ``x`` (n, in).

    For each ratio ``c`` the range ``[c lo, c hi]`` of every (row, group) is quantized; the error of a
    group is ``mean_tokens ((Q_c(w_g) - w_g) . x_g)^2``; ``c = 1`` comes first so ties keep min-max.
    """
    out_f, in_f = w.shape
    groups = in_f // group_size
    xg = x.float().reshape(-1, groups, group_size)  # (n, G, g)
    lo, hi = P.reduce_minmax(w, axis=1, group_size=group_size)  # (out, G)
    best_err = torch.full_like(lo, float("inf"))
    best_scale = best_zero = None
    rows_per_chunk = max(1, (1 << 24) // max(1, groups * xg.shape[0]))
    for c in ratios.tolist():
        scale, zero = P.choose_qparams(c * lo, c * hi, bits, symmetric=symmetric, signed=symmetric)
        dq = GroupCodes.from_params(w, scale, zero, bits, symmetric, group_size).dequantize()
        diff = (dq - w).reshape(out_f, groups, group_size)
        err = torch.cat([torch.einsum("rGg,nGg->rGn", diff[r:r + rows_per_chunk], xg).pow(2).mean(-1)
                         for r in range(0, out_f, rows_per_chunk)])  # (out, G)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = scale if best_scale is None else torch.where(better, scale, best_scale)
        best_zero = zero if best_zero is None else torch.where(better, zero, best_zero)
    return GroupCodes.from_params(w, best_scale, best_zero, bits, symmetric, group_size)


def _is_norm(m: nn.Module, width: int | None = None) -> bool:
    """A LayerNorm/RMSNorm-like module: class name with "Norm" and a 1-D ``weight`` (of ``width`` entries)."""
    w = getattr(m, "weight", None)
    ok = "Norm" in type(m).__name__ and isinstance(w, torch.Tensor) and w.dim() == 1
    return ok and (width is None or w.numel() == width)


def find_producer(model: nn.Module, layer: nn.Module, run: Callable[..., Any]) -> tuple[str, nn.Module] | None:
    """The Linear or norm module whose output is exactly ``layer``'s input on the first calibration batch.

    Forward hooks record the output tensor of every Linear and norm; ``layer``'s pre-hook looks its input up
    by data pointer and shape. The recorded tensors are kept alive during the pass, so a pointer cannot
    be reused by another tensor.
    """
    outputs: dict[tuple[int, tuple[int, ...]], tuple[str, nn.Module, torch.Tensor]] = {}
    found: list[tuple[str, nn.Module] | None] = []

    def make(name: str) -> Callable[..., None]:
        def hook(mod: nn.Module, _args: tuple[Any, ...], out: Any) -> None:
            if isinstance(out, torch.Tensor):
                outputs[(out.data_ptr(), tuple(out.shape))] = (name, mod, out)
        return hook

    def probe(_m: nn.Module, args: tuple[Any, ...]) -> None:
        if not found:
            hit = outputs.get((args[0].data_ptr(), tuple(args[0].shape)))
            found.append(None if hit is None else (hit[0], hit[1]))

    handles = [m.register_forward_hook(make(n)) for n, m in model.named_modules()
               if isinstance(m, nn.Linear) or _is_norm(m)]
    handles.append(layer.register_forward_pre_hook(probe))
    try:
        with torch.no_grad():
            run(1)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


@torch.no_grad()
def _fold_into(prev: nn.Module, s: torch.Tensor) -> None:
    """Divide ``prev``'s output channels by ``s``: a norm's gamma/beta, or a Linear's rows and bias."""
    if isinstance(prev, nn.Linear):
        prev.weight.div_(s.reshape(-1, 1).to(prev.weight.dtype))
    else:
        prev.weight.div_(s.to(prev.weight.dtype))
    if getattr(prev, "bias", None) is not None:
        prev.bias.div_(s.to(prev.bias.dtype))


@torch.no_grad()
def _scale_columns(layers: list[nn.Module], s: torch.Tensor) -> None:
    for m in layers:
        m.weight.mul_(s.to(m.weight.dtype))


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    """Outputs equal up to float error (relative to their scale)."""
    for x, y in zip(a, b):
        tol = 1e-4 * max(x.abs().max().item(), 1e-6)
        if x.shape != y.shape or (x - y).abs().max().item() > tol:
            return False
    return True


@register_rounding("awq", AWQ)
def awq_(model: nn.Module, layers: dict[str, nn.Module], config: Any, batches: list[ModelInputs]
         ) -> dict[str, dict[str, Any]]:
    """AWQ on every Linear, group by group inside each block (module docstring); other layers: RTN."""
    opts: AWQ = config.rounding
    out: dict[str, dict[str, Any]] = {}
    plain = {n: m for n, m in layers.items() if not isinstance(m, nn.Linear)}
    if plain:
        for n, d in round_to_nearest_(model, plain, config, batches).items():
            out[n] = {**d, "note": "not a Linear: AWQ not applicable, rounded to nearest"}
    todo = {n: m for n, m in layers.items() if n not in plain}
    ratios = torch.linspace(1.0, 1.0 - opts.max_shrink, opts.clip_grid) if opts.clip else torch.ones(1)

    def step(sub: dict[str, nn.Module], run: Callable[..., list[torch.Tensor]]) -> None:
        for group in input_groups(sub, run):
            mods = [sub[n] for n in group]
            xs: list[torch.Tensor] = []
            prev = find_producer(model, mods[0], run)
            observe_inputs({group[0]: mods[0]}, run, lambda _n, x, xs=xs: xs.append(sample_matrix(x).float()))
            x = subsample_rows(torch.cat(xs), opts.samples)  # (n, in)
            if opts.objective == "block":
                gs = [layer_group_size(m, n, config.group_size) for n, m in zip(group, mods)]
                s, alpha, loss, rtn_loss = awq_block_scale_search(mods, gs, x, opts.alphas(), config.bits,
                                                                  config.symmetric, run)
            else:
                g = layer_group_size(mods[0], group[0], config.group_size)
                w_cat = torch.cat([flat_weight(m) for m in mods]).float()
                s, alpha, loss, rtn_loss = awq_scale_search(w_cat, x, opts.alphas(), config.bits, g,
                                                            config.symmetric)
            how = "none"
            if alpha > 0:
                how = _apply_scale(prev, mods, s, run, opts.explicit_scales)
            if how == "none":
                s = torch.ones_like(s)
            xq = subsample_rows(x / s, opts.clip_samples)
            for name, m in zip(group, mods):
                w = flat_weight(m).float()
                g = layer_group_size(m, name, config.group_size)
                clip = ratios if name.rsplit(".", 1)[-1] not in opts.clip_skip else torch.ones(1)
                codes = awq_clip_codes(w, xq, config.bits, g, config.symmetric, clip)
                new = replace_with_codes(model, name, m, codes)
                if how == "explicit":
                    set_submodule(model, name, InputScaled(new, s))
                out[name] = {"alpha": alpha, "scale": how, "awq_loss": loss, "rtn_loss": rtn_loss,
                             "weight_mse": (codes.dequantize() - w).pow(2).mean().item()}

    if todo:
        mode = calibrate_blockwise(model, todo, batches, step, sequential=opts.sequential, desc="AWQ").mode
        for name in todo:
            out[name]["calibration"] = mode
    return out


def fold_scale_(prev: tuple[str, nn.Module] | None, mods: list[nn.Module], s: torch.Tensor,
                run: Callable[..., list[torch.Tensor]]) -> str | None:
    """Multiply the columns of ``mods`` by ``s`` and divide ``prev``'s outputs by ``s``, if exact.

    Applied only when ``prev`` is a Linear or a norm of the right width and the calibrated part's output
    (``run(1)``, the first batch) is unchanged afterwards (a producer that also feeds a residual, for one,
    fails the check). Returns the producer's name, or None with nothing changed.
    """
    if prev is None or not (isinstance(prev[1], nn.Linear) or _is_norm(prev[1], s.numel())):
        return None
    saved = [t.detach().clone() for t in _tensors([prev[1], *mods])]
    ref = run(1)
    _scale_columns(mods, s)
    _fold_into(prev[1], s)
    if _same(ref, run(1)):
        return prev[0]
    with torch.no_grad():  # the output changed: undo
        for t, v in zip(_tensors([prev[1], *mods]), saved):
            t.copy_(v)
    return None


def _apply_scale(prev: tuple[str, nn.Module] | None, mods: list[nn.Module], s: torch.Tensor,
                 run: Callable[..., list[torch.Tensor]], explicit: bool) -> str:
    """Fold ``s`` (:func:`fold_scale_`); else scale the columns for an explicit input scale, or do nothing.

    Returns:
        ``"folded into <name>"``, ``"explicit"`` (the caller wraps the layers in :class:`InputScaled`) or
        ``"none"`` (nothing changed).
    """
    folded = fold_scale_(prev, mods, s, run)
    if folded is not None:
        return "folded into " + folded
    if explicit:
        _scale_columns(mods, s)
        return "explicit"
    return "none"


def _tensors(mods: list[nn.Module]) -> list[torch.Tensor]:
    return [t for m in mods for t in (m.weight, getattr(m, "bias", None)) if t is not None]
