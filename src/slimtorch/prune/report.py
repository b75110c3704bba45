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
