"""Features read from a model's *output* instead of a module hook: ``"hidden_states.3"``, ``"attentions.2"``.

Hugging Face models return their intermediate results in a ``ModelOutput`` when asked:
``hidden_states`` (embedding output, then one ``(B, T, D)`` tensor per layer) with
``output_hidden_states=True`` and ``attentions`` (one ``(B, heads, T, T)`` probability map per layer) with
``output_attentions=True``. A feature spec whose first dotted part is one of :data:`OUTPUT_FIELDS` (and
not a submodule of the model) names such a field, with an optional index into a tuple field:

* ``"hidden_states.0"``: the embedding output; ``"hidden_states.3"``: the output of layer 3 (1-based,
  HF's convention: ``hidden_states`` has ``num_layers + 1`` entries); ``"hidden_states.-1"``: the last;
* ``"attentions.2"``: the attention probabilities of layer 2 (0-based, one entry per layer);
* ``"logits"``, ``"last_hidden_state"``, ``"pooler_output"``: a tensor field as it is.

Attention maps exist only under the eager attention implementation (SDPA and flash kernels never
materialise them), so :func:`prepare_model` switches a model that must return them to ``"eager"``; the
results are the same up to float rounding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from slimtorch.core.errors import SlimtorchError

#: Output fields a feature spec may name, and the forward flag that makes the model return each.
OUTPUT_FIELDS: dict[str, str | None] = {
    "logits": None,
    "last_hidden_state": None,
    "pooler_output": None,
    "hidden_states": "output_hidden_states",
    "attentions": "output_attentions",
    "encoder_hidden_states": "output_hidden_states",
    "decoder_hidden_states": "output_hidden_states",
    "encoder_attentions": "output_attentions",
    "decoder_attentions": "output_attentions",
    "cross_attentions": "output_attentions",
}


def is_output_field(model: nn.Module, spec: str) -> bool:
    """Whether ``spec`` names an output field of ``model`` rather than one of its submodules."""
    head = spec.split(".", 1)[0]
    return head in OUTPUT_FIELDS and head not in dict(model.named_children())


def parse(spec: str) -> tuple[str, int | None]:
    """``"hidden_states.3"`` -> ``("hidden_states", 3)``; ``"logits"`` -> ``("logits", None)``.

    Raises:
        SlimtorchError: the part after the field is not an integer index.
    """
    head, _, rest = spec.partition(".")
    if not rest:
        return head, None
    try:
        return head, int(rest)
    except ValueError:
        raise SlimtorchError(f"feature {spec!r}: after the output field {head!r} comes a layer index "
                             f"(e.g. '{head}.2'), got {rest!r}") from None


def forward_flags(specs: Iterable[str]) -> dict[str, bool]:
    """The keyword arguments (``output_hidden_states=True``, ...) that make a model return ``specs``."""
    flags = {OUTPUT_FIELDS[parse(s)[0]] for s in specs}
    return {f: True for f in sorted(f for f in flags if f)}


def prepare_model(model: nn.Module, specs: Iterable[str]) -> None:
    """Switch ``model`` to eager attention when a spec reads attention maps (SDPA never returns them)."""
    if "output_attentions" not in forward_flags(specs):
        return
    cfg = getattr(model, "config", None)
    if getattr(cfg, "_attn_implementation", "eager") == "eager":
        return
    setter = getattr(model, "set_attn_implementation", None)
    if not callable(setter):
        raise SlimtorchError(f"{type(model).__name__} must return attention maps, but its attention "
                             f"implementation is {cfg._attn_implementation!r}; load it with "
                             "attn_implementation='eager'")
    setter("eager")


def read(out: Any, spec: str, whose: str) -> torch.Tensor:
    """The tensor ``spec`` names in the model output ``out``.

    Raises:
        SlimtorchError: the output is no ``ModelOutput``/dict, lacks the field, or the index is out of
            range; the message lists what the output holds.
    """
    field, index = parse(spec)
    if not isinstance(out, Mapping):
        raise SlimtorchError(f"{whose} feature {spec!r} reads an output field, but the model returned a "
                             f"{type(out).__name__}; output fields need a dict or Hugging Face ModelOutput")
    value = out.get(field)
    if value is None or (isinstance(value, (tuple, list)) and not value):
        flag = OUTPUT_FIELDS[field]
        hint = f" (the model was called with {flag}=True; does it support it?)" if flag else ""
        raise SlimtorchError(f"{whose} output has no {field!r}{hint}; it holds {sorted(out.keys())}")
    if index is None:
        if not isinstance(value, torch.Tensor):
            raise SlimtorchError(f"{whose} output field {field!r} holds {len(value)} tensors; name one "
                                 f"(e.g. '{field}.{len(value) - 1}')")
        return value
    if isinstance(value, torch.Tensor):
        raise SlimtorchError(f"{whose} output field {field!r} is one tensor; drop the index in {spec!r}")
    if not -len(value) <= index < len(value):
        raise SlimtorchError(f"{whose} feature {spec!r}: {field!r} has {len(value)} entries "
                             f"(indices 0..{len(value) - 1})")
    return value[index]
