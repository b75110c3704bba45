"""Pure distillation losses: tensors in, a scalar tensor out, no modules, no state.

Every function states its formula and paper. Logits may be ``(B, C)`` or ``(B, T, C)`` (language models);
the latter are flattened to ``(B*T, C)`` so "batch" means "every position".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _check_temperature(temperature: float) -> None:
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")


def _flat_logits(x: torch.Tensor) -> torch.Tensor:
    # (B, C) stays; (B, T, C) -> (B*T, C): KL batchmean then averages over every position.
    return x.reshape(-1, x.shape[-1]) if x.dim() > 2 else x


def _check_same_classes(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape[-1] != teacher.shape[-1]:
        raise ValueError(
            f"student has {student.shape[-1]} classes but teacher has {teacher.shape[-1]} "
            f"(student logits {tuple(student.shape)}, teacher logits {tuple(teacher.shape)}); "
            "distillation needs the same class set"
        )


def soft_targets(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(z_t / T)`` over the last dimension."""
    _check_temperature(temperature)
    return F.softmax(teacher_logits / temperature, dim=-1)


def average_soft_targets(
    teacher_logits: Sequence[torch.Tensor], temperature: float, weights: Sequence[float] | None = None
) -> torch.Tensor:
    """Weighted mean of several teachers' softened distributions (multi-teacher KD).

    ``q = sum_i w_i softmax(z_i / T)`` with ``w`` normalised to sum to 1 (equal weights if ``None``).
    Averaging probabilities (not logits) is what Hinton et al. 2015 §2 do for ensembles and lets
    teachers of different architectures and logit scales be mixed.

    Args:
        teacher_logits: one ``(B, C)`` tensor per teacher.
        temperature: T > 0.
        weights: one non-negative weight per teacher.

    Returns:
        ``(B, C)`` probabilities.
    """
    if len(teacher_logits) == 0:
        raise ValueError("average_soft_targets needs at least one teacher")
    w = normalize_weights(weights, len(teacher_logits))
    probs = [wi * soft_targets(t, temperature) for wi, t in zip(w, teacher_logits)]
    for t in teacher_logits[1:]:
        _check_same_classes(t, teacher_logits[0])
    return torch.stack(probs).sum(0)


def normalize_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """``weights`` divided by their sum (``[1/n] * n`` if ``None``); rejects negatives and all-zero."""
    if weights is None:
        return [1.0 / n] * n
    w = [float(x) for x in weights]
    if len(w) != n:
        raise ValueError(f"got {len(w)} teacher weights for {n} teachers")
    if any(x < 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"teacher weights must be >= 0 with a positive sum, got {list(weights)}")
    s = sum(w)
    return [x / s for x in w]


def soft_target_loss(
    student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2 * KL(q || softmax(z_s / T))`` with KL summed over classes and averaged over the batch.

    The ``T^2`` factor (Hinton et al. 2015 §2) keeps the gradient magnitude of the soft term roughly
    independent of T, so the hard- and soft-label weights need not be retuned when T changes.

    Args:
        student_logits: ``(B, C)`` or ``(B, T, C)``.
        target_probs: probabilities of the same shape (e.g. :func:`average_soft_targets`).
        temperature: T > 0.
    """
    _check_temperature(temperature)
    _check_same_classes(student_logits, target_probs)
    s = _flat_logits(student_logits)
    q = _flat_logits(target_probs)
    log_p = F.log_softmax(s / temperature, dim=-1)
    # "batchmean" = sum over (B, C) / B, the true KL per sample ("mean" would also divide by C).
    return F.kl_div(log_p, q, reduction="batchmean") * temperature**2


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Response-based knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge
    in a Neural Network").

    ``L = T^2 * (1/B) * sum_b sum_c q_bc (log q_bc - log p_bc)``, ``q = softmax(z_t/T)``,
    ``p = softmax(z_s/T)``.

    Args:
        student_logits: ``(B, C)`` or ``(B, T, C)``.
        teacher_logits: same shape as ``student_logits``.
        temperature: T > 0.
    """
    _check_temperature(temperature)
    _check_same_classes(student_logits, teacher_logits)
    s = _flat_logits(student_logits)
    t = _flat_logits(teacher_logits)
    log_p = F.log_softmax(s / temperature, dim=-1)
    log_q = F.log_softmax(t / temperature, dim=-1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * temperature**2


def logit_mse_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Logit regression (Ba & Caruana 2014, "Do Deep Nets Really Need to be Deep?").

    ``L = (1/(B*C)) * sum_bc (z_s - z_t)^2``; the T -> infinity limit of KD with zero-mean logits
    (Hinton et al. 2015 §2.1).
    """
    _check_same_classes(student_logits, teacher_logits)
    return F.mse_loss(student_logits, teacher_logits)


def hint_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """FitNets hint loss (Romero et al. 2015): ``L = mean((r(u_s) - v_t)^2)``.

    ``student_feature`` is the student's guided-layer output *after* the learned regressor ``r``
    (the adapter); both tensors must have the same shape. The paper's ``1/2 ||.||^2`` sum is replaced by
    a mean so the weight does not depend on the feature size.
    """
    if student_feature.shape != teacher_feature.shape:
        raise ValueError(
            f"hint feature shapes differ: student (after adapter) {tuple(student_feature.shape)} vs "
            f"teacher {tuple(teacher_feature.shape)}"
        )
    return F.mse_loss(student_feature, teacher_feature)


def attention_map(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Activation-based spatial attention (Zagoruyko & Komodakis 2017, eq. 2 with ``F_sum^p``).

    ``Q = vec(mean_c |A_c|^p)`` normalised to unit L2 norm per sample. For ``(B, C, H, W)`` maps the
    channel mean gives one ``H*W`` map; for ``(B, D)`` vectors every unit is its own "position".
    For ``(B, T, D)`` sequences the mean runs over the feature dim, giving one value per token.

    Returns:
        ``(B, N)`` unit-norm attention vectors.
    """
    a = feature.abs().pow(p)
    if feature.dim() == 4:  # (B, C, H, W) -> (B, H*W)
        a = a.mean(1).flatten(1)
    elif feature.dim() == 3:  # (B, T, D) -> (B, T)
        a = a.mean(-1)
    elif feature.dim() != 2:
        raise ValueError(
            f"attention_map expects (B, D), (B, T, D) or (B, C, H, W), got {tuple(feature.shape)}"
        )
    return F.normalize(a, dim=1)


def attention_transfer_loss(
    student_feature: torch.Tensor, teacher_feature: torch.Tensor, p: float = 2.0
) -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis 2017, eq. 2).

    ``L = mean_{b,n} (Q_s - Q_t)^2`` with ``Q`` from :func:`attention_map`; the paper's code multiplies
    the sum over layer pairs by ``beta / 2 = 500``, which is the default weight of
    :class:`~slimtorch.distill.AttentionTransfer`.
    """
    qs, qt = attention_map(student_feature, p), attention_map(teacher_feature, p)
    if qs.shape != qt.shape:
        raise ValueError(
            f"attention maps differ in size: student feature {tuple(student_feature.shape)} -> "
            f"{tuple(qs.shape)}, teacher feature {tuple(teacher_feature.shape)} -> {tuple(qt.shape)}; "
            "pick layers with the same spatial size (channels may differ)"
        )
    return (qs - qt).pow(2).mean()


def _pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    # (B, D) -> (B, B) Euclidean distances with an exact-zero diagonal (sqrt'(0) is infinite).
    sq = e.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp_min(eps)
    d = d2.sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def rkd_distance_loss(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor) -> torch.Tensor:
    """RKD distance-wise loss (Park et al. 2019, "Relational Knowledge Distillation", eq. 4-5).

    ``psi_D(i, j) = ||e_i - e_j|| / mu`` with ``mu`` the mean distance over pairs ``i != j``;
    ``L = mean_{i,j} huber(psi_D^s(i, j) - psi_D^t(i, j))`` over the full ``B x B`` matrix (as the
    authors' code does). Embeddings are flattened to ``(B, D)``; widths may differ.
    """
    s, t = student_embedding.flatten(1), teacher_embedding.flatten(1)
    ds, dt = _pairwise_distances(s), _pairwise_distances(t)
    off = ~torch.eye(len(s), dtype=torch.bool, device=s.device)
    ds = ds / ds[off].mean().clamp_min(1e-12)
    dt = dt / dt[off].mean().clamp_min(1e-12)
    return F.smooth_l1_loss(ds, dt)


def _angles(e: torch.Tensor) -> torch.Tensor:
    # e_ij = (e_i - e_j)/||e_i - e_j||: (B, B, D); angle(i,j,k) = <e_ij, e_kj>: (B, B, B) flattened.
    diff = e.unsqueeze(0) - e.unsqueeze(1)  # diff[j, i] = e_i - e_j
    unit = F.normalize(diff, p=2, dim=2)
    return torch.bmm(unit, unit.transpose(1, 2)).reshape(-1)


def rkd_angle_loss(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor) -> torch.Tensor:
    """RKD angle-wise loss (Park et al. 2019, eq. 6-7).

    ``psi_A(i, j, k) = cos angle(e_i e_j e_k) = <(e_i - e_j)/||.||, (e_k - e_j)/||.||>``;
    ``L = mean_{i,j,k} huber(psi_A^s - psi_A^t)``. Costs ``O(B^2 D + B^3)``.
    """
    s, t = student_embedding.flatten(1), teacher_embedding.flatten(1)
    return F.smooth_l1_loss(_angles(s), _angles(t))


def similarity_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD (Tung & Mori 2019, eq. 2-4).

    ``G = normalize_rows(A A^T)`` with ``A`` the ``(B, D)`` flattened activations, and
    ``L = ||G_s - G_t||_F^2 / B^2``. Only the ``B x B`` similarities are compared, so the student and
    teacher widths (and spatial sizes) may differ.
    """
    s, t = student_feature.flatten(1), teacher_feature.flatten(1)
    gs = F.normalize(s @ s.t(), dim=1)
    gt = F.normalize(t @ t.t(), dim=1)
    b = s.shape[0]
    return (gs - gt).pow(2).sum() / (b * b)
