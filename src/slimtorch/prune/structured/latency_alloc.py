"""Latency-aware width allocation: keep the most importance under a predicted latency budget.

The problem (HALP, Shen et al. 2022, "Structural Pruning via Latency-Saliency Knapsack", eq. 2) is a
multiple-choice knapsack. Group ``g`` (``n_g`` units, sorted importance ``s_g,(1) >= s_g,(2) >= ...``)
keeps ``w_g`` units out of its allowed widths ``W_g`` (multiples of ``round_to``, at least the minimum,
fixed by a per-layer override, ...), always its ``w_g`` most important units:

    maximise   sum_g sum_{j <= w_g} s_g,(j)          (kept importance)
    subject to T(dense) + sum_g d_g(w_g) <= B         (predicted latency, :mod:`.latency_model`)

equivalently: minimise the importance *lost*, ``L_g(w) = sum_{j > w} s_g,(j)``, subject to the predicted
saving ``S_g(w) = -d_g(w)`` summing to at least ``need = T(dense) - B``. Scores are normalised by their
group's mean (as the ``global`` allocation does) so groups scored on differently sized tensors compare,
and weighted by the number of weight tensors a unit is cut from
(:func:`~slimtorch.prune.structured.latency_search.coupled_layers`).

Two solvers:

* ``knapsack`` (default): exact dynamic programming over the saving discretised into ``bins`` steps,
  rounding every saving *down*, so a plan it returns meets the budget under the model exactly (HALP solves
  its knapsack by dynamic programming too). It can also use widths whose latency is *higher* than a
  wider one (odd widths on blocked kernels), or skip them, whichever is best.
* ``greedy``: repeatedly take the width change with the least importance lost per millisecond saved
  (any lower width of any group, so a step over a latency plateau is seen), until the budget holds; then
  give back, most importance per millisecond first, every width change the budget no longer needs.

With several runtimes every one has its own budget. The solvers see one scalar saving
``sum_r lambda_r S_g,r(w) / need_r`` (with ``sum_r lambda_r = 1`` and need 1), and the weights of the
runtimes a plan misses are raised until the plan meets every runtime's budget (a Lagrangian heuristic;
exact for one runtime).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SOLVERS = ("knapsack", "greedy")


def importance_lost(scores: np.ndarray, keeps: Sequence[int]) -> np.ndarray:
    """``L(w)`` for every ``w`` in ``keeps``: the summed scores of the ``n - w`` lowest units."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    csum = np.concatenate([[0.0], np.cumsum(s)])
    return np.array([csum[len(s) - int(w)] for w in keeps])


def normalized(scores: np.ndarray) -> np.ndarray:
    """Scores divided by their mean (left as they are when the mean is not positive)."""
    s = np.asarray(scores, dtype=np.float64)
    m = float(s.mean()) if s.size else 0.0
    return s / m if m > 0 else s


def solve_knapsack(loss: list[np.ndarray], saving: list[np.ndarray], need: float, bins: int = 4000) -> list[int] | None:
    """Option index per group minimising ``sum_g loss[g][i_g]`` subject to ``sum_g saving[g][i_g] >= need``.

    Dynamic programming over the saving in units of ``need / bins``, each option's saving rounded down (so
    the returned plan meets the constraint exactly), partial sums saturating at ``need``. ``None`` if no
    plan meets it (at that resolution). ``need <= 0``: the cheapest option of every group.
    """
    if need <= 0:
        return [int(np.argmin(lo)) for lo in loss]
    scale = bins / need
    disc = [np.floor(np.asarray(s, dtype=np.float64) * scale + 1e-9).astype(np.int64) for s in saving]
    low = int(sum(min(0, int(d.min())) for d in disc))
    offset = -low
    size = bins + offset + 1
    top = size - 1
    dp = np.full(size, np.inf)
    dp[offset] = 0.0
    choices: list[np.ndarray] = []
    prevs: list[np.ndarray] = []
    for lo, d in zip(loss, disc):
        new = np.full(size, np.inf)
        choice = np.full(size, -1, dtype=np.int64)
        prev = np.full(size, -1, dtype=np.int64)
        src = np.nonzero(np.isfinite(dp))[0]
        for i, (li, di) in enumerate(zip(lo, d)):
            tgt = np.minimum(src + di, top)
            cand = dp[src] + li
            sat = tgt == top
            body = ~sat
            t, c, s = tgt[body], cand[body], src[body]
            better = c < new[t]
            new[t[better]], choice[t[better]], prev[t[better]] = c[better], i, s[better]
            if sat.any():
                j = int(np.argmin(cand[sat]))
                if cand[sat][j] < new[top]:
                    new[top], choice[top], prev[top] = cand[sat][j], i, src[sat][j]
        dp = new
        choices.append(choice)
        prevs.append(prev)
    if not np.isfinite(dp[top]):
        return None
    out = [0] * len(loss)
    state = top
    for g in range(len(loss) - 1, -1, -1):
        out[g] = int(choices[g][state])
        state = int(prevs[g][state])
    return out


def solve_greedy(loss: list[np.ndarray], saving: list[np.ndarray], need: float) -> list[int] | None:
    """Greedy by importance lost per unit of saving (see the module docstring); ``None`` if even every
    group's most saving option misses ``need``. Options are ordered by width, the last the widest."""
    cur = [len(lo) - 1 for lo in loss]
    total = sum(float(s[c]) for s, c in zip(saving, cur))
    eps = 1e-12
    while total < need - eps:
        best: tuple[float, int, int] | None = None
        for g, (lo, s) in enumerate(zip(loss, saving)):
            for j in range(cur[g]):
                ds = float(s[j] - s[cur[g]])
                if ds > eps:
                    r = float(lo[j] - lo[cur[g]]) / ds
                    if best is None or r < best[0]:
                        best = (r, g, j)
        if best is None:
            return None
        _, g, j = best
        total += float(saving[g][j] - saving[g][cur[g]])
        cur[g] = j
    while True:  # give back what the budget no longer needs, most importance per unit of saving first
        back: tuple[float, int, int] | None = None
        for g, (lo, s) in enumerate(zip(loss, saving)):
            for j in range(cur[g] + 1, len(lo)):
                lost_saving = float(s[cur[g]] - s[j])
                gain = float(lo[cur[g]] - lo[j])
                if gain > eps and total - lost_saving >= need - eps:
                    r = gain / max(lost_saving, eps)
                    if back is None or r > back[0]:
                        back = (r, g, j)
        if back is None:
            return cur
        _, g, j = back
        total -= float(saving[g][cur[g]] - saving[g][j])
        cur[g] = j


def solve_greedy_multi(loss: list[np.ndarray], savings: dict[str, list[np.ndarray]], needs: dict[str, float]
                       ) -> list[int] | None:
    """:func:`solve_greedy` with one budget per runtime: a width change's value is its importance lost over
    the sum, over the runtimes still over budget, of its saving (capped at what that runtime still needs)
    divided by the runtime's need; the give-back pass keeps every runtime within budget."""
    runtimes = [r for r, n in needs.items() if n > 0]
    cur = [len(lo) - 1 for lo in loss]
    total = {r: sum(float(savings[r][g][c]) for g, c in enumerate(cur)) for r in runtimes}
    eps = 1e-12

    def unmet() -> list[str]:
        return [r for r in runtimes if total[r] < needs[r] - eps]

    while unmet():
        open_ = unmet()
        best: tuple[float, int, int] | None = None
        for g, lo in enumerate(loss):
            for j in range(cur[g]):
                gain = 0.0
                for r in open_:
                    ds = float(savings[r][g][j] - savings[r][g][cur[g]])
                    gain += min(ds, needs[r] - total[r]) / needs[r]
                if gain > eps:
                    ratio = float(lo[j] - lo[cur[g]]) / gain
                    if best is None or ratio < best[0]:
                        best = (ratio, g, j)
        if best is None:
            return None
        _, g, j = best
        for r in runtimes:
            total[r] += float(savings[r][g][j] - savings[r][g][cur[g]])
        cur[g] = j
    while True:
        back: tuple[float, int, int] | None = None
        for g, lo in enumerate(loss):
            for j in range(cur[g] + 1, len(lo)):
                gain = float(lo[cur[g]] - lo[j])
                lost = {r: float(savings[r][g][cur[g]] - savings[r][g][j]) for r in runtimes}
                if gain > eps and all(total[r] - lost[r] >= needs[r] - eps for r in runtimes):
                    ratio = gain / max(sum(max(v, 0.0) / needs[r] for r, v in lost.items()), eps)
                    if back is None or ratio > back[0]:
                        back = (ratio, g, j)
        if back is None:
            return cur
        _, g, j = back
        for r in runtimes:
            total[r] -= float(savings[r][g][cur[g]] - savings[r][g][j])
        cur[g] = j


def solve(loss: list[np.ndarray], savings: dict[str, list[np.ndarray]], needs: dict[str, float],
          solver: str = "knapsack", iterations: int = 12) -> list[int] | None:
    """Option index per group meeting every runtime's ``needs[r]`` (predicted savings ``savings[r]``) with the
    least importance lost. One runtime: the solver's answer. Several: ``greedy`` is
    :func:`solve_greedy_multi`; ``knapsack`` raises the weights of the runtimes a plan misses (damped, up to
    ``iterations`` times, module docstring) and falls back to :func:`solve_greedy_multi` if no weighting
    meets every budget. ``None`` when no plan meets every need."""
    if solver not in SOLVERS:
        raise ValueError(f"solver: {solver!r} is not one of {list(SOLVERS)}")
    active = {r: n for r, n in needs.items() if n > 0}
    if not active:
        return [len(lo) - 1 for lo in loss]  # every budget holds at full width
    runtimes = list(active)
    if len(runtimes) == 1:
        r = runtimes[0]
        fn = solve_knapsack if solver == "knapsack" else solve_greedy
        return fn(loss, [np.asarray(s) for s in savings[r]], active[r])
    if solver == "greedy":
        return solve_greedy_multi(loss, savings, active)
    lam = {r: 1.0 / len(runtimes) for r in runtimes}
    for _ in range(iterations):
        scalar = [sum(lam[r] * np.asarray(savings[r][g]) / active[r] for r in runtimes) for g in range(len(loss))]
        plan = solve_knapsack(loss, scalar, 1.0)
        if plan is None:
            break
        got = {r: sum(float(savings[r][g][i]) for g, i in enumerate(plan)) / active[r] for r in runtimes}
        if all(v >= 1.0 - 1e-9 for v in got.values()):
            return plan
        for r in runtimes:
            if got[r] < 1.0:
                lam[r] *= (1.0 / max(got[r], 0.25)) ** 0.5
        z = sum(lam.values())
        lam = {r: v / z for r, v in lam.items()}
    return solve_greedy_multi(loss, savings, active)
