"""Hugging Face models in and out, without running code from the model folder.

``slimtorch.load(folder)`` reads a Hugging Face model folder (``config.json`` + ``*.safetensors``): the
model class is the one ``config.architectures`` names, looked up in the ``transformers`` package itself
(never in the folder), so nothing the folder ships runs. A folder whose config asks for its own code
(``auto_map``) is refused unless the caller consents (``allow_code=True``, see :mod:`slimtorch.core.consent`).

Pruned models keep their exact shapes. Structured pruning changes widths per layer (heads, FFN width, the
hidden size) that a Hugging Face config can only state uniformly, and some configs cannot state at all
(BERT and GPT-2 derive the head size as ``hidden_size / num_attention_heads``). So the structural
attributes that differ from what ``type(model)(model.config)`` would build are recorded:

* by :func:`record_structure` in ``model.config.slimtorch_structure`` (pruning calls it, so a
  ``save_pretrained`` folder carries it in ``config.json``), and
* by :func:`slimtorch.save` in the file's spec (``{"hf": {"class", "config"}, "changed": {...}}``).

Loading builds the model from its config, applies those attributes, resizes every tensor to the stored
shape, then loads the weights. ``transformers`` is an optional dependency (``pip install slimtorch[hf]``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimtorch.core.consent import require_code_consent
from slimtorch.core.errors import SlimtorchError

#: Config key holding ``{module fqn: {attr: value}}``: the structure that differs from a fresh build.
STRUCTURE_KEY = "slimtorch_structure"
#: Config key holding per-layer widths when they are not uniform (``{"num_attention_heads": [...], ...}``).
WIDTHS_KEY = "slimtorch_widths"
CONFIG_FILE = "config.json"


def require_transformers() -> Any:
    """Import ``transformers`` or raise an error that says how to install it."""
    try:
        import transformers
    except ImportError as e:
        raise SlimtorchError(
            "this needs the Hugging Face transformers package, which is not installed; install the extra: "
            "pip install 'slimtorch[hf]'"
        ) from e
    return transformers


def is_hf_model(model: nn.Module) -> bool:
    """True for a Hugging Face ``PreTrainedModel`` (checked by duck typing: no transformers import)."""
    config = getattr(model, "config", None)
    return isinstance(model, nn.Module) and hasattr(config, "model_type") and hasattr(config, "to_dict")


def is_hf_folder(path: str | os.PathLike[str]) -> bool:
    """True for a directory holding a ``config.json`` (a Hugging Face model folder)."""
    p = Path(path)
    return p.is_dir() and (p / CONFIG_FILE).is_file()


# ---- structure -------------------------------------------------------------------------------------
def _fresh(model: nn.Module) -> nn.Module:
    """What ``type(model)(config)`` builds, on the meta device (no memory, no initialisation cost)."""
    config = model.config.__class__.from_dict(_config_dict(model.config))
    with torch.device("meta"):
        return type(model)(config)


def _config_dict(config: Any) -> dict[str, Any]:
    d = config.to_dict()
    d.pop(STRUCTURE_KEY, None)
    return d


def hf_structure(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module fqn: {attr: value}}`` of the structural attributes that differ from a fresh build."""
    from slimtorch.io.structure import structure_of

    fresh, now = structure_of(_fresh(model)), structure_of(model)
    return {k: v for k, v in now.items() if fresh.get(k) != v}


def record_structure(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Store :func:`hf_structure` in ``model.config.slimtorch_structure`` (saved by ``save_pretrained``)."""
    changed = hf_structure(model)
    if changed:
        setattr(model.config, STRUCTURE_KEY, changed)
    elif hasattr(model.config, STRUCTURE_KEY):
        delattr(model.config, STRUCTURE_KEY)
    return changed


def hf_spec(model: nn.Module) -> dict[str, Any]:
    """The part of :func:`slimtorch.save`'s spec that rebuilds a Hugging Face model without code."""
    return {
        "hf": {"class": type(model).__name__, "config": _config_dict(model.config)},
        "changed": hf_structure(model),
    }


# ---- building --------------------------------------------------------------------------------------
def _model_class(name: str | None, config: Any) -> Any:
    """The class ``name`` from the transformers package (no folder code), else the Auto class's choice."""
    transformers = require_transformers()
    if name:
        cls = getattr(transformers, name, None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
        raise SlimtorchError(
            f"config.architectures names {name!r}, which is not a model class of transformers "
            f"{transformers.__version__}; a model with its own code needs allow_code=True"
        )
    return transformers.AutoModel._model_mapping[type(config)]


def _check_remote_code(config: dict[str, Any], where: str, allow_code: bool) -> bool:
    """True if the config asks for code shipped with the model (``auto_map``); refuses without consent."""
    if not config.get("auto_map"):
        return False
    names = ", ".join(f"{k}: {v}" for k, v in config["auto_map"].items())
    require_code_consent(f"the Hugging Face model at {where} (config auto_map {{{names}}})", allow_code)
    return True


def _no_init() -> Any:
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: initialise (slower, same result once loaded)
        import contextlib

        return contextlib.nullcontext()
    return no_init_weights()


def build_from_config(config_dict: dict[str, Any], class_name: str | None,
                      changed: dict[str, dict[str, Any]]) -> nn.Module:
    """A model of ``class_name`` built from ``config_dict`` with the recorded structure applied.

    The weights are uninitialised (they are about to be loaded).
    """
    transformers = require_transformers()
    from slimtorch.io.structure import apply_structure

    d = {k: v for k, v in config_dict.items() if k != STRUCTURE_KEY}
    model_type = d.pop("model_type", None)
    if not model_type:
        raise SlimtorchError("the Hugging Face config has no model_type; cannot tell which architecture it is")
    try:
        config = transformers.AutoConfig.for_model(model_type, **d)
    except ValueError as e:
        raise SlimtorchError(f"transformers {transformers.__version__} does not know model_type "
                             f"{model_type!r}: {e}") from None
    cls = _model_class(class_name, config)
    with _no_init():  # the weights are loaded next: random initialisation would be wasted time
        model = cls(config)
    apply_structure(model, changed, "the slimtorch_structure of the config")
    if changed:
        setattr(model.config, STRUCTURE_KEY, changed)
    return model


def model_from_hf_spec(spec: dict[str, Any]) -> nn.Module:
    """Rebuild the model a :func:`slimtorch.save` spec of a Hugging Face model describes."""
    hf = spec["hf"]
    return build_from_config(hf["config"], hf["class"], spec.get("changed", {}))


def _folder_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = folder / "model.safetensors"
    if single.is_file():
        return load_file(str(single))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(str(folder / f)))
        return state
    found = sorted(p.name for p in folder.iterdir())
    raise SlimtorchError(
        f"{folder} has a config.json but no model.safetensors (nor a sharded index); it holds {found[:10]}. "
        "Only safetensors weights are read (pickled pytorch_model.bin files can run code)"
    )


def to_model_keys(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename checkpoint keys to ``model``'s names with transformers' own key mapping.

    ``save_pretrained`` writes some families under their legacy names (ViT's ``vit.encoder.layer.0.
    attention.attention.query`` for ``vit.layers.0.attention.q_proj``) and checkpoints may carry or lack the
    base-model prefix; ``from_pretrained`` maps them back, and so does this. Keys that need a tensor
    conversion (fused or split weights) are refused: load such models with ``from_pretrained``.
    """
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, rename_source_key
    except ImportError:  # transformers 4.x stores the model's own names
        return state
    transforms = get_model_conversion_mapping(model)
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    own = model.state_dict()
    prefix = getattr(model, "base_model_prefix", None) or None
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        if key in own:
            out[key] = t
            continue
        new, pattern = rename_source_key(key, renamings, converters, prefix, own)
        if pattern is not None:
            raise SlimtorchError(
                f"checkpoint key {key!r} needs transformers' weight conversion {pattern!r} (not a rename); "
                "load this model with from_pretrained"
            )
        out[new] = t
    return out


def load_state_tied(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load ``state`` (shapes may differ from ``model``'s); keys left out because tied weights share them are
    filled by ``tie_weights``, any other missing or unexpected key is an error."""
    from slimtorch.io.structure import resize_like

    resize_like(model, state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    params = dict(model.named_parameters(remove_duplicate=False))
    shared = {id(p) for k, p in params.items() if k in state}
    missing = [k for k in missing if not (k in params and id(params[k]) in shared)]
    missing = [k for k in missing if k in params]  # non-persistent buffers are rebuilt by the model
    # old checkpoints store buffers the model now builds itself (BERT's embeddings.position_ids)
    buffers = dict(model.named_buffers())
    ignore = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or []]
    unexpected = [k for k in unexpected if k not in buffers and not any(p.search(k) for p in ignore)]
    if missing or unexpected:
        raise SlimtorchError(
            f"the weights do not fit {type(model).__name__}: missing {missing[:8]}, unexpected {unexpected[:8]}"
        )
    return model


def load_hf_folder(path: str | os.PathLike[str], *, allow_code: bool = False) -> nn.Module:
    """Load a Hugging Face model folder (``config.json`` + safetensors) without running its code.

    Args:
        path: the folder (e.g. what ``save_pretrained`` wrote, or a hub snapshot).
        allow_code: consent to run code the folder ships (its config's ``auto_map``); without it such a
            folder is refused with :class:`~slimtorch.core.consent.CodeConsentError`.

    Returns:
        The model in eval mode, with the exact (possibly pruned, per-layer) shapes of the stored weights.
    """
    folder = Path(path)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SlimtorchError(f"{folder / CONFIG_FILE} is not a readable JSON config: {e}") from None
    if _check_remote_code(config, str(folder), allow_code):
        transformers = require_transformers()
        auto = transformers.AutoModel
        return auto.from_pretrained(str(folder), trust_remote_code=True).eval()
    archs = config.get("architectures") or [None]
    model = build_from_config(config, archs[0], config.get(STRUCTURE_KEY, {}))
    return load_state_tied(model, to_model_keys(model, _folder_state(folder))).eval()
