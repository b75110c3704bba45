"""Calibration batches: any iterable of batches in the forms of :func:`slimtorch.core.batches.split_batch`.

A batch may be a tensor, an ``(inputs, targets)`` pair, a tuple of positional inputs with a target, or a
dict of named inputs (a Hugging Face ``BatchEncoding``: ``input_ids``, ``attention_mask``, ...; ``labels``
is the target and is not fed). Every named input reaches the model: :func:`iter_calibration_inputs`
yields :class:`~slimtorch.core.batches.ModelInputs`, called as ``inputs(model)``.

Errors name the offending batch (0-based index) and input so a bad sample is easy to find: an empty
iterable, a batch whose per-sample shape differs from the model's ``input_shape`` (or, for a positional
input, from batch 0), and any input tensor holding NaN or inf are refused.
After calibration, :func:`warn_degenerate_ranges` warns about activation quantizers whose observed
range is empty (all-zero or constant calibration data), naming the layers: such a quantizer maps every
value to one code and the model's accuracy collapses silently.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from slimtorch.core.batches import ModelInputs, split_batch
from slimtorch.core.errors import SlimtorchError

#: An observed range narrower than this (relative to its magnitude, or absolute near zero) is degenerate.
DEGENERATE_SPAN = 1e-8


def batch_inputs(batch: Any) -> ModelInputs:
    """The model inputs of a batch (every positional and named input; the target dropped).

    Raises:
        SlimtorchError: for a batch of another form, naming its type.
    """
    try:
        return split_batch(batch)[0]
    except SlimtorchError as e:
        raise SlimtorchError(f"a calibration batch must be a tensor, an (inputs, targets) pair or a dict of "
                             f"named inputs: {e}") from None


def _check_batch(i: int, inputs: ModelInputs, expected: tuple[int, ...] | None,
                 first: dict[str, int]) -> None:
    """Shape and finiteness checks of every input tensor of batch ``i`` (``first``: ranks of batch 0)."""
    tensors = list(inputs.tensors())
    if not tensors:
        raise SlimtorchError(f"calibration batch {i} holds no input tensor")
    sizes = {t.shape[0] for _, t in tensors if t.dim()}
    if len(sizes) > 1:
        raise SlimtorchError(f"calibration batch {i}: its inputs disagree on the batch size: "
                             f"{ {n: tuple(t.shape) for n, t in tensors} }")
    for k, (name, x) in enumerate(tensors):
        where = f"calibration batch {i}" + (f" input {name!r}" if len(tensors) > 1 or inputs.kwargs else "")
        sample = tuple(x.shape[1:])
        # ``input_shape`` describes the main (first) input; MLPs flatten it, so only the count must agree
        if (k == 0 and expected is not None and sample != expected
                and math.prod(sample) != math.prod(expected)):
            raise SlimtorchError(f"{where} has shape {tuple(x.shape)}: per-sample shape {sample} does not match "
                                 f"the model's input_shape {expected}")
        if expected is None and name in first and x.dim() != first[name]:
            raise SlimtorchError(f"{where} has shape {tuple(x.shape)} but in batch 0 it had "
                                 f"{first[name]} dimensions")
        if x.is_floating_point() and not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).sum())
            raise SlimtorchError(f"{where} contains {bad} NaN/inf value(s)")
        first.setdefault(name, x.dim())


def iter_calibration_inputs(calib_data: Iterable[Any] | None, model: nn.Module | None = None,
                            num_batches: int | None = None) -> Iterator[ModelInputs]:
    """Yield the validated model inputs of each batch of ``calib_data`` (all of them, positional and named).

    Args:
        calib_data: iterable of batches (see the module docstring); a single tensor is one batch.
        model: if it has ``input_shape`` (per-sample shape of its first input), every batch must match it.
        num_batches: stop after this many batches.

    Raises:
        SlimtorchError: no data, a wrong shape or a non-finite value (naming the batch index and input).
    """
    if calib_data is None:
        raise SlimtorchError("this scheme needs calibration data: pass calib_data=<iterable of batches>")
    if isinstance(calib_data, (torch.Tensor, dict)):
        calib_data = [calib_data]
    expected = tuple(getattr(model, "input_shape", ()) or ()) or None
    first: dict[str, int] = {}
    n = 0
    for i, batch in enumerate(calib_data):
        if num_batches is not None and i >= num_batches:
            break
        try:
            inputs = split_batch(batch)[0]
        except SlimtorchError as e:
            raise SlimtorchError(f"calibration batch {i}: {e}") from None
        _check_batch(i, inputs, expected, first)
        n += 1
        yield inputs
    if n == 0:
        raise SlimtorchError("calibration data is empty: give at least one batch")


def iter_calibration(calib_data: Iterable[Any] | None, model: nn.Module | None = None,
                     num_batches: int | None = None) -> Iterator[torch.Tensor]:
    """Yield the one input tensor of each batch, for methods that feed a model with a single input.

    Same checks as :func:`iter_calibration_inputs`. A batch with several inputs (e.g. ``input_ids`` and
    ``attention_mask``) is refused rather than silently reduced to its first input.

    Raises:
        SlimtorchError: as :func:`iter_calibration_inputs`, or a batch with more than one input.
    """
    for i, inputs in enumerate(iter_calibration_inputs(calib_data, model, num_batches)):
        names = [name for name, _ in inputs.tensors()]
        if len(inputs.args) + len(inputs.kwargs) != 1:
            raise SlimtorchError(f"calibration batch {i} has {len(names)} inputs {names}; this method feeds the "
                                 "model one input tensor only (use Int8Static/Int8Dynamic, which feed every "
                                 "named input)")
        yield inputs.first


class DegenerateRangeWarning(UserWarning):
    """Calibration saw a zero or constant activation range for some layers."""


def is_degenerate(min_val: torch.Tensor, max_val: torch.Tensor) -> bool:
    """Whether an observed ``[min_val, max_val]`` range is empty: every channel's span is ~0 (or no data)."""
    lo, hi = min_val.detach().float(), max_val.detach().float()
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        return True
    span = hi - lo
    scale = torch.maximum(hi.abs(), lo.abs()).clamp_min(1.0)
    return bool((span <= DEGENERATE_SPAN * scale).all())


def warn_degenerate_ranges(ranges: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> list[str]:
    """Warn (one :class:`DegenerateRangeWarning`) naming every entry of ``ranges`` whose range is degenerate.

    Args:
        ranges: a label (``"input of layer 'fc1'"``) -> the observer's ``(min_val, max_val)``.

    Returns:
        The labels warned about.
    """
    import warnings

    bad = [f"{label} [{float(lo.min()):g}, {float(hi.max()):g}]" for label, (lo, hi) in ranges.items()
           if is_degenerate(lo, hi)]
    if bad:
        more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
        warnings.warn(
            f"calibration saw a zero or constant activation range for {'; '.join(bad[:8])}{more}: these "
            "quantizers map every value to one code, so accuracy will collapse. Check the calibration data "
            "(all zeros? wrong normalisation?)", DegenerateRangeWarning, stacklevel=3)
    return [b.split(" [")[0] for b in bad]
