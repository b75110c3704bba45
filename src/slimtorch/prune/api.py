"""``prune_(model, config)``: one in-place verb, dispatching on the config's type through a registry.

A pruning method is a config class plus a handler::

    @register_pruner(MyConfig, name="mine")          # name: the CLI's --method value (optional)
    def prune_mine(model, config, example_inputs=None, data=None) -> PruneReport: ...

The handler changes ``model`` in place and returns a :class:`PruneReport`.

Command line (``slimtorch prune --method NAME``): a config registered with a ``name`` is offered there;
the CLI builds it with ``Config.from_dict`` (the recipes' parser) from ``--set key=value`` and the
common flags, so configs carry no argparse code and a new method needs no CLI code.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from slimtorch.core.config import Config
from slimtorch.core.finetune import FitFn
from slimtorch.core.registry import Registry, TypeRegistry
from slimtorch.prune.report import PruneReport

Inputs = torch.Tensor | tuple[torch.Tensor, ...]
PrunerFn = Callable[..., PruneReport]

#: Config type -> handler. Looked up along the config's MRO, so a subclass reuses its parent's handler.
PRUNERS: TypeRegistry[PrunerFn] = TypeRegistry("pruner")
#: CLI method name -> config type (``slimtorch prune --method NAME``).
METHODS: Registry[type[Config]] = Registry("prune method")


def register_pruner(config_type: type[Config], name: str | None = None) -> Callable[[PrunerFn], PrunerFn]:
    """Decorator registering ``handler(model, config, example_inputs=None, data=None) -> PruneReport``.

    Args:
        config_type: the config class the handler accepts.
        name: if given, the method name the CLI offers (``--method name``, options through ``--set``).
    """

    def deco(handler: PrunerFn) -> PrunerFn:
        if config_type in PRUNERS and PRUNERS.find(config_type) is not handler:
            raise ValueError(f"a pruner for {config_type.__name__} is already registered")
        if name is not None:
            METHODS.register(name, config_type, overwrite=True)
        PRUNERS.register(config_type, handler)
        return handler

    return deco


def prune_(
    model: nn.Module,
    config: Config,
    example_inputs: Inputs | None = None,
    data: Any = None,
    *,
    fit_fn: FitFn | None = None,
    calib_data: Any = None,
) -> PruneReport:
    """Prune ``model`` in place as ``config`` says and report what changed.

    Args:
        model: any module.
        config: a pruning config (``Magnitude``, ``NM``, ``Channel``, or one you registered).
        example_inputs: a batch of inputs (tensor or tuple); needed for MACs in the report and by
            methods that trace the model.
        data: what the method needs beyond weights: training data for schedules that fine-tune
            (``Iterative``/``AGP``; a Dataset, an iterable of ``(x, y)`` batches, or for ``Iterative`` a
            callable ``finetune(model, round)``), calibration batches for data-driven importance.
        calib_data: another name for ``data`` (calibration batches of ``SparseGPT``/``Wanda``, as
            ``quantize_`` calls them); give one of the two.
        fit_fn: the training loop those schedules run on ``data`` (``slimtorch.train.fit``'s signature:
            ``fit_fn(model, data, epochs, callbacks=[...], **kwargs)``); default: ``slimtorch.train.fit``.
            Passed to handlers that accept a ``fit_fn`` argument.

    Returns:
        A :class:`PruneReport` (per-layer shapes or sparsity, params, nonzeros, MACs).
    """
    if calib_data is not None:
        if data is not None and data is not calib_data:
            raise ValueError("prune_ got both data= and calib_data=; they are the same argument, give one")
        data = calib_data
    handler = _handler_for(config)
    # handlers that train take fit_fn; the others (e.g. structured surgery) never see it
    params = inspect.signature(handler).parameters
    takes_fit = "fit_fn" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    extra = {"fit_fn": fit_fn} if fit_fn is not None and takes_fit else {}
    return handler(model, config, example_inputs=example_inputs, data=data, **extra)


def _handler_for(config: Any) -> PrunerFn:
    handler = PRUNERS.find(type(config))
    if handler is not None:
        return handler
    known = sorted(c.__name__ for c in PRUNERS)
    raise ValueError(
        f"no pruner is registered for {type(config).__name__}; known configs: {known}. Register one "
        "with @slimtorch.prune.register_pruner(YourConfig)"
    )
