"""Internal helpers shared by the metrics: batching any data source, eval mode, example inputs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from slimtorch.core.batches import ModelInputs, split_batch

#: What the metrics accept as example inputs: one tensor or a tuple/list of positional tensors.
Inputs = torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor] | Mapping[str, torch.Tensor]


def iter_batches(data: Dataset | Iterable[Any], batch_size: int) -> Iterator[tuple[ModelInputs, Any]]:
    """Yield ``(inputs, target)`` from a ``Dataset`` (batched here, in order) or any iterable of batches.

    A batch is anything :func:`slimtorch.core.batches.split_batch` takes with a target: an ``(x, y)`` pair,
    a tuple of inputs and a target, or a dict of named inputs (``input_ids``, ``attention_mask``, ...)
    with ``labels``. Every named input reaches the model.

    Raises:
        ValueError: if ``batch_size`` is not positive or a batch carries no target.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    source: Iterable[Any] = DataLoader(data, batch_size=batch_size, shuffle=False) if isinstance(
        data, Dataset) else data
    for batch in source:
        inputs, target = split_batch(batch)
        if target is None:
            keys = f" with keys {sorted(batch)}" if isinstance(batch, Mapping) else ""
            raise ValueError(
                f"each batch needs a target: an (inputs, targets) pair or a dict with 'labels'; got "
                f"{type(batch).__name__}{keys}"
            )
        yield inputs, target


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a module without tensors)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode and restore each one's own ``training`` flag afterwards.

    Restoring per module (not ``model.train(prev)``) keeps mixed states intact, e.g. a distiller whose
    frozen teacher stays in eval mode while the student trains.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def as_tuple(example_inputs: Inputs) -> tuple[torch.Tensor, ...]:
    """Normalise example inputs to a tuple of positional arguments."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in example_inputs):
        return tuple(example_inputs)
    raise ValueError(
        "example_inputs must be a tensor or a tuple of tensors (the model's positional arguments), got "
        f"{type(example_inputs).__name__}"
    )
