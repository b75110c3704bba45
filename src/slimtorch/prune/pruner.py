"""Drive mask pruning over time: :class:`MaskPruner` (a plain object and a ``fit`` callback).

Use it from your own loop::

    pruner = MaskPruner(model, Magnitude(0.9, schedule=AGP(frequency=100, num_prunes=20)))
    for x, y in loader:
        loss = F.cross_entropy(model(x), y); loss.backward(); opt.step(); opt.zero_grad()
        pruner.step()                        # prunes at t0, t0 + dt, ..., t0 + n dt
    make_permanent_(model)

or hand it to ``slimtorch.train.fit(..., callbacks=[pruner])`` (``on_train_begin``/``on_step_end``), or
let ``prune_(model, config, data=...)`` do either for you. :func:`iterative_prune_` runs Han et al.'s
prune -> fine-tune loop with your fine-tune function or with ``fit``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from slimtorch.core.finetune import FitFn, resolve_fit
from slimtorch.core.registry import TypeRegistry
from slimtorch.prune.masks import apply_mask_
from slimtorch.prune.report import LayerReport, PruneReport, count_model
from slimtorch.prune.schedules import AGP, Iterative, OneShot, Schedule

Inputs = torch.Tensor | tuple[torch.Tensor, ...]


class MaskMethod(Protocol):
    """What a mask config provides (``Magnitude``, ``NM``)."""

    @property
    def active_schedule(self) -> Schedule: ...

    def select(self, model: nn.Module) -> list[tuple[str, nn.Module]]: ...

    def compute_masks(
        self, layers: list[tuple[str, nn.Module]], t: int, schedule: Schedule | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]: ...


class MaskPruner:
    """Applies a mask config's schedule to ``model``.

    Args:
        model: the model to prune in place.
        config: a mask config (``Magnitude`` or ``NM``).
        example_inputs: a batch used to count MACs for the report (optional).
        total_steps: optimizer steps of the training run, to size an ``AGP`` schedule whose
            ``num_prunes`` is ``None`` (``fit`` passes it through ``on_train_begin``).
    """

    def __init__(
        self,
        model: nn.Module,
        config: MaskMethod,
        example_inputs: Inputs | None = None,
        total_steps: int | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.layers = config.select(model)
        self.schedule = config.active_schedule
        if isinstance(self.schedule, AGP) and total_steps is not None:
            self.schedule = self.schedule.resolved(total_steps)
        self.example_inputs = example_inputs
        self.t = 0
        self.started = False
        self.extra: dict[str, Any] = {}
        self._before = _snapshot(model, self.layers, example_inputs)

    @property
    def kind(self) -> str:
        return type(self.config).__name__.lower()

    def prune_at(self, t: int) -> float:
        """Prune to the schedule's sparsity at time ``t``; returns the sparsity of the pruned layers."""
        masks, extra = self.config.compute_masks(self.layers, t, self.schedule)
        for name, module in self.layers:
            apply_mask_(module, masks[name])
        self.extra = extra
        return self.sparsity()

    def sparsity(self) -> float:
        """Current fraction of zeros over the selected layers' weights."""
        total = sum(m.weight.numel() for _, m in self.layers)
        nz = sum(int(torch.count_nonzero(m.weight.detach())) for _, m in self.layers)
        return 1.0 - nz / total if total else 0.0

    # ---- step-driven (AGP) use -------------------------------------------------------------------
    def start(self) -> None:
        """Prune at the current step if it is a pruning step (``t0 = 0``); called once, before training."""
        self.started = True
        if self._due(self.t):
            self.prune_at(self.t)

    def step(self) -> float:
        """Advance one optimizer step; prunes when the schedule says so. Returns the layers' sparsity."""
        if not self.started:
            self.start()
        self.t += 1
        if self._due(self.t):
            self.prune_at(self.t)
        return self.sparsity()

    def _due(self, t: int) -> bool:
        if isinstance(self.schedule, AGP):
            if self.schedule.num_prunes is None:
                raise ValueError(
                    "AGP(num_prunes=None) needs the run length: MaskPruner(..., total_steps=N), or pass "
                    "the pruner to slimtorch.train.fit(callbacks=[pruner])"
                )
            return self.schedule.is_pruning_step(t)
        return t == 0 and not isinstance(self.schedule, Iterative)

    # ---- fit callback hooks ----------------------------------------------------------------------
    def on_train_begin(self, state: Any) -> None:
        if isinstance(self.schedule, AGP):
            self.schedule = self.schedule.resolved(state.total_steps)
        self.t = state.step  # a resumed run continues its schedule
        self.start()

    def on_step_end(self, state: Any) -> None:
        self.t = state.step
        if self._due(self.t):
            self.prune_at(self.t)

    # ---- reporting -------------------------------------------------------------------------------
    def report(self) -> PruneReport:
        """What pruning changed so far (per layer and totals)."""
        return _report(
            self.model,
            self.layers,
            self._before,
            self.kind,
            self.example_inputs,
            {**self.extra, "schedule": self.schedule.to_dict() | {"type": type(self.schedule).__name__}},
        )


def iterative_prune_(
    model: nn.Module,
    config: MaskMethod,
    finetune: Callable[[nn.Module, int], Any] | Any,
    example_inputs: Inputs | None = None,
    fit_fn: FitFn | None = None,
) -> PruneReport:
    """Han et al. 2015: for round ``k = 1..R``: prune to ``s_k``, then fine-tune.

    Args:
        model: pruned in place.
        config: a mask config whose schedule is :class:`Iterative`.
        finetune: ``finetune(model, round)`` (your loop), or training data for ``fit_fn`` run for
            ``schedule.epochs`` epochs with ``schedule.finetune`` keyword arguments.
        example_inputs: for MACs in the report.
        fit_fn: the training loop for data (``fit``'s signature); default: ``slimtorch.train.fit``.
    """
    schedule = config.active_schedule
    if not isinstance(schedule, Iterative):
        raise ValueError(f"iterative_prune_ needs schedule=Iterative(...), got {type(schedule).__name__}")
    pruner = MaskPruner(model, config, example_inputs)
    step = (
        finetune
        if callable(finetune) and not hasattr(finetune, "__getitem__")
        else _fit_fn(finetune, schedule, fit_fn)
    )
    history = []
    for k in range(1, schedule.rounds + 1):
        s = pruner.prune_at(k)
        step(model, k)
        history.append({"round": k, "sparsity": s})
    report = pruner.report()
    report.extra["rounds"] = history
    return report


def run_mask_pruning(
    model: nn.Module,
    config: MaskMethod,
    example_inputs: Inputs | None = None,
    data: Any = None,
    fit_fn: FitFn | None = None,
) -> PruneReport:
    """What ``prune_`` does for a mask config: runs its schedule (see :data:`SCHEDULE_DRIVERS`)."""
    driver = SCHEDULE_DRIVERS.get(type(config.active_schedule))  # an unknown schedule type names the known ones
    return driver(model, config, example_inputs, data, fit_fn)


def _drive_oneshot(
    model: nn.Module, config: MaskMethod, example_inputs: Inputs | None, data: Any, fit_fn: FitFn | None
) -> PruneReport:
    pruner = MaskPruner(model, config, example_inputs)
    pruner.prune_at(0)
    return pruner.report()


def _drive_iterative(
    model: nn.Module, config: MaskMethod, example_inputs: Inputs | None, data: Any, fit_fn: FitFn | None
) -> PruneReport:
    if data is None:
        raise ValueError(
            "schedule=Iterative fine-tunes between rounds: pass data= (training data for "
            "slimtorch.train.fit, "
            "or a callable finetune(model, round))"
        )
    return iterative_prune_(model, config, data, example_inputs, fit_fn)


def _drive_agp(
    model: nn.Module, config: MaskMethod, example_inputs: Inputs | None, data: Any, fit_fn: FitFn | None
) -> PruneReport:
    if data is None:
        raise ValueError(
            "schedule=AGP prunes while training: pass data= (training data; slimtorch.train.fit drives it) "
            "or call MaskPruner(model, config).step() from your own loop"
        )
    schedule = config.active_schedule
    pruner = MaskPruner(model, config, example_inputs)
    _fit(model, data, schedule.epochs, schedule.finetune, [pruner], fit_fn)  # type: ignore[attr-defined]
    return pruner.report()


#: Schedule type -> how ``prune_`` runs it (a subclass without its own driver uses its base's). A new schedule
#: registers its driver with ``SCHEDULE_DRIVERS.register(MySchedule, drive)``.
SCHEDULE_DRIVERS: TypeRegistry[Callable[..., PruneReport]] = TypeRegistry("schedule driver")
SCHEDULE_DRIVERS.register(OneShot, _drive_oneshot)
SCHEDULE_DRIVERS.register(Iterative, _drive_iterative)
SCHEDULE_DRIVERS.register(AGP, _drive_agp)


def _fit_fn(data: Any, schedule: Iterative, fit_fn: FitFn | None = None) -> Callable[[nn.Module, int], Any]:
    def step(model: nn.Module, k: int) -> None:
        _fit(model, data, schedule.epochs, schedule.finetune, fit_fn=fit_fn)

    return step


def _fit(
    model: nn.Module,
    data: Any,
    epochs: int,
    kwargs: dict[str, Any],
    callbacks: list[Any] | None = None,
    fit_fn: FitFn | None = None,
) -> None:
    if epochs <= 0:
        return
    # ``train`` sits above ``prune`` in the layer order: the loop is passed in (``fit_fn``) or is the
    # default ``slimtorch.train`` installs (see slimtorch.core.finetune), never imported from here.
    fit = resolve_fit(fit_fn)
    kw = {"progress": False, **kwargs}
    fit(model, data, epochs, callbacks=list(callbacks or []) + list(kw.pop("callbacks", [])), **kw)


def _snapshot(
    model: nn.Module, layers: list[tuple[str, nn.Module]], example_inputs: Inputs | None
) -> dict[str, Any]:
    params, nonzeros = count_model(model)
    snap: dict[str, Any] = {
        "params": params,
        "nonzeros": nonzeros,
        "layers": {
            n: (tuple(m.weight.shape), int(torch.count_nonzero(m.weight.detach()))) for n, m in layers
        },
        "macs": None,
        "layer_macs": {},
    }
    if example_inputs is not None:
        from slimtorch.metrics.macs import count_macs

        snap["macs"], snap["layer_macs"] = count_macs(model, example_inputs, per_layer=True)
    return snap


def _report(
    model: nn.Module,
    layers: list[tuple[str, nn.Module]],
    before: dict[str, Any],
    kind: str,
    example_inputs: Inputs | None,
    extra: dict[str, Any],
) -> PruneReport:
    params, nonzeros = count_model(model)
    rows = []
    saved_macs = 0
    for name, m in layers:
        shape, nz_before = before["layers"][name]
        numel = m.weight.numel()
        nz = int(torch.count_nonzero(m.weight.detach()))
        macs = before["layer_macs"].get(name)
        # every weight element of a Linear/Conv is used equally often, so MACs scale with its density
        macs_after = None if macs is None else int(round(macs * nz / numel))
        if macs is not None:
            saved_macs += macs - macs_after
        rows.append(
            LayerReport(
                name, kind, shape, tuple(m.weight.shape), numel, numel, nz_before, nz, macs, macs_after
            )
        )
    macs_before = before["macs"]
    return PruneReport(
        method=kind,
        layers=rows,
        params_before=before["params"],
        params_after=params,
        nonzeros_before=before["nonzeros"],
        nonzeros_after=nonzeros,
        macs_before=macs_before,
        macs_after=None if macs_before is None else macs_before - saved_macs,
        extra=extra,
    )
