"""GPTQ: accurate post-training quantization of weights from second-order information.

Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers", ICLR 2023 (arXiv 2210.17323).

For one linear layer with weight ``W`` (rows = output features, columns = input features) and
calibration inputs ``X`` (columns = samples), GPTQ minimises the layer's output error
``||W X - Q X||_F^2`` whose Hessian w.r.t. each row of ``W`` is ``H = 2 X X^T`` (shared by all rows).
It quantizes the columns one at a time (Optimal Brain Quantization) and after quantizing column ``j``
to ``q_j`` moves the not-yet-quantized columns to compensate:

    err_j   = (w_j - q_j) / [H^-1]_jj                       # (rows,)
    W[:, j+1:] -= err_j [H^-1]_{j, j+1:}                     # rank-1 update

With ``U = chol(H^-1)^T`` (upper Cholesky factor of the inverse) the rows of ``U`` are exactly the
``[H^-1]_{j, j:} / sqrt([H^-1]_jj)`` needed after the previous columns were eliminated, so the whole
sweep needs one Cholesky decomposition. Updates are applied lazily: inside a block of ``block_size``
columns they are rank-1, and the accumulated block error ``E`` (rows, block) updates the rest of the
matrix once per block as ``W[:, end:] -= E U[block, end:]``.

Options (same names as the reference implementation):
  * ``percdamp``: ``H += percdamp * mean(diag(H)) * I`` before inversion (numerical stability).
  * Dead inputs (``H_jj == 0``: the input was always zero) get ``H_jj = 1`` and a zero weight column.
  * ``act_order``: process columns by decreasing ``diag(H)`` (the most activated inputs first), then
    un-permute. With ``group_size`` set we use **static groups** (the reference's ``--static-groups``):
    each group's scale and zero point are computed from the original weights of the contiguous group
    before the sweep, so the stored layout stays "contiguous groups of ``group_size`` input columns"
    and no ``g_idx`` permutation index is needed at inference time. Without act-order, a group's
    parameters are chosen from the (already error-compensated) weights when the sweep reaches the
    group's first column, as in the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from slimtorch.core.batches import ModelInputs
from slimtorch.core.blockwise import calibrate_blockwise, input_groups, observe_inputs, run_inputs
from slimtorch.core.config import check_positive, check_range
from slimtorch.quant import primitives as P
from slimtorch.quant.algorithms.rounding import (
    Rounding,
    layer_group_size,
    register_rounding,
    replace_with_codes,
    round_to_nearest_,
)
from slimtorch.quant.groupwise import GroupCodes, group_qparams
from slimtorch.quant.modules.packed import flat_weight


@dataclass
class GPTQ(Rounding):
    """GPTQ rounding (the module docstring): ``WeightOnly(bits=4, rounding=GPTQ(act_order=True))``.

    Args:
        block_size: lazy-update block (columns).
        damp: Hessian damping as a fraction of its mean diagonal (the reference's ``percdamp``).
        act_order: process columns by decreasing Hessian diagonal.
        sequential: calibrate one transformer block at a time on the quantized previous blocks' outputs
            (:mod:`slimtorch.core.blockwise`); False: every layer from passes of the whole model.
    """

    block_size: int = 128
    damp: float = 0.01
    act_order: bool = False
    sequential: bool = True

    needs_data: ClassVar[bool] = True
    legacy_fields: ClassVar[dict[str, str]] = {
        "gptq_block_size": "block_size", "gptq_percdamp": "damp", "gptq_act_order": "act_order"
    }

    def __post_init__(self) -> None:
        check_positive("block_size", self.block_size)
        check_range("damp", self.damp, 0.0, 1.0)


@dataclass
class GPTQStats:
    """What GPTQ reports for one layer.

    Attributes:
        loss: the OBQ proxy loss ``sum_j ||w_j - q_j||^2 / (2 [H^-1]_jj)`` summed over columns.
        damp: the damping actually added to the diagonal.
        dead: number of input columns whose Hessian diagonal was zero.
    """

    loss: float
    damp: float
    dead: int


def accumulate_hessian(hessian: torch.Tensor, count: int, x: torch.Tensor) -> int:
    """Add a batch of layer inputs to a running ``H = 2/n sum_i x_i x_i^T`` (in place).

    Args:
        hessian: (in, in) float64 running mean, updated in place.
        count: number of samples already in ``hessian``.
        x: (..., in) inputs of the layer; every leading position is one sample.

    Returns:
        The new sample count.
    """
    x = x.reshape(-1, x.shape[-1]).to(torch.float64)  # (n, in)
    n = x.shape[0]
    if n == 0:
        return count
    # Running mean keeps H at the scale of one sample regardless of how many batches are seen.
    hessian.mul_(count / (count + n))
    hessian.addmm_(x.T, x, alpha=2.0 / (count + n))
    return count + n


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    bits: int,
    group_size: int | None = None,
    symmetric: bool = False,
    block_size: int = 128,
    percdamp: float = 0.01,
    act_order: bool = False,
) -> tuple[GroupCodes, GPTQStats]:
    """Quantize ``weight`` (out, in) with GPTQ given the input Hessian ``hessian`` (in, in).

    The sweep runs in float32 (as the reference implementation); only the Cholesky factorisations of
    ``H`` and ``H^-1`` are done in float64. Inside a block the per-column work is a handful of vector
    operations (no host synchronisation); the rest of the matrix is updated once per block by one matmul.

    Args:
        weight: (out, in) float weight.
        hessian: (in, in) ``2 X X^T / n`` of the calibration inputs.
        bits: 2-8.
        group_size: input columns sharing one scale/zero point per output row; ``None`` = per row.
        symmetric: symmetric (zero point fixed) instead of asymmetric quantization.
        block_size: columns per lazy-update block (128 in the paper).
        percdamp: damping as a fraction of the mean Hessian diagonal.
        act_order: process columns by decreasing Hessian diagonal (static groups, see module docstring).

    Returns:
        The integer codes with their per-group scales / zero points, and :class:`GPTQStats`.
    """
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian shape {tuple(hessian.shape)} does not match weight columns {cols}")
    g = group_size or cols
    w = weight.detach().to(torch.float32).clone()  # (out, in)
    h = hessian.detach().to(torch.float64).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0

    # Static groups (act-order) or all-columns-at-once (no groups): parameters from the original W.
    static = None
    if act_order or group_size is None:
        static = group_qparams(w, bits, g, symmetric)  # (out, in/g) each
    perm = torch.arange(cols)
    if act_order:
        perm = torch.argsort(torch.diag(h), descending=True)
        w, h = w[:, perm], h[perm][:, perm]
    inv_perm = torch.argsort(perm)

    damp = percdamp * torch.mean(torch.diag(h)).item()
    h += damp * torch.eye(cols, dtype=h.dtype)
    u = upper_cholesky_of_inverse(h).to(torch.float32)  # (in, in)

    qmin, qmax = P.qrange(bits, signed=symmetric)
    n_groups = cols // g
    scale = torch.zeros(rows, n_groups, dtype=torch.float32)
    zero = torch.zeros(rows, n_groups, dtype=torch.int32)
    if static is not None:
        scale, zero = static
    # The sweep works on transposed copies so that a column is a contiguous row: wt[j] = W[:, j].
    wt = w.T.contiguous()  # (in, out), updated in place
    qt = torch.zeros_like(wt)  # dequantized columns, processing order
    st, zt = scale.T.contiguous(), zero.T.to(torch.float32).contiguous()  # (groups, out)
    col_group = (perm // g).tolist()  # group of each processed column
    starts_group = (perm % g == 0).tolist()
    losses = torch.zeros(rows, dtype=torch.float32)
    inner = _INNER if g % _INNER == 0 or static is not None else 1
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1 = wt[i1:i2]  # (b, out) view: updated in place
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for j1 in range(0, i2 - i1, inner):
            j2 = min(j1 + inner, i2 - i1)
            for i in range(j1, j2):
                col = i1 + i  # position in processing order
                gi = col_group[col]
                if static is None and starts_group[col]:
                    # The group's parameters from the current, error-compensated weights (columns of this
                    # block are up to date: the inner blocks end at group starts).
                    cur = torch.cat([w1[i:], wt[i2:]], dim=0)[:g].T  # (out, g)
                    s_, z_ = group_qparams(cur, bits, g, symmetric)
                    st[gi], zt[gi] = s_[:, 0], z_[:, 0].to(torch.float32)
                wc, sc, zc = w1[i], st[gi], zt[gi]  # (out,) each
                qc = (torch.round(wc / sc) + zc).clamp_(qmin, qmax).sub_(zc).mul_(sc)
                qt[col] = qc
                e = (wc - qc).div_(u1[i, i])  # (out,)
                losses.addcmul_(e, e)
                w1[i:j2].addr_(u1[i, i:j2], e, alpha=-1.0)  # rank-1 update inside the inner block
                err1[i] = e
            if j2 < i2 - i1:  # the inner block's errors reach the rest of the block at once
                w1[j2:].addmm_(u1[j1:j2, j2:].T, err1[j1:j2], alpha=-1.0)
        if i2 < cols:  # lazy batch update of the remaining columns
            wt[i2:].addmm_(u[i1:i2, i2:].T, err1, alpha=-1.0)
    q = qt.T
    if static is None:
        scale, zero = st.T.contiguous(), zt.T.to(torch.int32).contiguous()
    q = q[:, inv_perm]
    # q already lies on the grid, so rounding it again recovers its integer codes exactly.
    codes = GroupCodes.from_params(q, scale, zero, bits, symmetric, g)
    return codes, GPTQStats(loss=float(losses.sum()) / 2, damp=damp, dead=int(dead.sum()))


#: Columns per inner block of the sweep: the rank-1 updates touch only the inner block, the rest of the
#: lazy-update block is updated by one matmul per inner block (the result is the same for any size).
_INNER = 16


def upper_cholesky_of_inverse(h: torch.Tensor) -> torch.Tensor:
    """``U`` upper triangular with ``U^T U = H^-1`` (float64; ``H`` symmetric positive definite).

    ``H^-1 = L^-T L^-1`` from ``H = L L^T`` with a triangular solve (``torch.cholesky_inverse`` is
    several times slower on CPU), then the upper Cholesky factor of ``H^-1``.
    """
    chol = torch.linalg.cholesky(h)
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    linv = torch.linalg.solve_triangular(chol, eye, upper=False)  # L^-1
    return torch.linalg.cholesky(linv.T @ linv, upper=True)


class _Stop(Exception):
    """Raised from a forward hook to end a calibration pass early."""


def sequential_hessians(
    model: nn.Module,
    layers: dict[str, nn.Module],
    batches: Callable[[], Iterable[tuple[torch.Tensor, ...]]],
    input_matrix: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> dict[str, tuple[torch.Tensor, int]]:
    """One calibration pass collecting ``H = 2 X X^T / n`` for each of ``layers``.

    The forward pass stops as soon as every layer in ``layers`` has run at least once on the batch, so
    quantizing a model layer by layer costs about half a full pass per layer group on average.

    Args:
        model: the (partly quantized) model.
        layers: fqn -> layer whose inputs are collected.
        batches: callable returning an iterable of positional-argument tuples for ``model``.
        input_matrix: fqn -> function turning the layer's input into samples ``(n, fan_in)`` (e.g.
            ``unfold`` for a convolution); default: flatten leading dimensions (Linear).

    Returns:
        fqn -> (hessian (in, in) float64, sample count).
    """
    input_matrix = input_matrix or {}
    stats = {}
    for n, m in layers.items():
        k = m.weight[0].numel()  # fan-in
        stats[n] = [torch.zeros(k, k, dtype=torch.float64), 0]
    seen: set[str] = set()

    def make_hook(name: str) -> Callable:
        def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            st = stats[name]
            x = inputs[0].detach()
            x = input_matrix[name](x) if name in input_matrix else x
            st[1] = accumulate_hessian(st[0], st[1], x)
            seen.add(name)
            if len(seen) == len(layers):
                raise _Stop

        return hook

    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            for args in batches():
                seen.clear()
                try:
                    run_inputs(model, args)
                except _Stop:
                    pass
    finally:
        for hd in handles:
            hd.remove()
    return {n: (st[0], st[1]) for n, st in stats.items()}


def layer_groups(
    model: nn.Module, layers: dict[str, nn.Module], args: tuple[torch.Tensor, ...] | ModelInputs
) -> list[list[str]]:
    """Order ``layers`` by execution and group consecutive layers that read the same input tensor.

    Layers in one group (e.g. the q, k and v projections of an attention block) see identical inputs,
    so GPTQ can quantize them from one calibration pass; a later group's inputs depend on the earlier
    groups' quantized outputs and are collected after those are quantized (sequential GPTQ).
    Layers that never run are returned last, one group each.
    """
    # The input tensors are kept alive (not just their ids) so identity tests cannot hit a reused id.
    order: list[tuple[str, torch.Tensor]] = []

    def make_hook(name: str) -> Callable:
        def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            if name not in {n for n, _ in order}:
                order.append((name, inputs[0]))

        return hook

    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            run_inputs(model, args)
    finally:
        for hd in handles:
            hd.remove()
    groups: list[list[str]] = []
    last: torch.Tensor | None = None
    for name, t in order:
        if groups and t is last:
            groups[-1].append(name)
        else:
            groups.append([name])
        last = t
    ran = {n for n, _ in order}
    groups += [[n] for n in layers if n not in ran]
    return groups


def gptq_input_matrix(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """How a layer's input becomes GPTQ's sample matrix (n, fan_in); None if GPTQ cannot handle it."""
    if isinstance(module, nn.Linear):
        return lambda x: x.reshape(-1, x.shape[-1])
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        m = module

        def unfold(x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B * L, C * kh * kw)
            cols = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)  # (B, C*kh*kw, L)
            return cols.transpose(1, 2).reshape(-1, cols.shape[1])

        return unfold
    return None


def collect_hessians(layers: dict[str, nn.Module], run: Callable[..., Any]) -> dict[str, tuple[torch.Tensor, int]]:
    """``H = 2 X X^T / n`` (float32) of each layer's inputs over the calibration data ``run()`` feeds."""
    sums = {n: torch.zeros(m.weight[0].numel(), m.weight[0].numel()) for n, m in layers.items()}
    counts = dict.fromkeys(layers, 0)
    to_matrix = {n: gptq_input_matrix(m) for n, m in layers.items()}

    def observe(name: str, x: torch.Tensor) -> None:
        xm = to_matrix[name](x).to(torch.float32)  # (n, in)
        sums[name].addmm_(xm.T, xm)
        counts[name] += xm.shape[0]

    observe_inputs(layers, run, observe)
    return {n: (sums[n].mul_(2.0 / max(counts[n], 1)), counts[n]) for n in layers}


@register_rounding("gptq", GPTQ)
def gptq_(
    model: nn.Module, layers: dict[str, nn.Module], config: Any, batches: list[ModelInputs]
) -> dict[str, dict[str, Any]]:
    """GPTQ on every layer: block by block (``config.rounding.sequential``), inside a block group by group.

    Layers that read the same input (q, k, v) share one Hessian pass; a later group's Hessian is taken
    after the earlier groups of the block are quantized (the reference's "true sequential" order).
    """
    opts: GPTQ = config.rounding
    out: dict[str, dict[str, Any]] = {}
    plain = {n: m for n, m in layers.items() if gptq_input_matrix(m) is None}
    if plain:  # grouped convolutions: GPTQ's shared Hessian does not apply, fall back to RTN
        for n, d in round_to_nearest_(model, plain, config, batches).items():
            out[n] = {**d, "note": "grouped conv: GPTQ not applicable, rounded to nearest"}
    todo = {n: m for n, m in layers.items() if n not in plain}

    def step(sub: dict[str, nn.Module], run: Callable[..., Any]) -> None:
        for group in input_groups(sub, run):
            hess = collect_hessians({n: sub[n] for n in group}, run)
            for name in group:
                m = sub[name]
                h, count = hess[name]
                w = flat_weight(m)
                codes, stats = gptq_quantize(
                    w, h, bits=config.bits, group_size=layer_group_size(m, name, config.group_size),
                    symmetric=config.symmetric, block_size=opts.block_size, percdamp=opts.damp,
                    act_order=opts.act_order,
                )
                replace_with_codes(model, name, m, codes)
                out[name] = {"gptq_loss": stats.loss, "samples": count, "dead_inputs": stats.dead,
                             "weight_mse": (codes.dequantize() - w).pow(2).mean().item()}

    if todo:
        mode = calibrate_blockwise(model, todo, batches, step, sequential=opts.sequential, desc="GPTQ").mode
        for name in todo:
            out[name]["calibration"] = mode
    return out
