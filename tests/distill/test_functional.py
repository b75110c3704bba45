"""Each pure loss against a hand-written formula on random tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from slimtorch.distill import functional as KF


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _kd_ref(s: np.ndarray, t: np.ndarray, T: float) -> float:
    # T^2 * (1/B) * sum_b sum_c q (log q - log p): written out with numpy, float64
    q, p = _softmax(t / T), _softmax(s / T)
    return T * T * float((q * (np.log(q) - np.log(p))).sum() / s.shape[0])


@pytest.mark.parametrize("T", [1.0, 4.0, 20.0])
def test_kd_loss_matches_formula_with_t2_and_batchmean(T):
    s, t = torch.randn(16, 10, dtype=torch.float64) * 3, torch.randn(16, 10, dtype=torch.float64) * 3
    assert KF.kd_loss(s, t, T).item() == pytest.approx(_kd_ref(s.numpy(), t.numpy(), T), rel=1e-9)


def test_kd_loss_flattens_sequence_logits():
    s, t = torch.randn(2, 5, 7, dtype=torch.float64), torch.randn(2, 5, 7, dtype=torch.float64)
    ref = _kd_ref(s.reshape(10, 7).numpy(), t.reshape(10, 7).numpy(), 2.0)
    assert KF.kd_loss(s, t, 2.0).item() == pytest.approx(ref, rel=1e-9)


def test_kd_loss_zero_iff_same_logits_and_shift_invariant():
    z = torch.randn(4, 10, dtype=torch.float64)
    assert KF.kd_loss(z, z + 3.0, 5.0).item() == pytest.approx(0.0, abs=1e-12)


def test_t2_scaling_keeps_gradient_scale():
    # Hinton §2: the soft-target gradient scales as 1/T^2, so T^2 * grad is ~ T-independent for large T.
    s = torch.randn(64, 10, dtype=torch.float64, requires_grad=True)
    t = torch.randn(64, 10, dtype=torch.float64)
    norms = []
    for T in (10.0, 40.0):
        (g,) = torch.autograd.grad(KF.kd_loss(s, t, T), s)
        # d KL / d z_s = (p - q) / (T B) ~ (z_s - z_t) / (C T^2 B) for large T; the T^2 factor cancels it
        norms.append(g.norm().item())
    assert norms[0] == pytest.approx(norms[1], rel=0.05)


def test_soft_target_loss_equals_kd_loss_for_one_teacher():
    s, t = torch.randn(8, 10, dtype=torch.float64), torch.randn(8, 10, dtype=torch.float64)
    q = KF.soft_targets(t, 3.0)
    assert KF.soft_target_loss(s, q, 3.0).item() == pytest.approx(KF.kd_loss(s, t, 3.0).item(), rel=1e-9)


def test_average_soft_targets_weighted_mean_of_probabilities():
    t1, t2 = torch.randn(6, 10, dtype=torch.float64), torch.randn(6, 10, dtype=torch.float64)
    q = KF.average_soft_targets([t1, t2], 4.0, weights=[3.0, 1.0])
    ref = 0.75 * _softmax(t1.numpy() / 4) + 0.25 * _softmax(t2.numpy() / 4)
    np.testing.assert_allclose(q.numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(
        KF.average_soft_targets([t1, t2], 4.0).numpy(),
        0.5 * _softmax(t1.numpy() / 4) + 0.5 * _softmax(t2.numpy() / 4),
        rtol=1e-12,
    )
    s = torch.randn(6, 10, dtype=torch.float64)
    p = _softmax(s.numpy() / 4)
    ref_loss = 16 * float((ref * (np.log(ref) - np.log(p))).sum() / 6)
    assert KF.soft_target_loss(s, q, 4.0).item() == pytest.approx(ref_loss, rel=1e-9)


@pytest.mark.parametrize("T", [0, -1.0, float("nan")])
def test_bad_temperature(T):
    z = torch.randn(2, 3)
    with pytest.raises(ValueError, match="temperature must be a number > 0"):
        KF.kd_loss(z, z, T)


def test_negative_teacher_weights():
    z = torch.randn(2, 3)
    with pytest.raises(ValueError, match="teacher weights must be >= 0"):
        KF.average_soft_targets([z, z], 2.0, weights=[1.0, -0.5])
    with pytest.raises(ValueError, match="got 1 teacher weights for 2 teachers"):
        KF.average_soft_targets([z, z], 2.0, weights=[1.0])


def test_different_class_counts():
    with pytest.raises(ValueError, match="student has 10 classes but teacher has 5"):
        KF.kd_loss(torch.randn(2, 10), torch.randn(2, 5), 2.0)


def test_logit_mse_and_hint_formula():
    s, t = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    assert KF.logit_mse_loss(s, t).item() == pytest.approx(float(((s - t) ** 2).sum() / 35), rel=1e-12)
    f1, f2 = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    assert KF.hint_loss(f1, f2).item() == pytest.approx(float(((f1 - f2) ** 2).mean()), rel=1e-12)
    with pytest.raises(
        ValueError, match=r"student \(after adapter\) \(2, 3, 4, 4\) vs teacher \(2, 5, 4, 4\)"
    ):
        KF.hint_loss(f1, torch.randn(2, 5, 4, 4, dtype=torch.float64))


def test_attention_transfer_formula():
    fs, ft = torch.randn(3, 8, 5, 5, dtype=torch.float64), torch.randn(3, 16, 5, 5, dtype=torch.float64)

    def at(f):  # Zagoruyko & Komodakis: Q = vec(sum_c |A_c|^2) / ||.||_2 (sum vs mean cancels in the norm)
        a = (f.numpy() ** 2).sum(1).reshape(f.shape[0], -1)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    ref = float(((at(fs) - at(ft)) ** 2).mean())
    assert KF.attention_transfer_loss(fs, ft).item() == pytest.approx(ref, rel=1e-10)
    with pytest.raises(ValueError, match=r"student feature \(3, 8, 5, 5\).*teacher feature \(3, 16, 4, 4\)"):
        KF.attention_transfer_loss(fs, torch.randn(3, 16, 4, 4))


def _pdist(e: np.ndarray) -> np.ndarray:
    return np.sqrt(((e[:, None, :] - e[None, :, :]) ** 2).sum(-1))


def _huber(x: np.ndarray) -> np.ndarray:
    a = np.abs(x)
    return np.where(a < 1, 0.5 * x * x, a - 0.5)


def test_rkd_distance_formula():
    s, t = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 12, dtype=torch.float64) * 4
    ds, dt = _pdist(s.numpy()), _pdist(t.numpy())
    off = ~np.eye(7, dtype=bool)
    ref = _huber(ds / ds[off].mean() - dt / dt[off].mean()).mean()
    assert KF.rkd_distance_loss(s, t).item() == pytest.approx(float(ref), rel=1e-7)


def test_rkd_angle_formula():
    s, t = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 9, dtype=torch.float64)

    def angles(e):
        n = len(e)
        out = np.zeros((n, n, n))
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    a, b = e[i] - e[j], e[k] - e[j]
                    na, nb = np.linalg.norm(a), np.linalg.norm(b)
                    out[j, i, k] = 0.0 if na == 0 or nb == 0 else a @ b / (na * nb)
        return out

    ref = _huber(angles(s.numpy()) - angles(t.numpy())).mean()
    assert KF.rkd_angle_loss(s, t).item() == pytest.approx(float(ref), rel=1e-7)


def test_rkd_invariant_to_scale_and_rotation_of_teacher():
    s = torch.randn(6, 4, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    assert KF.rkd_distance_loss(s, 5 * s @ q).item() == pytest.approx(0.0, abs=1e-9)
    assert KF.rkd_angle_loss(s, 5 * s @ q).item() == pytest.approx(0.0, abs=1e-9)


def test_similarity_formula():
    s, t = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 3, 2, 2, dtype=torch.float64)
    a, b = s.numpy(), t.numpy().reshape(6, -1)
    gs, gt = a @ a.T, b @ b.T
    gs /= np.linalg.norm(gs, axis=1, keepdims=True)
    gt /= np.linalg.norm(gt, axis=1, keepdims=True)
    assert KF.similarity_loss(s, t).item() == pytest.approx(float(((gs - gt) ** 2).sum() / 36), rel=1e-10)


def test_attention_map_vector_and_sequence_features():
    v = torch.randn(2, 6)
    q = KF.attention_map(v)
    assert torch.allclose(q.norm(dim=1), torch.ones(2))
    assert KF.attention_map(torch.randn(2, 4, 3)).shape == (2, 4)
    assert math.isclose(float(KF.attention_map(torch.ones(1, 4))[0, 0]), 0.5)
