"""Structured channel pruning: ``prune_(model, Channel(ratio=0.5))`` returns a smaller dense model.

Steps: trace the model into groups of coupled channels (:mod:`.graph`), score every removable unit
(:mod:`.importance`), choose how many units each group loses (uniform ratio, global ranking, per-layer
overrides, ``round_to``, or a MAC target), then cut every coupled layer (:mod:`.surgery`).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterable
from dataclasses import InitVar, dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from slimtorch.core.batches import ModelInputs, output_tensor, split_batch
from slimtorch.core.config import Config, check_choice, check_positive, check_range
from slimtorch.core.labels import IGNORE_INDEX, align, forward_batch
from slimtorch.core.selection import ROOT_NAME, FilterFn, as_patterns, check_overrides, override_for
from slimtorch.prune.api import register_pruner
from slimtorch.prune.report import LayerReport, PruneReport
from slimtorch.prune.structured.graph import ChannelGroup, DependencyGraph, build_dependency_graph
from slimtorch.prune.structured.importance import IMPORTANCE, NEEDS_GRADIENTS, CoupledTensor
from slimtorch.prune.structured.surgery import WeightSlice, find_surgery, slice_tensor_

ALLOCATIONS = ("uniform", "global")


@dataclass
class Channel(Config):
    """Remove whole channels (filters, attention heads, hidden units) through a dependency graph.

    Args:
        ratio: fraction of the units of each group removed (``allocation="uniform"``), or of all
            units ranked together (``"global"``); in ``[0, 1)``. Each group keeps
            ``floor(n * (1 - ratio))`` units, rounded to the nearest multiple of ``round_to`` (ties up),
            and at least one (or ``round_to``).
        target_macs: if set, the ratio is searched (bisection, then group-by-group refinement) until
            the model's MACs are ``<=`` this: a fraction of the current MACs if ``<= 1`` (``0.5`` =
            half), else an absolute count. ``ratio`` is then ignored.
        target_speedup: if set (> 1), the ratio is searched the same way until the pruned model runs
            at least this many times faster than the unpruned one on every runtime in
            ``latency_runtimes``, *measured* (alternating runs, median, CPU-time clock) on a batch of
            ``latency_batch`` copies of the example input. Latency is far from proportional to MACs on
            CPUs (thin layers are memory-bound; runtimes block channels by 8 or 16), so this is how to
            ask for a real speedup. With ``target_macs`` too, both must hold.
        latency_runtimes: runtimes of ``target_speedup`` (``"torch"``, ``"onnxruntime"``).
        latency_batch, latency_threads, latency_repeats: the latency measurement's batch size, intra-op
            threads and timed runs per model.
        importance: criterion name from :data:`IMPORTANCE` (``l1``, ``l2``, ``bn_scale``, ``taylor``,
            ``fpgm``, ``lamp``, ``random``). ``taylor`` needs calibration batches as ``data=``.
        round_to: kept channel counts are multiples of this (e.g. 8 for SIMD-friendly widths), the
            nearest one to what the ratio asks for. (Rounding up, as before, kept a 16-channel layer at 16
            until the ratio passed 0.5, so a MAC target was met by cutting the wide layers instead; on
            ResNet-20 at half the MACs that plan lost 0.26 pt more than Torch-Pruning's over three seeds.)
        exclude: fnmatch patterns of module names whose channels are kept (opaque layers). The model's
            outputs never change size, so the classifier / LM head keeps its output width by default.
        overrides: ``{pattern: ratio}`` per-layer ratios; a group takes the first pattern that
            matches a layer whose output channels are in the group (e.g. ``"layer3.*"``) and is then
            pruned at that ratio (also under ``global``).
        allocation: ``"uniform"`` (same ratio in every group) or ``"global"`` (rank all units by score
            normalized by its group's mean score, remove the lowest).
        group_reduce: how a unit's scores over its coupled tensors combine: ``"mean"`` or ``"sum"``.
        tracer: ``"concrete"`` (record a real forward; default), ``"fx"`` (``torch.fx.symbolic_trace``
            first; an error naming the module if fx cannot trace it) or ``"auto"`` (fx, else concrete).
        max_batches: calibration batches used by gradient criteria (None = all of ``data``; a
            ``Dataset`` is batched by 64, shuffled with ``seed``).
        seed: seed of the ``random`` criterion.
        filter_fn: ``filter_fn(module, fqn) -> bool`` asked about each prunable layer; a layer it refuses
            keeps its channels, as if excluded.
        ignore: the former name of ``exclude``, kept as an alias: its patterns are added to ``exclude``
            (``to_dict`` writes ``exclude``; recipes with ``ignore:`` still load).
    """

    #: Former field names still accepted by the constructor and ``from_dict``.
    aliases: ClassVar[dict[str, str]] = {"ignore": "exclude"}

    ratio: float = 0.5
    target_macs: float | None = None
    target_speedup: float | None = None
    latency_runtimes: tuple[str, ...] = ("torch",)
    latency_batch: int = 32
    latency_threads: int = 1
    latency_repeats: int = 15
    importance: str = "l1"
    round_to: int = 1
    exclude: tuple[str, ...] = ()
    overrides: dict[str, float] = field(default_factory=dict)
    allocation: str = "uniform"
    group_reduce: str = "mean"
    tracer: str = "concrete"
    max_batches: int | None = None
    seed: int = 0
    filter_fn: FilterFn | None = field(default=None, repr=False)
    ignore: InitVar[tuple[str, ...] | str | None] = None

    def __post_init__(self, ignore: tuple[str, ...] | str | None = None) -> None:
        check_range("ratio", self.ratio, 0.0, 1.0, hi_open=True)
        if self.target_macs is not None:
            check_positive("target_macs", self.target_macs)
        if self.target_speedup is not None and not self.target_speedup > 1:
            raise ValueError(f"target_speedup must be > 1 (a speedup factor), got {self.target_speedup!r}")
        if isinstance(self.latency_runtimes, str):
            self.latency_runtimes = (self.latency_runtimes,)
        self.latency_runtimes = tuple(self.latency_runtimes)
        if not self.latency_runtimes:
            raise ValueError("latency_runtimes must name at least one runtime")
        for rt in self.latency_runtimes:
            check_choice("latency_runtimes", rt, ("torch", "onnxruntime"))
        for name in ("latency_batch", "latency_threads", "latency_repeats"):
            check_positive(name, getattr(self, name))
        IMPORTANCE.get(self.importance)  # unknown names list the valid ones
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise ValueError(f"round_to must be an integer >= 1, got {self.round_to!r}")
        exclude = as_patterns(self.exclude)
        self.exclude = exclude + tuple(p for p in as_patterns(ignore) if p not in exclude)
        check_overrides(self.overrides)
        check_choice("allocation", self.allocation, ALLOCATIONS)
        check_choice("group_reduce", self.group_reduce, ("mean", "sum"))
        check_choice("tracer", self.tracer, ("auto", "fx", "concrete"))
        if self.max_batches is not None:
            check_positive("max_batches", self.max_batches)


# ---- scores --------------------------------------------------------------------------------------
def _owner(model: nn.Module, key: tuple[str, str, str]) -> tuple[nn.Module, str]:
    """(module, attribute) of a space key of kind "param"."""
    mod, _, attr = key[1].rpartition(".")
    return (model.get_submodule(mod) if mod else model), attr


def group_slices(model: nn.Module, group: ChannelGroup) -> list[tuple[WeightSlice, np.ndarray]]:
    """Every weight slice coupled in ``group`` with the ``(n_units, k)`` positions it is indexed by."""
    out = []
    for key, pos in group.members.items():
        if key[0] == "module":
            m = model.get_submodule(key[1]) if key[1] else model
            for ws in find_surgery(type(m)).tensors(m, key[2]):  # type: ignore[union-attr]
                out.append((ws, pos))
        else:
            m, attr = _owner(model, key)
            out.append((WeightSlice("param", getattr(m, attr), int(key[2])), pos))
    return out


def _take(t: torch.Tensor, ws: WeightSlice, pos: np.ndarray) -> torch.Tensor:
    """Rows ``(n_units, -1)`` of ``ws.view(t)`` at ``pos`` (``(n, k)`` positions, ``block`` entries each)."""
    v = ws.view(t).movedim(ws.dim, 0)
    idx = torch.as_tensor(pos)[..., None] * ws.block + torch.arange(ws.block)  # (n, k, block)
    n = pos.shape[0]
    return v[idx.reshape(-1)].reshape(n, -1)


def coupled_tensors(
    model: nn.Module, group: ChannelGroup, grads: dict[int, list[torch.Tensor]] | None = None
) -> list[CoupledTensor]:
    """The group's :class:`CoupledTensor` list (what importance criteria score)."""
    out = []
    for ws, pos in group_slices(model, group):
        values = _take(ws.param.detach().double(), ws, pos)
        g = [_take(gr.double(), ws, pos) for gr in (grads or {}).get(id(ws.param), [])]
        out.append(CoupledTensor(values, ws.role, g))
    return out


def _batches(data: Any, max_batches: int | None, seed: int = 0) -> Iterable[tuple[ModelInputs, Any]]:
    from torch.utils.data import DataLoader, Dataset

    if isinstance(data, Dataset):  # shuffled (reproducibly): datasets are often sorted by class
        data = DataLoader(data, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    for i, b in enumerate(data):
        if max_batches is not None and i >= max_batches:
            return
        inputs, target = split_batch(b)  # every named input (input_ids, attention_mask, ...) reaches the model
        if target is None:
            raise ValueError("taylor importance needs batches with targets in data=: (inputs, targets) pairs "
                             f"or dicts with 'labels'; got {type(b).__name__}")
        yield inputs, target


def collect_gradients(
    model: nn.Module, data: Any, max_batches: int | None = None, seed: int = 0
) -> dict[int, list[torch.Tensor]]:
    """Per-batch gradients of the loss for every parameter: ``{id(param): [grad_b, ...]}``.

    The loss is cross-entropy on the logits (a ``ModelOutput``'s ``logits``; ``(B, T, V)`` flattened for
    language models, shifted for Hugging Face causal LMs, labels -100 left out), or the model's own loss
    when its ``forward`` takes ``labels`` (Hugging Face heads). The model runs in eval mode (BatchNorm
    statistics are left untouched).
    """
    import torch.nn.functional as F

    from slimtorch.metrics.accuracy import flatten_logits

    if data is None:
        raise ValueError("importance='taylor' needs calibration batches: prune_(..., data=loader)")
    params = [p for p in model.parameters()]
    flags = [p.requires_grad for p in params]
    was_training = model.training
    grads: dict[int, list[torch.Tensor]] = {id(p): [] for p in params}
    model.eval()
    try:
        for p in params:
            p.requires_grad_(True)
        n = 0
        for inputs, y in _batches(data, max_batches, seed):
            model.zero_grad(set_to_none=True)
            out, loss = forward_batch(model, inputs, y, with_labels=True)
            if loss is None:
                logits, targets = flatten_logits(*align(model, output_tensor(out), y))
                loss = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
            loss.backward()
            for p in params:
                if p.grad is not None:
                    grads[id(p)].append(p.grad.detach().clone())
            n += 1
        if n == 0:
            raise ValueError("data= gave no batches for the taylor importance")
    finally:
        model.zero_grad(set_to_none=True)
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        model.train(was_training)
    return grads


def score_groups(
    model: nn.Module, graph: DependencyGraph, config: Channel, data: Any = None
) -> list[torch.Tensor]:
    """One score tensor ``(n_units,)`` per group of ``graph`` under ``config.importance``."""
    fn = IMPORTANCE.get(config.importance)
    grads = (
        collect_gradients(model, data, config.max_batches, config.seed)
        if config.importance.lower() in NEEDS_GRADIENTS
        else None
    )
    scores = []
    for g in graph.groups:
        s = fn(coupled_tensors(model, g, grads), reduce=config.group_reduce, seed=config.seed)
        scores.append(torch.as_tensor(s, dtype=torch.float64))
    return scores


# ---- allocation ----------------------------------------------------------------------------------
def _unit_width(group: ChannelGroup) -> int:
    """Channels per unit in the group's output spaces (1 for plain channels, head_dim for heads)."""
    ks = [p.shape[1] for k, p in group.members.items() if k[0] == "module" and k[2] == "out"]
    return max(ks) if ks else 1


def _group_ratio(group: ChannelGroup, config: Channel, ratio: float) -> tuple[float, bool]:
    r = override_for(group.producers or group.modules, config.overrides)
    return (ratio, False) if r is None else (r, True)


def _min_keep(group: ChannelGroup, config: Channel) -> int:
    return min(group.n_units, config.round_to if _unit_width(group) == 1 else 1)


def _round_keep(group: ChannelGroup, keep: int, config: Channel) -> int:
    if _unit_width(group) == 1 and config.round_to > 1:
        keep = math.floor(keep / config.round_to + 0.5) * config.round_to
    return max(_min_keep(group, config), min(group.n_units, keep))


def allocate(
    graph: DependencyGraph,
    scores: list[torch.Tensor],
    config: Channel,
    ratio: float,
    warn: list[str] | None = None,
) -> list[np.ndarray]:
    """Units to remove in each group (sorted index arrays), following ``config``'s allocation.

    Uniform: group ``g`` with ``n`` units keeps ``floor(n (1 - r_g))`` (rounded to the nearest multiple of
    ``round_to``, at least one), removing its lowest-scored units. Global: scores are divided by their group's mean
    and the lowest ``floor(ratio * N)`` of all ``N`` units go, each group keeping at least one.
    """
    removed: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(graph.groups)
    pool = []
    for gi, (g, s) in enumerate(zip(graph.groups, scores)):
        r, overridden = _group_ratio(g, config, ratio)
        if config.allocation == "global" and not overridden:
            pool.append(gi)
            continue
        want = int(math.floor(g.n_units * (1.0 - r) + 1e-9))
        keep = _round_keep(g, want, config)
        if want == 0 and r > 0 and warn is not None:
            warn.append(f"ratio {r} would remove all {g.n_units} units of group '{g.name}'; keeping {keep}")
        removed[gi] = np.sort(torch.argsort(s, stable=True)[: g.n_units - keep].numpy())
    if pool:
        norm = []
        for gi in pool:
            s = scores[gi]
            m = s.mean()
            norm += [(float(v / m) if m > 0 else float(v), gi, u) for u, v in enumerate(s.tolist())]
        norm.sort()
        total = int(math.floor(sum(graph.groups[gi].n_units for gi in pool) * ratio + 1e-9))
        count = {gi: 0 for gi in pool}
        chosen: dict[int, list[int]] = {gi: [] for gi in pool}
        for _, gi, u in norm:
            if total <= 0:
                break
            g = graph.groups[gi]
            if g.n_units - count[gi] - 1 < _min_keep(g, config):
                continue
            chosen[gi].append(u)
            count[gi] += 1
            total -= 1
        for gi in pool:
            g = graph.groups[gi]
            keep = _round_keep(g, g.n_units - count[gi], config)
            removed[gi] = np.sort(np.array(chosen[gi][: g.n_units - keep], dtype=np.int64))
    return removed


# ---- surgery -------------------------------------------------------------------------------------
def apply_removal(model: nn.Module, graph: DependencyGraph, removed: list[np.ndarray]) -> None:
    """Cut ``removed[g]`` units of every group ``g`` out of ``model`` (in place; modules found by name)."""
    drop: dict[tuple[str, str, str], set[int]] = {}
    for g, units in zip(graph.groups, removed):
        if len(units) == 0:
            continue
        for key, pos in g.members.items():
            drop.setdefault(key, set()).update(pos[units].reshape(-1).tolist())
    for key, positions in drop.items():
        keep = torch.tensor(sorted(set(range(graph.space_sizes[key])) - positions), dtype=torch.long)
        if key[0] == "module":
            m = model.get_submodule(key[1]) if key[1] else model
            find_surgery(type(m)).prune(m, key[2], keep)  # type: ignore[union-attr]
        else:
            m, attr = _owner(model, key)
            slice_tensor_(m, attr, int(key[2]), keep)


# ---- handler -------------------------------------------------------------------------------------
def _example(model: nn.Module, example_inputs: Any) -> Any:
    if example_inputs is not None:
        return example_inputs
    from slimtorch.metrics.shapes import example_inputs_for

    return example_inputs_for(model)


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def _macs(model: nn.Module, ex: Any) -> int:
    from slimtorch.metrics import count_macs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return int(count_macs(model, ex))  # type: ignore[arg-type]


def _batch_of(ex: Any, n: int) -> Any:
    """``n`` copies of each example input along the batch dimension (the latency measurement's batch)."""
    if isinstance(ex, torch.Tensor):
        return ex[:1].expand(n, *ex.shape[1:]).contiguous()
    return tuple(_batch_of(t, n) for t in ex)


class _Constraints:
    """The targets a removal plan must meet: MACs at most ``max_macs`` and measured speedups at least
    ``config.target_speedup`` on each runtime. Measurements of a plan are cached (bisection revisits)."""

    def __init__(self, model: nn.Module, graph: DependencyGraph, config: Channel, ex: Any,
                 max_macs: float | None) -> None:
        self.model, self.graph, self.config, self.ex, self.max_macs = model, graph, config, ex, max_macs
        self.speedups: dict[bytes, dict[str, float]] = {}
        self.last: dict[str, float] = {}

    def pruned(self, removed: list[np.ndarray]) -> nn.Module:
        m = copy.deepcopy(self.model)
        apply_removal(m, self.graph, removed)
        return m

    def measure(self, removed: list[np.ndarray], pruned: nn.Module | None = None) -> dict[str, float]:
        """Latency speedup of the plan on every runtime (dense / pruned, measured alternately);
        ``pruned`` is the plan already applied to a copy, when the caller has one."""
        from slimtorch.metrics import compare_latency

        key = b"".join(r.astype(np.int64).tobytes() + b"|" for r in removed)
        if key not in self.speedups:
            cfg = self.config
            pruned = (pruned if pruned is not None else self.pruned(removed)).eval()
            x = _batch_of(self.ex, cfg.latency_batch)
            was_training = self.model.training
            self.model.eval()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.speedups[key] = {
                        rt: compare_latency(self.model, pruned, x, runtime=rt, threads=cfg.latency_threads,
                                            warmup=3, repeats=cfg.latency_repeats, clock="cpu")["speedup"]
                        for rt in cfg.latency_runtimes}
            finally:
                self.model.train(was_training)
        return self.speedups[key]

    def __call__(self, removed: list[np.ndarray]) -> bool:
        pruned = self.pruned(removed)  # one copy serves the MAC count and the timing
        if self.max_macs is not None and _macs(pruned, self.ex) > self.max_macs:
            return False
        if self.config.target_speedup is None:
            return True
        self.last = self.measure(removed, pruned)
        return min(self.last.values()) >= self.config.target_speedup

    def describe(self) -> str:
        parts = []
        if self.max_macs is not None:
            parts.append(f"MACs <= {int(self.max_macs)}")
        if self.config.target_speedup is not None:
            parts.append(f"speedup >= {self.config.target_speedup} on {', '.join(self.config.latency_runtimes)}")
        return " and ".join(parts)


def _search_ratio(
    graph: DependencyGraph,
    scores: list[torch.Tensor],
    config: Channel,
    meets: _Constraints,
) -> tuple[float, list[np.ndarray]]:
    """The removal that meets the targets (``meets``) with the smallest ratio, refined group by group.

    Bisection (to 1e-3) on the ratio; MACs are monotone in it because larger ratios remove supersets
    (measured latency is monotone up to timing noise). With ``round_to`` or global ranking one ratio step
    can drop several groups at once, so between the last plan that misses the targets (``lo``) and the
    first that meets them (``hi``) the groups' extra removals are added one group at a time, least
    important first, until the targets are met. A reverting pass then takes back, most important first,
    every added group the targets do not need: a cheap group added early can be made redundant by a larger
    one added later (ResNet-20 at ``round_to=8``: the 16 -> 8 stage-1 group went in first and stayed,
    landing at 0.424x MACs for a 0.5x target).
    """
    hi = 0.999
    if not meets(allocate(graph, scores, config, hi)):
        got = f" (measured speedups {', '.join(f'{k} {v:.2f}x' for k, v in meets.last.items())})" if meets.last else ""
        raise ValueError(
            f"the target ({meets.describe()}) is out of reach: even ratio {hi} misses it{got}; pinned channels "
            "and at least one unit per group remain"
        )
    lo = 0.0
    tol = 1e-3 if config.target_speedup is None else 1e-2  # latency is measured: fewer, coarser steps
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if meets(allocate(graph, scores, config, mid)):
            hi = mid
        else:
            lo = mid
    removed_lo = allocate(graph, scores, config, lo)
    removed_hi = allocate(graph, scores, config, hi)
    extra = [gi for gi in range(len(graph.groups)) if len(removed_hi[gi]) > len(removed_lo[gi])]

    def cost(gi: int) -> float:  # mean normalized score of the units the group would lose in addition
        s = scores[gi]
        units = np.setdiff1d(removed_hi[gi], removed_lo[gi])
        return float(s[units].mean() / s.mean()) if float(s.mean()) > 0 else float(s[units].mean())

    current = list(removed_lo)
    added: list[int] = []
    for gi in sorted(extra, key=cost):
        current[gi] = removed_hi[gi]
        added.append(gi)
        if len(added) == len(extra) or meets(current):  # with every group added, it is removed_hi
            break
    for gi in sorted(added[:-1], key=cost, reverse=True):  # the last one added was needed
        trial = list(current)
        trial[gi] = removed_lo[gi]
        if meets(trial):
            current = trial
    return hi, current


def _nothing_removable(model: nn.Module, graph: DependencyGraph) -> str:
    """Why ``graph`` has no channel group to prune, as a warning (the model is returned unchanged)."""
    if find_surgery(type(model)) is not None:
        return (
            f"Channel pruning removed nothing: the model is a single {type(model).__name__} layer "
            f"({ROOT_NAME}), whose input and output channels are the model's own inputs and outputs, which "
            "never change size; use Magnitude or NM to sparsify a single layer"
        )
    why = f" ({'; '.join(graph.notes)})" if graph.notes else ""
    return (
        f"Channel pruning removed nothing: no channel of {type(model).__name__} is removable; every channel "
        f"is a model input or output or is kept{why}"
    )


@register_pruner(Channel, name="channel")
def prune_channels_(
    model: nn.Module, config: Channel, example_inputs: Any = None, data: Any = None
) -> PruneReport:
    """Handler of :class:`Channel`: trace, score, allocate, cut. See :class:`Channel`.

    Args:
        model: changed in place into a smaller dense model.
        config: the :class:`Channel` config.
        example_inputs: inputs for tracing and MACs (default: zeros of ``model.input_shape``).
        data: calibration ``(x, y)`` batches for gradient criteria (``taylor``).

    Returns:
        A :class:`~slimtorch.prune.PruneReport`; ``extra`` holds the groups (units before/after),
        the final ratio, notes on kept channels and warnings.
    """
    ex = _example(model, example_inputs)
    graph = build_dependency_graph(model, ex, config.exclude, config.tracer, filter_fn=config.filter_fn)
    scores = score_groups(model, graph, config, data)
    macs_before = _macs(model, ex)
    warn: list[str] = []
    if not graph.groups:
        warn.append(_nothing_removable(model, graph))
    speedups: dict[str, float] = {}
    if config.target_macs is not None or config.target_speedup is not None:
        target = None
        if config.target_macs is not None:
            target = config.target_macs * macs_before if config.target_macs <= 1 else config.target_macs
        meets = _Constraints(model, graph, config, ex, target)
        ratio, removed = _search_ratio(graph, scores, config, meets)
        if config.target_speedup is not None:
            speedups = meets.measure(removed)
        allocate(graph, scores, config, ratio, warn)  # only for its warnings
    else:
        ratio = config.ratio
        removed = allocate(graph, scores, config, ratio, warn)
    for w in warn:
        warnings.warn(w, stacklevel=2)
    before = _shapes(model)
    params_before = sum(int(np.prod(s)) for s in before.values())
    apply_removal(model, graph, removed)
    after = _shapes(model)
    layers = []
    for name, shape in before.items():
        if after.get(name) != shape:
            n0, n1 = int(np.prod(shape)), int(np.prod(after[name]))
            layers.append(
                LayerReport(
                    name.rpartition(".")[0] if name.endswith((".weight", ".in_proj_weight")) else name,
                    "channel",
                    shape,
                    after[name],
                    n0,
                    n1,
                    n0,
                    n1,
                )
            )
    params_after = sum(int(np.prod(s)) for s in after.values())
    groups = [
        {
            "name": g.name,
            "units": g.n_units,
            "removed": int(len(r)),
            "unit_width": _unit_width(g),
            "modules": g.modules,
        }
        for g, r in zip(graph.groups, removed)
    ]
    return PruneReport(
        method="Channel",
        layers=layers,
        params_before=params_before,
        params_after=params_after,
        nonzeros_before=params_before,
        nonzeros_after=params_after,
        macs_before=macs_before,
        macs_after=_macs(model, ex),
        extra={
            "ratio": ratio,
            "importance": config.importance,
            "allocation": config.allocation,
            "groups": groups,
            "notes": graph.notes,
            "warnings": warn,
            "tracer": graph.tracer,
            "graph_build_s": graph.build_s,
            "measured_speedups": speedups,
        },
    )
