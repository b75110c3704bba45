"""Hugging Face ``Conv1D`` (GPT-2's projections) as the ``nn.Linear`` it is, so it can be quantized.

``transformers.pytorch_utils.Conv1D`` computes ``y = x @ W + b`` with ``W`` stored ``(in, out)``: a linear
layer with a transposed weight, not a convolution. It is no subclass of ``nn.Linear``, so without this
module the int8 schemes silently skipped every attention and MLP projection of GPT-2 and quantized only
``lm_head``. :func:`conv1d_to_linear_` swaps each ``Conv1D`` for an ``nn.Linear`` holding ``W.T``; the
outputs are identical, and the layer then goes through the ordinary ``QuantLinear`` path (weight scales
per output channel, i.e. per column of the original ``W``).

``transformers`` is never imported here: the class is looked up among the modules already imported (a
model holding a ``Conv1D`` has imported it).
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from slimtorch.core.selection import set_submodule


def conv1d_type() -> type[nn.Module] | None:
    """``transformers.pytorch_utils.Conv1D`` if transformers is imported, else None."""
    mod = sys.modules.get("transformers.pytorch_utils")
    return getattr(mod, "Conv1D", None) if mod is not None else None


def linear_from_conv1d(conv: nn.Module) -> nn.Linear:
    """An ``nn.Linear`` computing what ``conv`` (a HF ``Conv1D``, weight ``(in, out)``) computes."""
    n_in, n_out = conv.weight.shape
    lin = nn.Linear(n_in, n_out, bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.t())  # (out, in)
        if conv.bias is not None:
            lin.bias.copy_(conv.bias)
    lin.weight.requires_grad_(conv.weight.requires_grad)
    lin.train(conv.training)
    return lin


def conv1d_to_linear_(model: nn.Module) -> list[str]:
    """Replace every HF ``Conv1D`` in ``model`` by an equivalent ``nn.Linear``; returns their names."""
    cls = conv1d_type()
    if cls is None:
        return []
    names = [n for n, m in model.named_modules() if isinstance(m, cls)]
    for name in names:
        set_submodule(model, name, linear_from_conv1d(model.get_submodule(name)))
    return names
