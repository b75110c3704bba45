"""Group Taylor importance (Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning", eq. 8).

Removing a unit (its group of weights ``W_u``) changes the loss, to first order, by ``sum_j g_uj W_uj``;
Molchanov et al. square that *summed* change rather than summing per-weight magnitudes, averaged over
calibration minibatches ``b``::

    s_u = (1/B) sum_b ( sum_j W_uj * dL_b/dW_uj )^2

Unlike the per-weight ``taylor`` criterion (``sum_b sum_j |W_uj g_buj|``), contributions of one unit's
weights may cancel, which is what happens when the unit's output can move without changing the loss. The
paper found this group form ranks filters closer to the true loss change (its "Taylor FO on group").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from slimtorch.prune.structured.importance import CoupledTensor, group_reduce, register_importance, scored


def group_taylor_scores(w: torch.Tensor, grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """``s_u = mean_b (sum_j W_uj g_buj)^2`` for ``w`` and each ``g_b`` of shape ``(n_units, k)``."""
    if not grads:
        raise ValueError("taylor_group importance needs gradients: pass calibration batches as data=")
    w = w.double()
    return torch.stack([(w * g.double()).sum(1).pow(2) for g in grads]).mean(0)


@register_importance("taylor_group", needs_gradients=True)
def group_taylor_importance(
    tensors: Sequence[CoupledTensor], *, reduce: str = "mean", seed: int = 0
) -> torch.Tensor:
    """Mean over coupled weight tensors of the group Taylor score of each unit."""
    return group_reduce([group_taylor_scores(t.values, t.grads) for t in scored(tensors)], reduce)
