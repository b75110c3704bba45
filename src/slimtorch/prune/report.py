"""What a pruning call did, layer by layer: :class:`PruneReport` (returned by ``prune_``).

One report type serves both kinds of pruning. Mask pruning keeps shapes and lowers the number of
nonzero weights; structured pruning lowers shapes (and so params and MACs). Each :class:`LayerReport`
row records both views so a single ``.table()`` prints either.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimtorch.core.selection import ROOT_NAME, display_name


@dataclass
class LayerReport:
    """One pruned parameter (usually a layer's ``weight``).

    Attributes:
        name: fully qualified module name (``"features.0"``; ``""`` when the model is itself the layer,
            shown as ``"<root>"`` by :meth:`PruneReport.table`).
        kind: what was done (``"magnitude"``, ``"nm"``, ``"channel"``, ...).
        shape_before: parameter shape before pruning.
        shape_after: parameter shape after pruning (equal to ``shape_before`` for masks).
        params_before: elements of the parameter before.
        params_after: elements after (equal to ``params_before`` for masks).
        nonzeros_before: nonzero elements before.
        nonzeros_after: nonzero elements after.
        macs_before: multiply-accumulates of this layer for one example before, when known. For masks
            ``macs_after`` counts only the MACs of nonzero weights (what sparse hardware would execute).
        macs_after: see ``macs_before``.
    """

    name: str
    kind: str
    shape_before: tuple[int, ...]
    shape_after: tuple[int, ...]
    params_before: int
    params_after: int
    nonzeros_before: int
    nonzeros_after: int
    macs_before: int | None = None
    macs_after: int | None = None

    @property
    def sparsity(self) -> float:
        """Fraction of zeros in the parameter after pruning."""
        return 1.0 - self.nonzeros_after / self.params_after if self.params_after else 0.0

    @property
    def kept(self) -> float:
        """Nonzeros after over params before (Han et al.'s "weights remaining" column)."""
        return self.nonzeros_after / self.params_before if self.params_before else 0.0


@dataclass
class LatencyPlan:
    """What a latency-aware allocation chose and how its prediction held up (``PruneReport.latency``).

    Attributes:
        objective: the problem solved, in words.
        runtimes: the runtimes with a latency target.
        target_speedup: the speedup asked for (``None`` when a budget in ms was given).
        budget_ms: the latency budget in ms per runtime (``T(dense) / target_speedup`` for a speedup target).
        groups: per group ``{"name", "units", "kept", "unit_width"}``: the plan.
        base_ms: per runtime, the unpruned model's latency in the latency table.
        predicted_ms: per runtime, the table's additive prediction for the plan.
        measured_dense_ms, measured_ms: per runtime, the unpruned and the pruned model timed in one run.
        measured_speedup: ``measured_dense_ms / measured_ms``.
        predicted_speedup: ``base_ms / predicted_ms``.
        prediction_error: ``predicted_speedup / measured_speedup - 1`` (positive: the model was optimistic).
        macs_before, macs_after: MACs of one example.
        attempts: each solve and measurement of the correction loop (budget scale, predicted, measured).
        table_s: seconds spent measuring latency tables (0 when they came from the cache).
        from_cache: per runtime, whether its table was read from the cache.
        accuracy: left for the caller (e.g. a benchmark) to fill after fine-tuning.
    """

    objective: str
    runtimes: list[str]
    target_speedup: float | None
    budget_ms: dict[str, float]
    groups: list[dict[str, Any]]
    base_ms: dict[str, float]
    predicted_ms: dict[str, float]
    measured_dense_ms: dict[str, float]
    measured_ms: dict[str, float]
    measured_speedup: dict[str, float]
    predicted_speedup: dict[str, float]
    prediction_error: dict[str, float]
    macs_before: int | None = None
    macs_after: int | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    table_s: float = 0.0
    from_cache: dict[str, bool] = field(default_factory=dict)
    accuracy: float | None = None

    def widths(self) -> str:
        """``name kept/units`` for every group whose width changed."""
        return ", ".join(f"{g['name']} {g['kept']}/{g['units']}" for g in self.groups if g["kept"] != g["units"])

    def table(self) -> str:
        """The plan and, per runtime, predicted vs measured latency."""
        lines = [f"latency-aware allocation: {self.objective}", f"plan: {self.widths() or 'unchanged'}"]
        if self.macs_before:
            lines.append(f"MACs: {_k(self.macs_before)} -> {_k(self.macs_after)} "
                         f"({(self.macs_after or 0) / self.macs_before:.3f}x)")
        if self.accuracy is not None:
            lines.append(f"accuracy: {self.accuracy:.4f}")
        for r in self.runtimes:
            lines.append(
                f"{r}: budget {self.budget_ms[r]:.2f} ms; predicted {self.predicted_ms[r]:.2f} ms "
                f"({self.predicted_speedup[r]:.2f}x), measured {self.measured_ms[r]:.2f} ms vs dense "
                f"{self.measured_dense_ms[r]:.2f} ms ({self.measured_speedup[r]:.2f}x); prediction error "
                f"{self.prediction_error[r]:+.1%}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


@dataclass
class PruneReport:
    """Per-layer and whole-model effect of a pruning call.

    Attributes:
        method: the config's kind (``"Magnitude"``, ``"NM"``, ``"Channel"``).
        layers: one row per pruned parameter.
        params_before: all parameters of the model before.
        params_after: all parameters after (smaller only for structured pruning).
        nonzeros_before: nonzero parameters before.
        nonzeros_after: nonzero parameters after.
        macs_before: dense MACs for ``example_inputs`` before (``None`` when no inputs were given).
        macs_after: after; for masks, dense MACs minus the MACs of the zeroed weights of pruned layers.
        extra: method-specific numbers (thresholds, the schedule's steps, ...).
        latency: the plan and predicted vs measured latency of a latency-aware channel allocation
            (``Channel(allocation="latency")``), else None.
    """

    method: str
    layers: list[LayerReport] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    nonzeros_before: int = 0
    nonzeros_after: int = 0
    macs_before: int | None = None
    macs_after: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    latency: LatencyPlan | None = None

    @property
    def sparsity(self) -> float:
        """Fraction of zeros over the pruned layers' parameters."""
        total = sum(r.params_after for r in self.layers)
        nz = sum(r.nonzeros_after for r in self.layers)
        return 1.0 - nz / total if total else 0.0

    @property
    def compression(self) -> float:
        """``params_before / nonzeros_after``: Han et al.'s "x fewer weights"."""
        return self.params_before / self.nonzeros_after if self.nonzeros_after else float("inf")

    def layer(self, name: str) -> LayerReport:
        """The row of module ``name`` (``""`` or ``"<root>"`` for a model that is itself the layer)."""
        for r in self.layers:
            if r.name == name or (name == ROOT_NAME and r.name == ""):
                return r
        raise KeyError(f"no pruned layer {name!r}; pruned: {[display_name(r.name) for r in self.layers]}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (layers as dicts, with ``sparsity`` and ``kept`` included)."""
        d = dataclasses.asdict(self)
        for row, r in zip(d["layers"], self.layers):
            row["sparsity"] = r.sparsity
            row["kept"] = r.kept
        d["sparsity"] = self.sparsity
        d["compression"] = self.compression
        return d

    def table(self) -> str:
        """A plain-text table: one line per layer and a total line."""
        head = ["layer", "kind", "shape before", "shape after", "params", "nonzeros", "sparsity", "MACs"]
        lines = [head]
        for r in self.layers:
            macs = "" if r.macs_before is None else f"{_k(r.macs_before)} -> {_k(r.macs_after)}"
            lines.append(
                [
                    display_name(r.name),
                    r.kind,
                    _shape(r.shape_before),
                    _shape(r.shape_after),
                    f"{_k(r.params_before)} -> {_k(r.params_after)}",
                    f"{_k(r.nonzeros_before)} -> {_k(r.nonzeros_after)}",
                    f"{r.sparsity:.2%}",
                    macs,
                ]
            )
        macs = "" if self.macs_before is None else f"{_k(self.macs_before)} -> {_k(self.macs_after)}"
        lines.append(
            [
                "total",
                self.method,
                "",
                "",
                f"{_k(self.params_before)} -> {_k(self.params_after)}",
                f"{_k(self.nonzeros_before)} -> {_k(self.nonzeros_after)}",
                f"{1 - self.nonzeros_after / max(self.params_after, 1):.2%}",
                macs,
            ]
        )
        widths = [max(len(str(row[i])) for row in lines) for i in range(len(head))]
        out = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines]
        out.insert(1, "  ".join("-" * w for w in widths))
        if self.nonzeros_after:
            out.append(f"compression (params before / nonzeros after): {self.compression:.2f}x")
        if self.latency is not None:
            out.append(self.latency.table())
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()


def _k(n: int | None) -> str:
    if n is None:
        return "?"
    if n >= 10_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 10_000:
        return f"{n / 1e3:.1f}k"
    return str(n)


def _shape(s: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in s)


def count_model(model: nn.Module) -> tuple[int, int]:
    """``(params, nonzeros)`` over all parameters, reading masked (parametrized) weights as they act."""
    from slimtorch.metrics.counting import effective_parameters

    params = nonzeros = 0
    for _, t in effective_parameters(model):
        params += t.numel()
        nonzeros += int(torch.count_nonzero(t))
    return params, nonzeros
