"""Numeric guards: NaN/inf weights are an error, not a model.

A model whose weights hold NaN or inf computes garbage for every input, and every technique applied to it
(pruning scores, quantization ranges, k-means centroids) silently inherits the garbage. The entry points
(``prune_``, ``quantize_``, weight sharing, ``slimtorch.save``, the trainer) call :func:`check_finite_weights`
first and raise :class:`NonFiniteError` naming the tensors.
"""

from __future__ import annotations

import torch
from torch import nn

from slimtorch.core.errors import SlimtorchError


class NonFiniteError(SlimtorchError):
    """A model's weights (or a training loss) hold NaN or inf."""


def non_finite_tensors(model: nn.Module) -> list[str]:
    """Names of the floating-point parameters holding NaN or inf, and of the buffers holding NaN.

    Infinity in a buffer is a legitimate sentinel (an observer's running min/max before its first batch, an
    additive attention mask), so buffers are refused only for NaN.
    """
    bad = []
    for name, t in model.named_parameters():
        if t.is_floating_point() and t.device.type != "meta" and not bool(torch.isfinite(t).all()):
            bad.append(name)
    for name, t in model.named_buffers():
        if t.is_floating_point() and t.device.type != "meta" and bool(torch.isnan(t).any()):
            bad.append(name)
    return bad


def check_finite_weights(model: nn.Module, what: str) -> None:
    """Raise :class:`NonFiniteError` if ``model`` has a NaN/inf weight; ``what`` names the operation refused.

    Args:
        model: the model handed to the operation.
        what: e.g. ``"prune_"``, ``"slimtorch.save"`` (used in the message).
    """
    bad = non_finite_tensors(model)
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise NonFiniteError(
            f"{what}: the model's weights hold NaN or inf in {bad[:5]}{more}; such a model computes nothing "
            "useful, so it is refused. Retrain it (a diverged run: lower the learning rate) or reload a good "
            "checkpoint"
        )
