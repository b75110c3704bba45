"""Safe model storage: weights in safetensors, architecture as JSON in the file's metadata.

``save(model, path)`` writes one ``.safetensors`` file whose metadata holds the zoo name, its keyword
arguments and the structural attributes of every layer whose shape changed (e.g. a conv that channel
pruning narrowed), so ``load(path)`` rebuilds a zoo model, pruned or not, without user code.

Models that are not from the zoo load into a skeleton the caller passes (``load(path, model=net)``).
Pickles are never unpickled implicitly: a ``.pt``/``.pth`` full-model file is refused unless the caller
passes ``trust_pickle=True``; plain state dicts are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from slimtorch.core.errors import SlimtorchError
from slimtorch.io.architectures import SPEC_ATTR, create

FORMAT = "slimtorch"
FORMAT_VERSION = 1
#: File name used when ``save``/``load`` are given a directory.
MODEL_FILE = "model.safetensors"

#: Attributes that describe a layer's structure. Recorded when they differ from a freshly created zoo
#: model; extend it for custom layers whose forward reads such an attribute.
STRUCTURAL_ATTRS: list[str] = [
    "in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
    "normalized_shape", "num_embeddings", "embedding_dim", "num_heads", "embed_dim", "head_dim",
    "num_groups", "num_channels", "use_res", "kdim", "vdim",
]


#: metadata key -> ``loader(path, model)`` for files that a float skeleton cannot take as they are (quantized
#: models): :func:`load` hands such a file to the loader a higher layer registered (``slimtorch.quant``
#: registers ``"quant"`` when imported).
SPEC_LOADERS: dict[str, Callable[[Path, nn.Module | None], nn.Module]] = {}

#: What to import to read files with each metadata key, for the error when no loader is registered yet.
_LOADER_MODULES = {"quant": "slimtorch.quant"}


def register_spec_loader(key: str, loader: Callable[[Path, nn.Module | None], nn.Module]) -> None:
    """Make :func:`load` hand files whose metadata holds ``key`` to ``loader(path, model)``."""
    SPEC_LOADERS[key] = loader


def resolve_model_file(path: str | os.PathLike[str]) -> Path:
    """``path`` itself if it is a file, ``path/model.safetensors`` if it is a run directory."""
    p = Path(path)
    if p.is_dir():
        p = p / MODEL_FILE
    return p


def _structure(model: nn.Module) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        attrs = {}
        for a in STRUCTURAL_ATTRS:
            v = getattr(type(m), a, None)
            if isinstance(v, property):  # derived values (e.g. head_dim) are not stored
                continue
            v = getattr(m, a, None)
            if isinstance(v, (bool, int, tuple, list)) and not isinstance(v, torch.Tensor):
                attrs[a] = list(v) if isinstance(v, tuple) else v
        if attrs:
            out[name] = attrs
    return out


def _spec(model: nn.Module) -> dict[str, Any]:
    spec: dict[str, Any] = {"format": FORMAT, "version": FORMAT_VERSION}
    zoo = getattr(model, SPEC_ATTR, None)
    if zoo is not None:
        spec["model"] = zoo
        fresh = _structure(create(zoo["name"], **zoo["kwargs"]))
        now = _structure(model)
        spec["changed"] = {k: v for k, v in now.items() if fresh.get(k) != v}
    return spec


def save(model: nn.Module, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> Path:
    """Save ``model``'s weights and architecture to a safetensors file, atomically.

    Args:
        model: any module; zoo models (from :func:`slimtorch.models.create`) reload without code.
        path: a ``.safetensors`` file, or a directory (then ``path/model.safetensors``).
        metadata: extra JSON-serialisable information kept in the file (e.g. training metrics).

    Returns:
        The path written.
    """
    p = Path(path)
    if p.suffix != ".safetensors":
        p.mkdir(parents=True, exist_ok=True)
        p = p / MODEL_FILE
    p.parent.mkdir(parents=True, exist_ok=True)
    if any(hasattr(m, "parametrizations") for m in model.modules()):
        raise SlimtorchError(
            "the model still carries parametrizations (e.g. pruning masks); call "
            "slimtorch.prune.make_permanent_(model) before saving"
        )
    # safetensors refuses shared storage; clone so tied weights (e.g. embeddings) are saved twice.
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    spec = _spec(model)
    if metadata:
        spec["metadata"] = metadata
    return write_safetensors(p, tensors, spec)


def model_spec(model: nn.Module) -> dict[str, Any]:
    """The JSON spec :func:`save` stores for ``model`` (format, zoo name and kwargs, changed layers)."""
    return _spec(model)


def default_file_mode() -> int:
    """The mode ``open()`` would give a new file under the current umask (usually 0o644).

    ``tempfile.mkstemp`` creates 0o600 files; an atomically renamed temp file keeps that mode, so files we
    publish that way get this mode first, as a plain ``open(path, "w")`` would have given them.
    """
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_safetensors(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor],
                      spec: dict[str, Any]) -> Path:
    """Write ``tensors`` with ``spec`` as the ``slimtorch`` metadata entry, atomically."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp-", suffix=".safetensors")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"slimtorch": json.dumps(spec)})
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, p)  # atomic: a crash leaves either the old file or the new one
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return p


def model_from_spec(spec: dict[str, Any], path: str | os.PathLike[str] = "") -> nn.Module:
    """Rebuild the (possibly pruned) zoo model a spec describes, with uninitialised weights."""
    if "model" not in spec:
        raise SlimtorchError(
            f"{path or 'the file'} holds no architecture spec (it was not saved from a zoo model); pass the "
            "skeleton: slimtorch.load(path, model=MyNet())"
        )
    zoo = spec["model"]
    model = create(zoo["name"], **zoo["kwargs"])
    _apply_structure(model, spec.get("changed", {}))
    return model


def read_spec(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON spec stored in a slimtorch safetensors file."""
    p = resolve_model_file(path)
    if not p.exists():
        raise SlimtorchError(f"no model file at {p}")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise SlimtorchError(f"{p} is not a readable safetensors file: {e}") from None
    if "slimtorch" not in meta:
        return {}
    return json.loads(meta["slimtorch"])


def _apply_structure(model: nn.Module, changed: dict[str, dict[str, Any]]) -> None:
    for name, attrs in changed.items():
        m = model.get_submodule(name) if name else model
        for a, v in attrs.items():
            setattr(m, a, tuple(v) if isinstance(v, list) else v)


def _resize_like(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Replace every parameter/buffer whose shape differs from ``state`` by an empty one of the new shape."""
    for key, t in state.items():
        mod_name, _, attr = key.rpartition(".")
        try:
            m = model.get_submodule(mod_name) if mod_name else model
        except AttributeError:
            continue
        cur = getattr(m, attr, None)
        if isinstance(cur, torch.Tensor) and cur.shape != t.shape:
            new = torch.empty(t.shape, dtype=t.dtype)
            if isinstance(cur, nn.Parameter):
                setattr(m, attr, nn.Parameter(new, requires_grad=cur.requires_grad))
            else:
                m._buffers[attr] = new


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load ``state`` into ``model``, resizing layers whose shapes differ (pruned checkpoints)."""
    _resize_like(model, state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SlimtorchError(
            f"weights do not fit the model {type(model).__name__}: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}"
        )
    return model


def load(path: str | os.PathLike[str], model: nn.Module | None = None, *, trust_pickle: bool = False,
         map_location: str = "cpu") -> nn.Module:
    """Load a model saved by :func:`save` (or a state dict / pickle, see below).

    Args:
        path: a ``.safetensors`` file or a run directory holding ``model.safetensors``; a ``.pt``/
            ``.pth`` file is read as a state dict with ``weights_only=True``.
        model: skeleton to load into; needed when the file holds no zoo spec or is a plain state dict.
        trust_pickle: allow unpickling a full pickled model. Pickles run arbitrary code: only set this
            for files you trust.
        map_location: device to load onto.
    """
    p = resolve_model_file(path)
    if not p.exists():
        raise SlimtorchError(f"no model file at {p} (expected a .safetensors file or a run directory)")
    if p.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        return _load_torch_file(p, model, trust_pickle, map_location)
    spec = read_spec(p)
    if "sparse" in spec:
        raise SlimtorchError(
            f"{p} was written by slimtorch.prune.save_sparse; read it with slimtorch.prune.load_sparse"
        )
    meta = spec.get("metadata") or {}
    for key in meta:
        if key in SPEC_LOADERS:
            return SPEC_LOADERS[key](p, model).eval()
        if key in _LOADER_MODULES:
            raise SlimtorchError(f"{p} holds a {key}ized model: import {_LOADER_MODULES[key]} first (it registers "
                                 f"the loader), or use {_LOADER_MODULES[key]}.load_{key}ized(path)")
    from safetensors.torch import load_file

    state = load_file(str(p), device=map_location)
    if model is None:
        model = model_from_spec(spec, p)
    load_state_into(model, state)
    return model.eval()


def _load_torch_file(p: Path, model: nn.Module | None, trust_pickle: bool, map_location: str) -> nn.Module:
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:
        if not trust_pickle:
            raise SlimtorchError(
                f"{p} is a pickle that holds more than tensors (e.g. a whole model). Unpickling runs "
                "arbitrary code, so it is refused; if you trust the file pass trust_pickle=True, or "
                "re-save it with slimtorch.save()"
            ) from e
        obj = torch.load(p, map_location=map_location, weights_only=False)
    if isinstance(obj, nn.Module):
        return obj.eval()
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise SlimtorchError(f"{p} holds a {type(obj).__name__}, not a state dict or a model")
    if model is None:
        raise SlimtorchError(f"{p} is a plain state dict; pass the skeleton: slimtorch.load(path, model=MyNet())")
    return load_state_into(model, obj).eval()
