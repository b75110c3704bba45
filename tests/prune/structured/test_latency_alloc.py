"""Latency model math and the latency-aware solvers, on synthetic tables (no timing)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from slimtorch.prune.structured.latency_alloc import (
    importance_lost,
    normalized,
    solve,
    solve_greedy,
    solve_knapsack,
)
from slimtorch.prune.structured.latency_model import (
    GroupCurve,
    LatencyTable,
    cache_key,
    load_table,
    measure_table,
    measure_widths,
    save_table,
)


def brute_force(loss: list[np.ndarray], saving: list[np.ndarray], need: float) -> float | None:
    """Least total loss over every combination with total saving >= need (None: infeasible)."""
    best = None
    for combo in itertools.product(*[range(len(lo)) for lo in loss]):
        if sum(saving[g][i] for g, i in enumerate(combo)) >= need - 1e-12:
            v = sum(loss[g][i] for g, i in enumerate(combo))
            best = v if best is None else min(best, v)
    return best


def random_instance(rng: np.random.Generator, groups: int = 4, options: int = 4):
    loss, saving = [], []
    for _ in range(groups):
        keeps = np.arange(1, options + 1)
        scores = rng.random(options) + 0.05
        lo = importance_lost(scores, keeps)
        # latency falls with width, but not monotonically (odd widths can be slower): noise up to 30%
        s = (options - keeps) * rng.uniform(0.5, 2.0) + rng.normal(0, 0.3, options)
        s[-1] = 0.0
        loss.append(lo)
        saving.append(s)
    return loss, saving


def test_importance_lost_sums_the_lowest_units() -> None:
    s = np.array([3.0, 1.0, 4.0, 1.5, 9.0])
    # keep 5: nothing lost; keep 3: the two lowest (1 + 1.5); keep 1: all but 9
    np.testing.assert_allclose(importance_lost(s, [5, 3, 1]), [0.0, 2.5, 9.5])
    np.testing.assert_allclose(normalized(s), s / s.mean())


@pytest.mark.parametrize("seed", range(12))
def test_knapsack_equals_brute_force_optimum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    loss, saving = random_instance(rng)
    total_max = sum(float(s.max()) for s in saving)
    need = total_max * rng.uniform(0.2, 0.9)
    opt = brute_force(loss, saving, need)
    plan = solve_knapsack(loss, saving, need, bins=20000)
    assert opt is not None and plan is not None
    got_saving = sum(saving[g][i] for g, i in enumerate(plan))
    assert got_saving >= need  # savings are rounded down: the plan meets the budget exactly
    # the discretisation (need / bins per step, rounded down) can only cost a near-tie
    assert sum(loss[g][i] for g, i in enumerate(plan)) == pytest.approx(opt, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("seed", range(12))
def test_greedy_is_feasible_and_never_below_the_optimum(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    loss, saving = random_instance(rng)
    need = sum(float(s.max()) for s in saving) * 0.5
    opt = brute_force(loss, saving, need)
    plan = solve_greedy(loss, saving, need)
    assert plan is not None and opt is not None
    assert sum(saving[g][i] for g, i in enumerate(plan)) >= need - 1e-9
    assert sum(loss[g][i] for g, i in enumerate(plan)) >= opt - 1e-9


def test_greedy_takes_the_cheapest_loss_per_ms_and_gives_back_what_is_not_needed() -> None:
    # group 0: 1 ms for loss 1 per step; group 1: 2 ms per step for loss 1 (twice as efficient)
    loss = [np.array([2.0, 1.0, 0.0]), np.array([2.0, 1.0, 0.0])]
    saving = [np.array([2.0, 1.0, 0.0]), np.array([4.0, 2.0, 0.0])]
    assert solve_greedy(loss, saving, 2.0) == [2, 1]  # one step of group 1 covers it
    assert solve_greedy(loss, saving, 5.0) == [1, 0]  # group 1 to the bottom, then one step of group 0
    assert solve_knapsack(loss, saving, 5.0) == [1, 0]
    assert solve_greedy(loss, saving, 7.0) is None and solve_knapsack(loss, saving, 7.0) is None


def test_greedy_steps_over_a_latency_plateau() -> None:
    # the next width down saves nothing (a blocked kernel), two widths down saves a lot
    loss = [np.array([1.0, 0.5, 0.0]), np.array([3.0, 1.5, 0.0])]
    saving = [np.array([5.0, 0.0, 0.0]), np.array([5.0, 2.5, 0.0])]
    assert solve_greedy(loss, saving, 4.0) == [0, 2]
    assert solve_knapsack(loss, saving, 4.0) == [0, 2]


def test_no_need_keeps_every_group_whole() -> None:
    loss = [np.array([1.0, 0.0])]
    assert solve_knapsack(loss, [np.array([1.0, 0.0])], 0.0) == [1]
    assert solve(loss, {"torch": [np.array([1.0, 0.0])]}, {"torch": -3.0}) == [1]


@pytest.mark.parametrize("solver", ["knapsack", "greedy"])
def test_several_runtimes_each_meet_their_budget(solver: str) -> None:
    # runtime a gains only from group 0, runtime b only from group 1: both must be cut
    loss = [np.array([2.0, 1.0, 0.0]), np.array([2.0, 1.0, 0.0])]
    savings = {"a": [np.array([4.0, 2.0, 0.0]), np.array([0.0, 0.0, 0.0])],
               "b": [np.array([0.0, 0.0, 0.0]), np.array([4.0, 2.0, 0.0])]}
    plan = solve(loss, savings, {"a": 2.0, "b": 3.0}, solver)
    assert plan == [1, 0]
    with pytest.raises(ValueError, match="solver: 'dp' is not one of"):
        solve(loss, savings, {"a": 1.0}, "dp")


def test_curve_interpolates_linearly_and_clamps() -> None:
    c = GroupCurve("g", 16, [4, 8, 16], [-6.0, -2.0, 0.0])
    assert c.at(16) == 0.0 and c.at(8) == -2.0
    assert c.at(6) == pytest.approx(-4.0)  # halfway between 4 and 8
    assert c.at(12) == pytest.approx(-1.0)
    assert c.at(2) == -6.0  # clamped below the smallest measured width


def test_prediction_adds_deltas_or_multiplies_factors() -> None:
    t = LatencyTable("torch", 1, 8, "cpu", 10.0, [GroupCurve("a", 8, [4, 8], [-3.0, 0.0]),
                                                  GroupCurve("b", 4, [2, 4], [-1.0, 0.0])])
    for combine in ("additive", "product"):
        assert t.predict([8, 4], combine) == 10.0
    assert t.predict([4, 2], "additive") == pytest.approx(10.0 - 3.0 - 1.0)
    assert t.predict([6, 3], "additive") == pytest.approx(10.0 - 1.5 - 0.5)
    assert t.predict([4, 2], "product") == pytest.approx(10.0 * 0.7 * 0.9)
    assert t.predict([6, 3]) == pytest.approx(10.0 * 0.85 * 0.95)  # product is the default
    # the product model is additive in log T: the knapsack's savings
    assert t.log_saving(0, 4) + t.log_saving(1, 2) == pytest.approx(np.log(10.0 / t.predict([4, 2])))
    # one layer costing c_in * c_out: halving either alone saves half, both together three quarters
    layer = LatencyTable("torch", 1, 8, "cpu", 4.0, [GroupCurve("in", 2, [1, 2], [-2.0, 0.0]),
                                                     GroupCurve("out", 2, [1, 2], [-2.0, 0.0])])
    assert layer.predict([1, 1], "product") == 1.0 and layer.predict([1, 1], "additive") == 0.0
    with pytest.raises(ValueError, match="one width per group: 2 groups, 1 widths"):
        t.predict([8])
    with pytest.raises(ValueError, match="combine: 'max' is not one of"):
        t.predict([8, 4], "max")


def test_measure_widths_spreads_points_over_the_allowed_grid() -> None:
    assert measure_widths(16, [8, 16], 5) == [8, 16]
    # grid indices round(linspace(0, 7, 5)) = 0, 2, 4, 5, 7
    assert measure_widths(64, range(8, 65, 8), 5) == [8, 24, 40, 48, 64]
    w = measure_widths(64, range(1, 65), 4)
    assert len(w) == 4 and w[0] == 1 and w[-1] == 64


def test_measure_table_takes_differences_to_the_dense_model_in_the_same_run() -> None:
    calls = []

    def measurer(models, inputs, runtime, threads, repeats):  # latency = 1 + sum of widths, + 100 per call
        calls.append(len(models))
        return [100.0 * len(calls) + 1.0 + float(m.sum()) for m in models]

    def variant(g: int, keep: int) -> torch.Tensor:
        w = torch.tensor([8.0, 4.0])
        w[g] = keep
        return w

    t = measure_table(torch.tensor([8.0, 4.0]), variant, ["a", "b"], [8, 4], [[2, 4, 8], [1, 4]],
                      torch.zeros(3, 2), "torch", measurer=measurer)
    assert calls == [3, 2]  # each group: dense + its narrower widths, in one call
    assert t.curves[0].widths == [2, 4, 8] and t.curves[0].delta_ms == [-6.0, -4.0, 0.0]
    assert t.curves[1].widths == [1, 4] and t.curves[1].delta_ms == [-3.0, 0.0]
    # dense latency in the two calls: 100 + 1 + 12 and 200 + 1 + 12; the base is their median
    assert t.base_ms == pytest.approx((113.0 + 213.0) / 2) and t.dense_ms == t.base_ms
    assert t.batch == 3


def test_measure_table_around_a_center_plan() -> None:
    def measurer(models, inputs, runtime, threads, repeats):
        return [float(m.prod()) for m in models]  # interactions: latency = product of widths

    def variant(g: int, keep: int) -> torch.Tensor:
        w = torch.tensor([4.0, 2.0])  # the center
        w[g] = keep
        return w

    t = measure_table(torch.tensor([8.0, 4.0]), variant, ["a", "b"], [8, 4], [[2, 8], [1, 4]], torch.zeros(1, 2),
                      "torch", measurer=measurer, center=[4, 2], center_model=torch.tensor([4.0, 2.0]))
    assert t.base_ms == 8.0 and t.dense_ms == 32.0 and t.center == [4, 2]
    assert t.curves[0].widths == [2, 4, 8] and t.curves[0].delta_ms == [-4.0, 0.0, 8.0]
    assert t.predict([4, 2]) == 8.0 and t.predict([2, 2], "additive") == 4.0 and t.predict([2, 2]) == 4.0


def test_cache_key_changes_with_every_input_and_files_round_trip(tmp_path) -> None:
    base = {"signature": "s", "runtime": "torch", "threads": 1, "batch": 8, "cpu": "c", "widths": [[1, 2]],
            "repeats": 5}
    k0 = cache_key(**base)
    for change in ({"signature": "t"}, {"runtime": "onnxruntime"}, {"threads": 2}, {"batch": 16}, {"cpu": "d"},
                   {"widths": [[2]]}, {"repeats": 6}, {"center": [1]}):
        assert cache_key(**{**base, **change}) != k0, change
    assert cache_key(**base) == k0
    t = LatencyTable("torch", 1, 8, "c", 2.5, [GroupCurve("a", 2, [1, 2], [-1.0, 0.0])], key=k0)
    path = tmp_path / "sub" / f"{k0}.json"
    save_table(t, path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    back = load_table(path)
    assert back == t and back.from_cache
    path.write_text("{broken")
    assert load_table(path) is None
    assert load_table(tmp_path / "missing.json") is None
    assert json.loads(json.dumps(t.to_dict()))["curves"][0]["name"] == "a"


def test_budget_correction_steps_secant_then_first_step() -> None:
    import math

    from slimtorch.prune.structured.latency_search import FIRST_STEP_EXPONENT, next_log_scale

    aim = math.log(1.01)
    # one measurement, 5% short: tighten by twice the miss (in log)
    y = math.log(0.95)
    assert next_log_scale([(0.0, y)], 0.0, y) == pytest.approx(FIRST_STEP_EXPONENT * (y - aim))
    # two points on the line y = -2 x: the secant lands where y = aim
    pts = [(0.0, 0.0), (-0.1, 0.2)]
    assert next_log_scale(pts, -0.1, 0.2) == pytest.approx(-aim / 2)
    # a slope of the wrong sign (noise) falls back to the first step
    bad = [(0.0, 0.0), (-0.1, -0.05)]
    assert next_log_scale(bad, -0.1, -0.05) == pytest.approx(-0.1 + FIRST_STEP_EXPONENT * (-0.05 - aim))
