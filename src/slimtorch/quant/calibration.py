"""Calibration batches: accept any iterable of tensors or ``(inputs, targets)`` pairs, validate each.

Errors name the offending batch (0-based index) so a bad sample is easy to find: an empty iterable,
a batch whose per-sample shape differs from the model's ``input_shape`` (or from the first batch),
and batches holding NaN or inf are refused. After calibration, :func:`warn_degenerate_ranges` warns about
activation quantizers whose observed range is empty (all-zero or constant calibration data), naming the
layers: such a quantizer maps every value to one code and the model's accuracy collapses silently.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from slimtorch.core.errors import SlimtorchError

#: An observed range narrower than this (relative to its magnitude, or absolute near zero) is degenerate.
DEGENERATE_SPAN = 1e-8


def batch_inputs(batch: Any) -> Any:
    """The model input of a batch: the tensor itself, or the first element of a tuple/list/dict."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    if isinstance(batch, dict):
        for key in ("input", "inputs", "x", "input_ids"):
            if key in batch:
                return batch[key]
    raise SlimtorchError(
        f"a calibration batch must be a tensor or an (inputs, targets) pair, got {type(batch).__name__}"
    )


def iter_calibration(calib_data: Iterable[Any] | None, model: nn.Module | None = None,
                     num_batches: int | None = None) -> Iterator[torch.Tensor]:
    """Yield validated model inputs from ``calib_data``.

    Args:
        calib_data: iterable of batches (tensor or ``(x, y)``); a single tensor is one batch.
        model: if it has ``input_shape`` (per-sample shape), every batch must match it.
        num_batches: stop after this many batches.

    Raises:
        SlimtorchError: no data, a wrong shape or a non-finite value (naming the batch index).
    """
    if calib_data is None:
        raise SlimtorchError("this scheme needs calibration data: pass calib_data=<iterable of batches>")
    if isinstance(calib_data, torch.Tensor):
        calib_data = [calib_data]
    expected = tuple(getattr(model, "input_shape", ()) or ()) or None
    first_shape: tuple[int, ...] | None = None
    n = 0
    for i, batch in enumerate(calib_data):
        if num_batches is not None and i >= num_batches:
            break
        x = batch_inputs(batch)
        if not isinstance(x, torch.Tensor):
            raise SlimtorchError(f"calibration batch {i}: inputs must be a tensor, got {type(x).__name__}")
        sample = tuple(x.shape[1:])
        # models such as MLPs flatten their input, so only the number of values per sample must agree
        if expected is not None and sample != expected and math.prod(sample) != math.prod(expected):
            raise SlimtorchError(
                f"calibration batch {i} has shape {tuple(x.shape)}: per-sample shape {sample} does not match "
                f"the model's input_shape {expected}"
            )
        if first_shape is None:
            first_shape = sample
        elif expected is None and x.dim() != len(first_shape) + 1:
            raise SlimtorchError(
                f"calibration batch {i} has shape {tuple(x.shape)} but batch 0 had per-sample shape "
                f"{first_shape}"
            )
        if x.is_floating_point() and not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).sum())
            raise SlimtorchError(f"calibration batch {i} contains {bad} NaN/inf value(s)")
        n += 1
        yield x
    if n == 0:
        raise SlimtorchError("calibration data is empty: give at least one batch")


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
