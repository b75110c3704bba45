"""SparseGPT: one-shot pruning with second-order weight reconstruction (Frantar & Alistarh, "SparseGPT:
Massive Language Models Can Be Accurately Pruned in One-Shot", ICML 2023, arXiv 2301.00774).

For a linear layer with weight ``W`` (out, in) and calibration inputs with Hessian ``H = 2 X X^T / n``
(in, in), SparseGPT minimises the output error ``||W X - W_hat X||^2`` of the pruned weight ``W_hat`` with
Optimal Brain Surgeon updates, column by column, sharing ``H^-1`` between rows:

* **mask selection** (adaptive, per block of ``block_size`` columns, Algorithm 1): a weight's saliency
  is ``w_ij^2 / [H^-1]_jj^2``; the lowest ``sparsity`` fraction of the block's saliencies is pruned
  (for N:M: the ``m - n`` lowest of every ``m`` consecutive columns of a row, chosen when the sweep
  reaches the group);
* **OBS row update**: after column ``j`` is fixed (pruned weights set to 0), the error
  ``e = (w_j - w_hat_j) / [U]_jj`` is spread over the later columns, ``W[:, j+1:] -= e U[j, j+1:]``,
  with ``U`` the upper Cholesky factor of ``H^-1`` (rows of ``U`` are the ``H^-1`` rows after
  eliminating the earlier columns, as in GPTQ);
* **lazy batch updates**: inside a block the updates are rank-1; the rest of the matrix is updated once
  per block, ``W[:, end:] -= E U[block, end:]``.

``damp`` adds ``damp * mean(diag H)`` to the diagonal; inputs that were always zero get ``H_jj = 1``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimtorch.core.blockwise import observe_inputs, sample_matrix
from slimtorch.core.config import check_positive, check_range
from slimtorch.prune.api import register_pruner
from slimtorch.prune.calibrated import CalibratedPruning, run_calibrated_pruning
from slimtorch.prune.report import PruneReport

#: Columns per inner block: rank-1 updates stay inside it; the result does not depend on it.
_INNER = 16


@dataclass
class SparseGPT(CalibratedPruning):
    """SparseGPT one-shot pruning (module docstring): ``SparseGPT(sparsity=0.5)`` or ``SparseGPT(n=2, m=4)``.

    Args:
        block_size: columns per lazy-update block and mask-selection block (128 in the paper).
        damp: Hessian damping as a fraction of its mean diagonal (0.01 in the paper).
        (other options: :class:`~slimtorch.prune.calibrated.CalibratedPruning`)
    """

    block_size: int = 128
    damp: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("block_size", self.block_size)
        check_range("damp", self.damp, 0.0, 1.0)
        if self.m is not None and self.block_size % self.m:
            raise ValueError(f"SparseGPT: block_size {self.block_size} must be a multiple of m={self.m}")


def _upper_cholesky_of_inverse(h: torch.Tensor) -> torch.Tensor:
    """``U`` upper triangular with ``U^T U = H^-1`` (float64), via a triangular solve."""
    chol = torch.linalg.cholesky(h)
    linv = torch.linalg.solve_triangular(chol, torch.eye(h.shape[0], dtype=h.dtype), upper=False)
    return torch.linalg.cholesky(linv.T @ linv, upper=True)


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, *, sparsity: float | None = None,
                    nm: tuple[int, int] | None = None, block_size: int = 128, percdamp: float = 0.01
                    ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Prune ``weight`` (out, in) with SparseGPT given ``hessian`` (in, in) = ``2 X X^T / n``.

    Returns:
        ``(new_weight, keep_mask, loss)``: the reconstructed weight (zeros where pruned), the bool mask and
        the OBS proxy loss ``sum e^2 / 2``.
    """
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian shape {tuple(hessian.shape)} does not match weight columns {cols}")
    h = hessian.detach().to(torch.float64).clone()
    wt = weight.detach().to(torch.float32).T.contiguous()  # (in, out): column j of W is row j
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    wt[dead] = 0.0
    h += percdamp * torch.mean(torch.diag(h)) * torch.eye(cols, dtype=h.dtype)
    u = _upper_cholesky_of_inverse(h).to(torch.float32)
    keep_t = torch.ones_like(wt, dtype=torch.bool)  # (in, out)
    losses = torch.zeros(rows)
    n, m = nm if nm is not None else (0, 0)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1 = wt[i1:i2]  # (b, out) view, updated in place
        u1 = u[i1:i2, i1:i2]
        d1 = torch.diagonal(u1).reshape(-1, 1)  # (b, 1)
        err1 = torch.zeros_like(w1)
        k1 = keep_t[i1:i2]
        if nm is None:  # adaptive mask of this block: the lowest w^2 / [H^-1]_jj^2 saliencies
            sal = (w1 / d1).pow(2).reshape(-1)
            k = int(sal.numel() * float(sparsity))
            if k:
                k1.view(-1)[torch.argsort(sal, stable=True)[:k]] = False
        inner = _INNER if m == 0 or _INNER % m == 0 else m
        for j1 in range(0, i2 - i1, inner):
            j2 = min(j1 + inner, i2 - i1)
            for i in range(j1, j2):
                if m and i % m == 0:  # N:M: in each row keep the n most salient of the next m columns
                    sal = (w1[i:i + m] / d1[i:i + m]).pow(2)  # (m, out)
                    k1[i:i + m] = False
                    k1[i:i + m].scatter_(0, sal.topk(n, dim=0).indices, True)
                wc = w1[i]
                e = torch.where(k1[i], 0.0, wc).div_(u1[i, i])  # the pruned weights' error, (out,)
                losses.addcmul_(e, e)
                w1[i:j2].addr_(u1[i, i:j2], e, alpha=-1.0)
                w1[i].mul_(k1[i])  # exact zeros where pruned
                err1[i] = e
            if j2 < i2 - i1:
                w1[j2:].addmm_(u1[j1:j2, j2:].T, err1[j1:j2], alpha=-1.0)
        if i2 < cols:
            wt[i2:].addmm_(u[i1:i2, i2:].T, err1, alpha=-1.0)
    return wt.T.contiguous(), keep_t.T.contiguous(), float(losses.sum()) / 2


def collect_hessians(layers: dict[str, nn.Module], run: Callable[..., Any]) -> dict[str, torch.Tensor]:
    """``H = 2 X X^T / n`` (float32 sums) of each layer's inputs over the calibration data."""
    sums = {n: torch.zeros(m.in_features, m.in_features) for n, m in layers.items()}
    counts = dict.fromkeys(layers, 0)

    def observe(name: str, x: torch.Tensor) -> None:
        xm = sample_matrix(x).to(torch.float32)
        sums[name].addmm_(xm.T, xm)
        counts[name] += xm.shape[0]

    observe_inputs(layers, run, observe)
    return {n: sums[n].mul_(2.0 / max(counts[n], 1)) for n in layers}


def _prune_layer(weight: torch.Tensor, hessian: torch.Tensor, config: SparseGPT
                 ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    w, mask, loss = sparsegpt_prune(weight, hessian, sparsity=config.sparsity, nm=config.nm,
                                    block_size=config.block_size, percdamp=config.damp)
    return w, mask, {"obs_loss": loss, "sparsity": 1 - mask.float().mean().item()}


@register_pruner(SparseGPT, name="sparsegpt")
def sparsegpt_(model: nn.Module, config: SparseGPT, example_inputs: Any = None, data: Any = None) -> PruneReport:
    """``prune_(model, SparseGPT(...), data=calib)``: prune and reconstruct every selected Linear, block by block."""
    return run_calibrated_pruning(model, config, collect_hessians, _prune_layer, example_inputs, data)
