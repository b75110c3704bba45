"""Small linear-algebra helpers shared by the second-order methods (GPTQ, SparseGPT)."""

from __future__ import annotations

import torch

from slimtorch.core.errors import SlimtorchError


def upper_cholesky_of_inverse(h: torch.Tensor) -> torch.Tensor:
    """``U`` upper triangular with ``U^T U = H^-1`` (``H`` symmetric positive definite, damped).

    ``H^-1 = L^-T L^-1`` from ``H = L L^T`` with a triangular solve (``torch.cholesky_inverse`` is several
    times slower on CPU), then the upper Cholesky factor of ``H^-1``. Done in float32 as the reference
    implementation; float64 if float32 fails (an ill-conditioned ``H``).
    """
    for dtype in (torch.float32, torch.float64):
        a = h.to(dtype)
        chol, info = torch.linalg.cholesky_ex(a)
        if info.item() == 0:
            linv = torch.linalg.solve_triangular(chol, torch.eye(a.shape[0], dtype=dtype), upper=False)
            u, info = torch.linalg.cholesky_ex(linv.T @ linv, upper=True)
            if info.item() == 0 and torch.isfinite(u).all():
                return u
    raise SlimtorchError("the damped Hessian is not positive definite; raise the damping (damp=0.1)")
