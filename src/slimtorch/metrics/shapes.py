"""Input-shape checks and example inputs built from a model's declared ``input_shape``.

Zoo models declare ``input_shape`` (without the batch dimension) and, for token models,
``input_dtype = torch.long``. Other modules may declare them too; a model without ``input_shape``
is not checked.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from slimtorch.core.errors import SlimtorchError


def _declared_shape(model: nn.Module) -> tuple[int, ...] | None:
    shape = getattr(model, "input_shape", None)
    return tuple(int(s) for s in shape) if shape is not None else None


def check_input_shape(model: nn.Module, sample: Any, batched: bool = False) -> None:
    """Raise a clear error when a data sample does not fit ``model.input_shape``.

    Images must match exactly. Token inputs (``model.input_dtype`` integral) may be shorter than the
    declared length (a causal LM accepts any context up to its ``block_size``).

    Args:
        model: the model; nothing is checked if it has no ``input_shape`` attribute.
        sample: one data item ``x`` or an ``(x, y)`` pair (e.g. ``dataset[0]``), or a batch if ``batched``.
        batched: ``sample`` carries a leading batch dimension that is ignored.

    Raises:
        SlimtorchError: naming the data's shape and the model's ``input_shape``.
    """
    expected = _declared_shape(model)
    if expected is None:
        return
    x = sample[0] if isinstance(sample, (tuple, list)) else sample
    if not isinstance(x, torch.Tensor):
        raise SlimtorchError(f"expected a tensor sample to check against the model, got {type(x).__name__}")
    got = tuple(x.shape[1:] if batched else x.shape)
    name = type(model).__name__
    dtype = getattr(model, "input_dtype", torch.float32)
    tokens = not dtype.is_floating_point
    if tokens and x.is_floating_point():
        raise SlimtorchError(f"{name} takes integer token ids but the data holds {x.dtype} tensors")
    if not tokens and not x.is_floating_point():
        raise SlimtorchError(f"{name} takes floating-point inputs but the data holds {x.dtype} tensors")
    fits = got == expected or (tokens and len(got) == len(expected)
                               and all(g <= e for g, e in zip(got, expected)))
    # Models that flatten their input first (MLPs: ``flattens_input = True``) take any shape of that size.
    if getattr(model, "flattens_input", False) and math.prod(got) == math.prod(expected):
        fits = True
    if not fits:
        rule = "at most" if tokens else "exactly"
        raise SlimtorchError(
            f"data sample shape {got} does not match the model's input_shape {expected} ({name} takes "
            f"{rule} {expected} per sample, without the batch dimension); pick a model built for this data "
            "(e.g. other in_channels/image_size) or other data"
        )


def example_inputs_for(model: nn.Module, batch_size: int = 1) -> torch.Tensor:
    """A zero tensor ``(batch_size, *model.input_shape)`` of ``model.input_dtype`` (default float32).

    Raises:
        SlimtorchError: if the model declares no ``input_shape``.
    """
    shape = _declared_shape(model)
    if shape is None:
        raise SlimtorchError(
            f"{type(model).__name__} has no input_shape attribute; pass example inputs explicitly"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return torch.zeros((batch_size, *shape), dtype=getattr(model, "input_dtype", torch.float32))
