"""A latency model measured on the target runtime: per channel group, latency as a function of its width.

For every prunable group ``g`` (a set of coupled channels, :mod:`.graph`) the whole model is timed with
only that group narrowed to a handful of widths ``w`` (every other group at full width), on the real input
shapes, the batch, the thread count and the runtime of the deployment, each variant timed round-robin
with the unpruned model in one run (:func:`slimtorch.metrics.measure_latencies`). The difference of
medians is the group's latency change ``d_g(w) = T(model with g at w) - T(dense)`` (``d_g(n_g) = 0``),
interpolated linearly between the measured widths. A plan keeping ``w_g`` units of every group is
predicted by one of two combinations of the per-group curves:

    additive:  T(plan) ~= T(dense) + sum_g d_g(w_g)
    product:   T(plan) ~= T(dense) * prod_g (1 + d_g(w_g) / T(dense))

The additive model counts a layer's saving once for its input group and once for its output group: a
convolution costs about ``c_in * c_out``, so halving both saves 3/4 of it, not 1/2 + 1/2. On ResNet-20 (ORT,
batch 32) it predicted 2.5x the measured saving of whole plans. The product model charges each group's
relative saving on what the others left (halving both: ``(1 - 1/2)(1 - 1/2) = 1/4`` of a lone layer), which
is exact for one layer and closer for chains; it is additive in ``log T``, so the same knapsack solves it.
(This is the latency-lookup idea of HALP, Shen et al. 2022, "Structural Pruning via Latency-Saliency Knapsack",
NeurIPS, measured here in context instead of per layer, so that fusions, layout changes and the shapes
of neighbouring layers are in the measurement). The model ignores interactions between groups (two
narrow neighbours share one layer's time); how far it is off is measured for each final plan and
reported (``prediction_error``).

Measurements are cached on disk per (model signature, runtime, threads, batch, CPU, library versions) in
``$SLIMTORCH_CACHE/latency`` (default ``~/.cache/slimtorch/latency``); files are written to a temporary
name and renamed, so a concurrent or interrupted run never leaves a half-written table.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

#: ``measurer(models, inputs, runtime, threads, repeats) -> [median ms per model]``; the models are timed
#: in one run so their differences are meaningful. The default is :func:`default_measurer`.
LatencyMeasurer = Callable[[list[nn.Module], Any, str, int, int], list[float]]

#: Ways to combine the per-group curves into a plan's latency (:meth:`LatencyTable.predict`).
COMBINE = ("product", "additive")
#: A group alone never takes the latency below this fraction of the base in the product model (a measured
#: curve below ``-T`` is noise, and a factor <= 0 has no logarithm).
MIN_FACTOR = 0.05


def factor(delta_ms: float, base_ms: float) -> float:
    """``1 + delta / base``, at least :data:`MIN_FACTOR`: a group's latency factor in the product model."""
    return max(MIN_FACTOR, 1.0 + delta_ms / base_ms) if base_ms > 0 else 1.0


#: Bump when the table's layout or the measuring protocol changes, so old caches are ignored.
TABLE_VERSION = 1


def default_measurer(models: list[nn.Module], inputs: Any, runtime: str, threads: int, repeats: int) -> list[float]:
    """Medians of :func:`slimtorch.metrics.measure_latencies` (round-robin blocks; CPU-time clock at one
    thread, where it excludes other processes' time slices on a shared machine, wall clock otherwise)."""
    from slimtorch.metrics import measure_latencies

    clock = "cpu" if threads == 1 else "wall"
    return measure_latencies(models, inputs, runtime=runtime, threads=threads, warmup=3, repeats=repeats,
                             clock=clock)


@dataclass
class GroupCurve:
    """Latency change of one group as a function of its kept units.

    Attributes:
        name: the group's name (``ChannelGroup.name``).
        n_units: units of the unpruned group.
        widths: measured kept-unit counts, ascending; the last is ``n_units``.
        delta_ms: ``T(model with the group at widths[i]) - T(dense)``, 0 at full width.
    """

    name: str
    n_units: int
    widths: list[int]
    delta_ms: list[float]

    def at(self, keep: float) -> float:
        """``d(keep)``, linearly interpolated between measured widths (clamped outside them)."""
        return float(np.interp(keep, self.widths, self.delta_ms))


@dataclass
class LatencyTable:
    """Measured latency model of one model on one runtime (see the module docstring).

    Attributes:
        runtime: ``torch``, ``onnxruntime`` or ``onnxruntime-int8``.
        threads: intra-op threads of the measurement.
        batch: batch size of the timed inputs.
        cpu: the CPU it was measured on.
        base_ms: median latency of the unpruned model.
        curves: one :class:`GroupCurve` per group, in the graph's order.
        key: the cache key it is stored under.
        center: the widths every other group had while one group was varied (``None``: the unpruned
            model); ``base_ms`` is the latency of that plan and every curve is 0 at the center's width.
        dense_ms: the unpruned model's latency in the same runs (equal to ``base_ms`` without a center).
    """

    runtime: str
    threads: int
    batch: int
    cpu: str
    base_ms: float
    curves: list[GroupCurve]
    key: str = ""
    center: list[int] | None = None
    dense_ms: float = 0.0
    measure_s: float = 0.0
    from_cache: bool = field(default=False, compare=False)

    def predict(self, keeps: Sequence[float], combine: str = "product") -> float:
        """A plan's predicted latency (ms) from ``T = base_ms`` (the center's latency) and the groups' changes:
        ``T + sum_g d_g(keeps[g])`` (``"additive"``) or ``T * prod_g (1 + d_g(keeps[g]) / T)`` (``"product"``)."""
        if len(keeps) != len(self.curves):
            raise ValueError(f"a plan needs one width per group: {len(self.curves)} groups, {len(keeps)} widths")
        if combine not in COMBINE:
            raise ValueError(f"combine: {combine!r} is not one of {list(COMBINE)}")
        deltas = [c.at(k) for c, k in zip(self.curves, keeps)]
        if combine == "additive":
            return self.base_ms + sum(deltas)
        return self.base_ms * float(np.prod([factor(d, self.base_ms) for d in deltas]))

    def log_saving(self, g: int, keep: float) -> float:
        """``-log(1 + d_g(keep) / T)``: group ``g``'s saving in the product model, additive over groups."""
        return -float(np.log(factor(self.curves[g].at(keep), self.base_ms)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("from_cache")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyTable:
        curves = [GroupCurve(**c) for c in d["curves"]]
        return cls(**{k: v for k, v in d.items() if k not in ("curves", "from_cache")}, curves=curves)


def measure_widths(n_units: int, allowed: Sequence[int], points: int) -> list[int]:
    """The kept-unit counts to measure for a group: ``points`` of the ``allowed`` counts spread evenly from
    the smallest to ``n_units`` (all of them when there are at most ``points``), ascending, ``n_units`` last."""
    grid = sorted({int(a) for a in allowed if 0 < a <= n_units} | {n_units})
    if len(grid) <= points:
        return grid
    idx = np.unique(np.round(np.linspace(0, len(grid) - 1, points)).astype(int))
    return [grid[i] for i in idx]


def model_signature(model: nn.Module, inputs: Any) -> str:
    """Architecture fingerprint: class, every parameter's and buffer's name and shape, the input shapes
    (weights do not matter for latency, shapes do)."""
    h = hashlib.sha1(type(model).__qualname__.encode())
    for n, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(f"{n}:{tuple(t.shape)}:{t.dtype};".encode())
    for t in inputs if isinstance(inputs, (tuple, list)) else (inputs,):
        h.update(f"in:{tuple(t.shape)}:{t.dtype};".encode())
    return h.hexdigest()[:16]


def cache_key(signature: str, runtime: str, threads: int, batch: int, cpu: str, widths: list[list[int]],
              repeats: int, center: Sequence[int] | None = None) -> str:
    """Hash of everything a table depends on: model signature, runtime, threads, batch, CPU, the widths
    measured, repeats, and the torch / onnxruntime versions."""
    import onnxruntime

    doc = {"v": TABLE_VERSION, "sig": signature, "runtime": runtime, "threads": threads, "batch": batch,
           "cpu": cpu, "widths": widths, "repeats": repeats, "center": list(center) if center else None,
           "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}
    return hashlib.sha1(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]


def cache_path(key: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the table with ``key`` is stored (``$SLIMTORCH_CACHE/latency/<key>.json`` by default)."""
    if cache_dir is None:
        from slimtorch.data.paths import cache_dir as default_dir

        cache_dir = default_dir() / "latency"
    return Path(cache_dir) / f"{key}.json"


def load_table(path: Path) -> LatencyTable | None:
    """The table stored at ``path``, or None when missing or unreadable (it is then measured again)."""
    try:
        table = LatencyTable.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None
    table.from_cache = True
    return table


def save_table(table: LatencyTable, path: Path) -> None:
    """Write ``table`` atomically (temporary file, then rename); an unwritable cache only costs time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table.to_dict(), indent=1))
        os.replace(tmp, path)
    except OSError:
        pass


def measure_table(
    dense: nn.Module,
    variant: Callable[[int, int], nn.Module],
    names: Sequence[str],
    n_units: Sequence[int],
    widths: list[list[int]],
    inputs: Any,
    runtime: str,
    threads: int = 1,
    repeats: int = 15,
    measurer: LatencyMeasurer | None = None,
    cpu: str = "",
    progress: bool = False,
    center: Sequence[int] | None = None,
    center_model: nn.Module | None = None,
) -> LatencyTable:
    """Measure a :class:`LatencyTable`.

    Args:
        dense: the unpruned model (eval mode).
        variant: ``variant(g, keep)`` -> a copy of ``dense`` with group ``g`` at ``keep`` units and every other
            group at its ``center`` width (full width without a center).
        names, n_units: the groups' names and sizes.
        widths: per group, the kept-unit counts to measure (from :func:`measure_widths`).
        inputs: the timed inputs (the deployment batch).
        runtime, threads, repeats: what :func:`default_measurer` (or ``measurer``) is asked for.
        measurer: the timing function (injected in tests; default :func:`default_measurer`).
        cpu: label stored with the table.
        progress: show a tqdm bar over the groups.
        center, center_model: linearise around this plan (its widths, and the model pruned to it) instead
            of the unpruned model: a group's curve is then measured with the other groups at the plan's
            widths, which captures how neighbouring groups share a layer's time near the plan.
    """
    import statistics
    import time

    measure = measurer or default_measurer
    t0 = time.perf_counter()
    bases: list[float] = []
    curves: list[GroupCurve] = []
    it: Any = range(len(names))
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"latency table ({runtime})", leave=False)
    mid = list(center) if center is not None else list(n_units)
    ref = center_model if center is not None else None
    denses: list[float] = []
    for g in it:
        ws = [w for w in widths[g] if w != mid[g]]
        if not ws:
            curves.append(GroupCurve(names[g], n_units[g], [mid[g]], [0.0]))
            continue
        models = [dense, *([ref] if ref is not None else []), *[variant(g, w) for w in ws]]
        ms = measure(models, inputs, runtime, threads, repeats)
        denses.append(ms[0])
        c_ms = ms[1] if ref is not None else ms[0]
        bases.append(c_ms)
        pts = sorted([*zip(ws, [m - c_ms for m in ms[len(models) - len(ws):]]), (mid[g], 0.0)])
        curves.append(GroupCurve(names[g], n_units[g], [w for w, _ in pts], [d for _, d in pts]))
    if not bases:
        ms = measure([dense, *([ref] if ref is not None else [])], inputs, runtime, threads, repeats)
        denses, bases = [ms[0]], [ms[-1]]
    batch = int(inputs.shape[0]) if isinstance(inputs, torch.Tensor) else int(inputs[0].shape[0])
    return LatencyTable(runtime, threads, batch, cpu, float(statistics.median(bases)), curves,
                        center=list(center) if center is not None else None,
                        dense_ms=float(statistics.median(denses)), measure_s=time.perf_counter() - t0)
