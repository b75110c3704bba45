"""Parameter counts, nonzero counts and bytes on disk.

Counts are taken over the *effective* weights: a module with ``torch.nn.utils.parametrize``
parametrizations (e.g. a pruning mask ``w * m``) contributes the weight its forward uses, not the
stored ``original``. Tensors that belong to the parametrizations themselves (masks, scales) are
not parameters of the deployed model and are not counted.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from slimtorch.core.errors import SlimtorchError


def effective_parameters(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(fqn, tensor)`` for every parameter as the forward sees it, each shared tensor once.

    Parametrized tensors are computed (``module.weight`` runs the parametrization), so a masked
    weight shows its zeros.
    """
    seen: set[int] = set()
    internal: set[int] = set()  # modules inside some ``module.parametrizations`` (originals, masks)
    for name, m in model.named_modules():
        if id(m) in internal:
            continue
        prefix = f"{name}." if name else ""
        if parametrize.is_parametrized(m):
            internal.update(id(sub) for sub in m.parametrizations.modules())
            for pname in m.parametrizations:
                with torch.no_grad():
                    t = getattr(m, pname)  # runs the parametrization: the weight the forward uses
                yield prefix + pname, t
        for pname, p in m.named_parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                yield prefix + pname, p


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (shared tensors counted once, parametrized weights as used)."""
    return sum(t.numel() for _, t in effective_parameters(model))


def count_nonzero(model: nn.Module) -> int:
    """Number of nonzero parameter elements; masked (parametrized) weights count their zeros."""
    return sum(int(torch.count_nonzero(t)) for _, t in effective_parameters(model))


def sparsity(model: nn.Module) -> float:
    """Fraction of parameter elements that are zero, ``1 - nonzero / params``."""
    total = count_params(model)
    return 1.0 - count_nonzero(model) / total if total else 0.0


def file_size(path: str | os.PathLike[str]) -> int:
    """Bytes on disk of a file, or the total of every file under a directory (e.g. ONNX + external data)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    raise SlimtorchError(f"cannot measure the size of {p}: no such file or directory")


def permanent_copy(model: nn.Module) -> nn.Module:
    """A deep copy with every parametrization baked into a plain parameter (the deployable model)."""
    model = copy.deepcopy(model)
    for m in list(model.modules()):
        if parametrize.is_parametrized(m):
            # deepcopy shares the injected ``Parametrized<Type>`` class with the original, and removing a
            # parametrization deletes the property from that class: give the copy a class of its own.
            cls = type(m)
            m.__class__ = type(cls.__name__, cls.__bases__, {k: v for k, v in cls.__dict__.items()
                                                             if k not in ("__dict__", "__weakref__")})
            for pname in list(m.parametrizations):
                parametrize.remove_parametrizations(m, pname, leave_parametrized=True)
    return model


def model_size_bytes(model: nn.Module) -> int:
    """Size of the file :func:`slimtorch.save` writes for ``model`` (saved to a temp file and measured).

    A parametrized model is measured as its permanent copy (parametrizations baked in), i.e. the
    dense fp32 (or whatever dtype) file a user would ship.
    """
    from slimtorch.io.storage import save

    if any(parametrize.is_parametrized(m) for m in model.modules()):
        model = permanent_copy(model)
    with tempfile.TemporaryDirectory(prefix="slimtorch-size-") as d:
        return file_size(save(model, Path(d) / "model.safetensors"))
