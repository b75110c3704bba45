"""Save and reload a quantized (fake-quant) model.

``save_quantized`` writes the usual slimtorch safetensors file (weights, scales, zero points, observer
state) and records the quantization config in its metadata. ``load_quantized`` rebuilds the float
model (zoo models need no code; others need a skeleton), re-applies the config's *structure* with the
preparer registered for its type (wrappers, BatchNorm folding, hooks), loads the saved tensors on top,
and freezes every quantizer, so the result computes exactly what was saved, without calibration data.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn

import slimtorch
from slimtorch.core.config import CONFIG_TYPES, Config
from slimtorch.core.errors import SlimtorchError
from slimtorch.core.registry import TypeRegistry
from slimtorch.io.storage import load_state_into, model_from_spec, read_spec, resolve_model_file
from slimtorch.quant.modules.fake_quant import FakeQuantize

#: config type -> ``prepare(model, config)`` rebuilding the quantized structure without data.
PREPARERS: TypeRegistry[Callable[[nn.Module, Config], Any]] = TypeRegistry("preparer")


def register_preparer(config_type: type[Config]) -> Callable[[Callable], Callable]:
    """Decorator registering how to rebuild a quantized structure of ``config_type`` before loading."""

    return PREPARERS.register(config_type, overwrite=True)  # a later registration replaces an earlier one


def save_quantized(model: nn.Module, path: str | os.PathLike[str], config: Config,
                   metadata: dict[str, Any] | None = None) -> Path:
    """Save a quantized ``model`` with the ``config`` that produced it (see :func:`load_quantized`)."""
    cfg = {k: v for k, v in config.to_dict().items() if not callable(v)}
    meta = {"quant": {"type": type(config).__name__, "config": cfg}, **(metadata or {})}
    return slimtorch.save(model, path, metadata=meta)


def load_quantized(path: str | os.PathLike[str], model: nn.Module | None = None) -> nn.Module:
    """Reload a model written by :func:`save_quantized`.

    Args:
        path: the ``.safetensors`` file or run directory.
        model: float skeleton for models not from the zoo.

    Raises:
        SlimtorchError: the file holds no quantization config, or its type has no registered preparer.
    """
    spec = read_spec(path)
    quant = (spec.get("metadata") or {}).get("quant")
    if not quant:
        raise SlimtorchError(f"{path} holds no quantization config; load it with slimtorch.load()")
    ctype = CONFIG_TYPES.find(quant["type"])
    if ctype is None or ctype not in PREPARERS:
        raise SlimtorchError(f"no preparer registered for quantization config {quant['type']!r}; "
                             f"known: {sorted(t.__name__ for t in PREPARERS)}")
    cfg = dict(quant["config"])
    if "target" not in cfg and any(f.name == "target" for f in dataclasses.fields(ctype)):
        # written before deployment targets existed: those files hold full 8-bit weights (x86-vnni)
        cfg["target"] = "x86-vnni"
    config = ctype.from_dict(cfg)
    if model is None:
        model = model_from_spec(spec, path, extra_ok=True)  # quantizer state is loaded after the preparer
    model.eval()
    PREPARERS.get(ctype)(model, config)
    load_state_into(model, load_file(str(resolve_model_file(path))))
    for m in model.modules():
        if isinstance(m, FakeQuantize) and not m.dynamic:
            m.observing, m.quantizing = False, True
    return model

