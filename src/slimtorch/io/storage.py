"""Safe model storage: weights in safetensors, architecture as JSON in the file's metadata.

``save(model, path)`` writes one ``.safetensors`` file whose metadata holds the zoo name, its keyword
arguments and the structural attributes of every layer whose shape changed (e.g. a conv that channel
pruning narrowed), so ``load(path)`` rebuilds a zoo model, pruned or not, without user code.

Hugging Face models are saved with their config class, config and changed structure, and reload without
code; ``load(folder)`` also reads a Hugging Face model folder (``config.json`` + safetensors), see
:mod:`slimtorch.io.hf`. Other models that are not from the zoo load into a skeleton the caller passes
(``load(path, model=net)``).
Pickles are never unpickled implicitly: a ``.pt``/``.pth`` full-model file is refused unless the caller
passes ``trust_pickle=True``; plain state dicts are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from slimtorch.core.errors import SlimtorchError
from slimtorch.core.numerics import check_finite_weights
from slimtorch.io import hf
from slimtorch.io.architectures import SPEC_ATTR, create
from slimtorch.io.atomic import atomic_write, default_file_mode, ensure_dir, storage_error  # noqa: F401
from slimtorch.io.spec import STRUCTURAL_ATTRS, SpecError, build_from_spec  # noqa: F401  (re-exported)
from slimtorch.io.structure import apply_structure, resize_like, structure_of

FORMAT = "slimtorch"
FORMAT_VERSION = 1
#: File name used when ``save``/``load`` are given a directory.
MODEL_FILE = "model.safetensors"

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


def _spec(model: nn.Module) -> dict[str, Any]:
    spec: dict[str, Any] = {"format": FORMAT, "version": FORMAT_VERSION}
    zoo = getattr(model, SPEC_ATTR, None)
    if zoo is not None and "factory" in zoo:  # a user model: rebuilt by its factory, with consent only
        spec["factory"] = zoo
        spec["changed"] = structure_of(model)
    elif zoo is not None:
        spec["model"] = zoo
        fresh = structure_of(create(zoo["name"], **zoo["kwargs"]))
        now = structure_of(model)
        spec["changed"] = {k: v for k, v in now.items() if fresh.get(k) != v}
    elif hf.is_hf_model(model):
        spec.update(hf.hf_spec(model))
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
        p = ensure_dir(p) / MODEL_FILE
    if any(hasattr(m, "parametrizations") for m in model.modules()):
        raise SlimtorchError(
            "the model still carries parametrizations (e.g. pruning masks); call "
            "slimtorch.prune.make_permanent_(model) before saving"
        )
    check_finite_weights(model, "slimtorch.save")
    # safetensors refuses shared storage; clone so tied weights (e.g. embeddings) are saved twice.
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    spec = _spec(model)
    if metadata:
        spec["metadata"] = metadata
    return write_safetensors(p, tensors, spec)


def model_spec(model: nn.Module) -> dict[str, Any]:
    """The JSON spec :func:`save` stores for ``model`` (format, zoo name and kwargs, changed layers)."""
    return _spec(model)


def write_safetensors(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor],
                      spec: dict[str, Any]) -> Path:
    """Write ``tensors`` with ``spec`` as the ``slimtorch`` metadata entry, atomically (:mod:`slimtorch.io.atomic`)."""
    meta = {"slimtorch": json.dumps(spec)}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta), what="model file")


def model_from_spec(spec: dict[str, Any], path: str | os.PathLike[str] = "",
                    shapes: dict[str, Any] | None = None, *, extra_ok: bool = False,
                    allow_code: bool = False) -> nn.Module:
    """Rebuild the (possibly pruned) model a spec describes, with zero-filled weights.

    The spec is untrusted data: :func:`slimtorch.io.spec.build_from_spec` checks every field against the
    file's tensor ``shapes`` before any tensor is allocated. A user model built by
    ``"package.module:function"`` (:func:`slimtorch.io.architectures.build_from_factory`) is rebuilt by
    calling that function again, which runs its code: only with ``allow_code=True``
    (:class:`~slimtorch.core.consent.CodeConsentError` otherwise, raised before anything is imported).

    Args:
        spec: the file's parsed spec (:func:`read_spec`).
        path: the file (for messages; its header gives ``shapes`` when they are not passed).
        shapes: tensor name -> shape of the tensors the model will be loaded with.
        extra_ok: the file may hold tensors the model lacks (loaded into modules added afterwards).
        allow_code: consent to call the factory a user model's spec names.

    Raises:
        SpecError: the spec is not plain structural data that fits the tensors (names the file and field).
    """
    if isinstance(spec, dict) and "hf" in spec:
        return hf.model_from_hf_spec(spec)
    if isinstance(spec, dict) and "model" not in spec and "factory" in spec:
        model = _model_from_factory(spec["factory"], path, allow_code)
        apply_structure(model, spec.get("changed", {}), f"{path or 'the file'}: changed")
        return model
    if not isinstance(spec, dict) or "model" not in spec:
        raise SlimtorchError(
            f"{path or 'the file'} holds no architecture spec (it was not saved from a zoo model); pass the "
            "skeleton: slimtorch.load(path, model=MyNet()) (CLI: --model package.module:function --weights "
            "PATH --allow-code)"
        )
    if shapes is None:
        shapes = header_shapes(path)
    return build_from_spec(spec, path, shapes, extra_ok=extra_ok)


def header_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors file's header (no tensor data is read)."""
    p = resolve_model_file(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except OSError as e:
        raise storage_error(e, p, "read") from None
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise SlimtorchError(f"{p} is not a readable safetensors file: {e}") from None


def _model_from_factory(entry: Any, path: str | os.PathLike[str], allow_code: bool) -> nn.Module:
    from slimtorch.io.architectures import build_from_factory

    where = str(path) or "the file"
    if not (isinstance(entry, dict) and isinstance(entry.get("factory"), str)
            and isinstance(entry.get("kwargs", {}), dict)):
        raise SlimtorchError(f"{where}: malformed 'factory' entry in its spec: {entry!r}")
    return build_from_factory(entry["factory"], entry.get("kwargs", {}), allow_code=allow_code,
                              what=f"{where} (a model built by {entry['factory']!r})")


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
    try:
        spec = json.loads(meta["slimtorch"])
    except (ValueError, RecursionError) as e:
        raise SpecError(str(p), "", f"not valid JSON ({e})") from None
    if not isinstance(spec, dict):
        raise SpecError(str(p), "", f"a {type(spec).__name__}; expected a mapping")
    return spec


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load ``state`` into ``model``, resizing layers whose shapes differ (pruned checkpoints)."""
    resize_like(model, state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SlimtorchError(
            f"weights do not fit the model {type(model).__name__}: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}"
        )
    return model


def load(path: str | os.PathLike[str], model: nn.Module | None = None, *, trust_pickle: bool = False,
         map_location: str = "cpu", allow_code: bool = False) -> nn.Module:
    """Load a model saved by :func:`save` (or a state dict / pickle, see below).

    Args:
        path: a ``.safetensors`` file or a run directory holding ``model.safetensors``; a ``.pt``/
            ``.pth`` file is read as a state dict with ``weights_only=True``.
        model: skeleton to load into; needed when the file holds no zoo spec or is a plain state dict.
        trust_pickle: allow unpickling a full pickled model. Pickles run arbitrary code: only set this
            for files you trust (CLI: ``--trust-pickle``).
        map_location: device to load onto.
        allow_code: consent to run code (CLI: ``--allow-code``): rebuilding a user model by calling the
            ``package.module:function`` its file names (saved from a model built by a factory), or, for a
            Hugging Face folder (``config.json`` + safetensors, see :mod:`slimtorch.io.hf`), code the folder
            ships (``auto_map``). Refused without it.
    """
    if model is None and hf.is_hf_folder(path):  # save_pretrained output: model.safetensors has no spec
        own = Path(path) / MODEL_FILE
        if not own.is_file() or not read_spec(own):
            return hf.load_hf_folder(path, allow_code=allow_code).to(map_location)
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

    if model is None:  # checked against the header before anything is allocated or read
        model = model_from_spec(spec, p, header_shapes(p), allow_code=allow_code)
    state = load_file(str(p), device=map_location)
    load_state_into(model, state)
    return model.eval()


def _holds_objects(e: Exception) -> bool:
    """Whether ``torch.load(weights_only=True)`` failed because the file pickles objects (not because it is broken)."""
    import pickle

    text = str(e)
    return isinstance(e, pickle.UnpicklingError) and ("Unsupported global" in text or "Weights only load failed"
                                                       in text and "GLOBAL" in text)


def _load_torch_file(p: Path, model: nn.Module | None, trust_pickle: bool, map_location: str) -> nn.Module:
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except OSError as e:
        raise storage_error(e, p, "read") from None
    except Exception as e:
        if not _holds_objects(e):  # truncated, corrupt or not a torch file at all: unpickling would not help
            raise SlimtorchError(
                f"{p} is not a readable PyTorch file (truncated, corrupt, or not written by torch.save: "
                f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else 'no detail'}); give a "
                ".safetensors file, a run folder, or a state dict saved with torch.save"
            ) from None
        if not trust_pickle:
            raise SlimtorchError(
                f"{p} is a pickle that holds more than tensors (e.g. a whole model). Unpickling runs "
                "arbitrary code, so it is refused; if you trust the file pass trust_pickle=True (CLI: "
                "--trust-pickle), or re-save it with slimtorch.save()"
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
