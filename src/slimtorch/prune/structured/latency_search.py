"""``Channel(allocation="latency")``: measure a latency table, solve for widths, verify, correct.

1. For every runtime of ``latency_runtimes`` a :class:`~.latency_model.LatencyTable` is read from the
   cache or measured (each group narrowed alone to ``latency_points`` widths, in the whole model).
2. Each group's allowed widths (multiples of ``round_to``, at least the minimum, or the one width a
   per-layer override fixes) get their importance lost and their predicted saving per runtime, and
   :func:`~.latency_alloc.solve` picks the widths keeping the most importance with the predicted
   latency within budget (``T(dense) / target_speedup``, or ``latency_budget_ms``).
3. The plan is built and *measured* against the unpruned model (the code ``target_speedup`` uses). If a
   runtime misses its target, its budget is tightened and the problem solved again; if every runtime beats
   it by more than 3%, the budgets are loosened (:func:`next_log_scale`: a secant on log budget scale vs log
   measured margin), and once a budget that meets the target and one that misses it are known, the budget
   is bisected between them (in log scale, to 1%). When a tightened budget has no plan in the table (the
   table was optimistic: context costs it does not see, as ONNX Runtime's int8 graphs show), the narrowest
   allowed plan is measured once: it may meet the target the solved plans missed. Of the measured plans that
   meet the target, the one keeping the most importance is returned; if none does, the closest, with a warning.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from slimtorch.prune.report import LatencyPlan
from slimtorch.prune.structured.channel import (
    ALLOCATORS,
    Channel,
    _batch_of,
    _Constraints,
    _group_ratio,
    _macs,
    _min_keep,
    _round_keep,
    _unit_width,
    apply_removal,
    group_slices,
)
from slimtorch.prune.structured.graph import ChannelGroup, DependencyGraph
from slimtorch.prune.structured.latency_alloc import importance_lost, normalized, solve
from slimtorch.prune.structured.latency_model import (
    LatencyTable,
    cache_key,
    cache_path,
    load_table,
    measure_table,
    measure_widths,
    model_signature,
    save_table,
)

#: A measured plan within this factor above the target is accepted without loosening the budget.
CLOSE_ENOUGH = 1.03


def allowed_widths(group: ChannelGroup, config: Channel) -> list[int]:
    """Kept-unit counts a group may take: one width when an override fixes its ratio; else every multiple of
    ``round_to`` from the minimum (``round_to``, or one unit) to the full width, and the full width."""
    ratio, overridden = _group_ratio(group, config, 0.0)
    n = group.n_units
    if overridden:
        return [_round_keep(group, int(math.floor(n * (1.0 - ratio) + 1e-9)), config)]
    lo = _min_keep(group, config)
    step = config.round_to if _unit_width(group) == 1 else 1
    return sorted({w for w in range(lo, n + 1) if w % step == 0} | {lo, n})


def coupled_layers(model: nn.Module, group: ChannelGroup) -> int:
    """How many weight tensors a unit of ``group`` is cut from (a residual stream's channel: every layer
    reading or writing the stream; a block's inner channel: two). A unit's importance lost is its
    mean-normalised score times this: with ``group_reduce="mean"`` a score is a *per-tensor* average, and
    removing a stream channel removes it from all of those tensors. Without this weight the knapsack cut
    ResNet-20's stage-2 and stage-3 streams to 8 and 16 channels for 1.6x on ONNX Runtime (they save the
    most time per unit) and the fine-tuned model lost 31 pt."""
    return max(1, sum(1 for ws, _ in group_slices(model, group) if ws.role == "weight"))


def _removal(scores: torch.Tensor, n: int, keep: int) -> np.ndarray:
    return np.sort(torch.argsort(scores, stable=True)[: n - keep].numpy())


def latency_tables(model: nn.Module, graph: DependencyGraph, scores: list[torch.Tensor], config: Channel, ex: Any,
                   allowed: list[list[int]]) -> dict[str, LatencyTable]:
    """One latency table per runtime of ``config.latency_runtimes``, from the cache when present."""
    from slimtorch.metrics import cpu_info

    x = _batch_of(ex, config.latency_batch)
    widths = [measure_widths(g.n_units, a, config.latency_points) for g, a in zip(graph.groups, allowed)]
    info = cpu_info()
    cpu = f"{info.model or info.arch} [{info.kind}]"
    sig = model_signature(model, ex)
    if config.latency_measurer is not None:  # never mix simulated tables with measured ones
        m = config.latency_measurer
        sig += f"|measurer:{getattr(m, '__module__', '')}.{getattr(m, '__qualname__', type(m).__name__)}"
    empty = [np.zeros(0, dtype=np.int64)] * len(graph.groups)


    def variant(g: int, keep: int) -> nn.Module:
        removed = list(empty)
        removed[g] = _removal(scores[g], graph.groups[g].n_units, keep)
        m = copy.deepcopy(model)
        apply_removal(m, graph, removed)
        return m.eval()

    tables = {}
    was_training = model.training
    model.eval()
    try:
        for rt in config.latency_runtimes:
            key = cache_key(sig, rt, config.latency_threads, config.latency_batch, cpu, widths,
                            config.latency_repeats)
            path = cache_path(key)
            table = load_table(path) if config.latency_cache else None
            if table is None:
                table = measure_table(model, variant, [g.name for g in graph.groups],
                                      [g.n_units for g in graph.groups], widths, x, rt, config.latency_threads,
                                      config.latency_repeats, config.latency_measurer, cpu, progress=True)
                table.key = key
                if config.latency_cache:
                    save_table(table, path)
            tables[rt] = table
    finally:
        model.train(was_training)
    return tables


#: Before two measured plans give a secant: measured latency moved about 0.4x as far as predicted on
#: ResNet-20 (the additive model over-counts savings of neighbouring groups), so the first correction
#: scales the budget by ``margin ** 2``.
FIRST_STEP_EXPONENT = 2.0


def next_log_scale(history: list[tuple[float, float]], log_scale: float, log_margin: float) -> float:
    """The budget scale (log) that should bring the measured margin to 1 (log 0): a secant through the two
    most recent distinct measured points (``(log scale, log margin)``) when their slope is negative (as it
    should be: a tighter budget measures faster), else a
    step of ``FIRST_STEP_EXPONENT`` times the miss. Slightly aims above the target (1%)."""
    aim = math.log(1.01)
    if len(history) >= 2:
        (x0, y0), (x1, y1) = history[-2], history[-1]
        if abs(x1 - x0) > 1e-9 and (y1 - y0) / (x1 - x0) < -0.05:  # a tighter budget (x down) is faster (y up)
            return x1 + (aim - y1) / ((y1 - y0) / (x1 - x0))
    return log_scale + FIRST_STEP_EXPONENT * (log_margin - aim)


@ALLOCATORS.register("latency")
def latency_allocation(model: nn.Module, graph: DependencyGraph, scores: list[torch.Tensor], config: Channel,
                       meets: _Constraints, macs_before: int, warn: list[str]) -> tuple[list[np.ndarray], LatencyPlan]:
    """Removal per group and the :class:`~slimtorch.prune.report.LatencyPlan` (module docstring)."""
    groups = graph.groups
    allowed = [allowed_widths(g, config) for g in groups]
    runtimes = list(config.latency_runtimes)
    loss = [coupled_layers(model, g) * importance_lost(normalized(s.numpy()), a)
            for g, s, a in zip(groups, scores, allowed)]

    def margin(r: str, dense_ms: float, ms: float) -> float:
        """> 1: the plan beats the target on ``r`` by that factor (measured)."""
        if config.target_speedup is not None:
            return (dense_ms / ms) / config.target_speedup
        return float(config.latency_budget_ms) / ms

    tables = latency_tables(model, graph, scores, config, meets.ex, allowed)
    base = {r: tables[r].base_ms for r in runtimes}
    combine = config.latency_combine
    if combine == "additive":  # savings in ms; need: T - B
        savings = {r: [np.array([-tables[r].curves[g].at(w) for w in a]) for g, a in enumerate(allowed)]
                   for r in runtimes}
    else:  # savings in log T; need: log T - log B
        savings = {r: [np.array([tables[r].log_saving(g, w) for w in a]) for g, a in enumerate(allowed)]
                   for r in runtimes}

    def budget(r: str) -> float:
        return base[r] / config.target_speedup if config.target_speedup is not None else float(config.latency_budget_ms)

    def need(r: str, b: float) -> float:
        return base[r] - b if combine == "additive" else math.log(base[r] / b)

    scale = dict.fromkeys(runtimes, 1.0)
    history: dict[str, list[tuple[float, float]]] = {r: [] for r in runtimes}  # (log scale, log margin)
    attempts: list[dict[str, Any]] = []
    tried: set[tuple[int, ...]] = set()
    for attempt in range(config.latency_corrections + 1):
        budgets = {r: budget(r) * scale[r] for r in runtimes}
        plan = solve(loss, savings, {r: need(r, budgets[r]) for r in runtimes}, config.latency_solver)
        if plan is None:
            if attempt == 0:
                fastest = {r: tables[r].predict([a[0] for a in allowed], combine) for r in runtimes}
                raise ValueError(
                    "the latency target is out of reach: even the narrowest allowed widths are predicted at "
                    + ", ".join(f"{r} {fastest[r]:.2f} ms (dense {base[r]:.2f} ms, budget {budgets[r]:.2f} ms)"
                                for r in runtimes)
                    + "; pinned channels and round_to set the minimum widths")
            # A measured miss tightened the budget past what the table thinks any plan reaches: the table
            # is optimistic here (context effects it does not see). Measure the narrowest plan once: if it
            # meets the target, it brackets the budget and the bisection below finds the plans in between.
            plan = [0] * len(allowed)
            if tuple(int(a[0]) for a in allowed) in tried:
                break
        keeps = tuple(int(a[i]) for a, i in zip(allowed, plan))
        removed = [_removal(s, g.n_units, k) for s, g, k in zip(scores, groups, keeps)]
        meets.measure(removed)
        timing = meets.timings[b"".join(r.astype(np.int64).tobytes() + b"|" for r in removed)]
        margins = {r: margin(r, *timing[r]) for r in runtimes}
        rec = {"attempt": attempt, "budget_ms": budgets, "keeps": list(keeps),
               "importance_lost": float(sum(lo[i] for lo, i in zip(loss, plan))),
               "predicted_ms": {r: tables[r].predict(keeps, combine) for r in runtimes},
               "measured_dense_ms": {r: timing[r][0] for r in runtimes},
               "measured_ms": {r: timing[r][1] for r in runtimes},
               "meets_target": all(v >= 1.0 for v in margins.values()), "removed": removed}
        attempts.append(rec)
        if keeps not in tried:
            tried.add(keeps)
            for r in runtimes:
                history[r].append((math.log(scale[r]), math.log(margins[r])))
        if rec["meets_target"] and max(margins.values()) <= CLOSE_ENOUGH:
            break
        done = True
        for r in runtimes:
            ok_r = [x for x, y in history[r] if y >= 0.0]  # log scales whose plan met the target on r
            bad_r = [x for x, y in history[r] if y < 0.0]
            if ok_r and bad_r and max(ok_r) < min(bad_r):  # bracketed: bisect in log scale
                lo, hi = max(ok_r), min(bad_r)
                if hi - lo > math.log(1.01):
                    done = False
                scale[r] = math.exp((lo + hi) / 2)
            elif rec["meets_target"] or margins[r] < 1.0:
                done = False
                scale[r] = math.exp(next_log_scale(history[r], math.log(scale[r]), math.log(margins[r])))
        if done:
            break
    ok = [a for a in attempts if a["meets_target"]]
    if ok:
        final = min(ok, key=lambda a: a["importance_lost"])
    else:
        final = max(attempts, key=lambda a: min(margin(r, a["measured_dense_ms"][r], a["measured_ms"][r])
                                                for r in runtimes))
        warn.append(f"latency allocation: no measured plan met the target after {len(attempts)} solve(s); "
                    "returning the closest: " + ", ".join(
                        f"{r} {final['measured_dense_ms'][r] / final['measured_ms'][r]:.2f}x" for r in runtimes))
    keeps = final["keeps"]
    dense_ms, ms = final["measured_dense_ms"], final["measured_ms"]
    measured_speedup = {r: dense_ms[r] / ms[r] for r in runtimes}
    predicted_speedup = {r: base[r] / final["predicted_ms"][r] for r in runtimes}
    objective = (
        "maximise the kept importance (sum over kept units of their group-mean-normalised "
        f"{config.importance} score times the number of weight tensors they are cut from) subject to the "
        "predicted latency "
        + (f"<= T(dense) / {config.target_speedup}" if config.target_speedup is not None
           else f"<= {config.latency_budget_ms} ms")
        + f" on {', '.join(runtimes)} (batch {config.latency_batch}, {config.latency_threads} thread(s)); "
        f"{combine} latency model; "
        f"{config.latency_solver} solver, round_to {config.round_to}")
    pruned = meets.pruned(final["removed"])
    plan = LatencyPlan(
        objective=objective,
        runtimes=runtimes,
        target_speedup=config.target_speedup,
        budget_ms={r: budget(r) for r in runtimes},
        groups=[{"name": g.name, "units": g.n_units, "kept": k, "unit_width": _unit_width(g)}
                for g, k in zip(groups, keeps)],
        base_ms=base,
        predicted_ms=final["predicted_ms"],
        measured_dense_ms=dense_ms,
        measured_ms=ms,
        measured_speedup=measured_speedup,
        predicted_speedup=predicted_speedup,
        prediction_error={r: predicted_speedup[r] / measured_speedup[r] - 1.0 for r in runtimes},
        macs_before=macs_before,
        macs_after=_macs(pruned, meets.ex),
        attempts=[{k: v for k, v in a.items() if k != "removed"} for a in attempts],
        table_s=sum(0.0 if t.from_cache else t.measure_s for t in tables.values()),
        from_cache={r: tables[r].from_cache for r in runtimes},
    )
    return final["removed"], plan
