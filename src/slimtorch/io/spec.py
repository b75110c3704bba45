"""Rebuild a model from the architecture spec of a file, treating the spec as untrusted data.

A slimtorch model file stores ``{"model": {"name": ..., "kwargs": {...}}, "changed": {layer: {attr: v}}}``
next to its tensors. The spec is data somebody else may have written, so :func:`build_from_spec`:

1. accepts only plain values: ``name`` a registered architecture, ``kwargs`` arguments its constructor
   declares, each a non-negative number, a bool, a short string or a list or mapping of those;
2. builds the model on the ``meta`` device (no memory is allocated, whatever the widths say), with a cap on
   how many parameters and modules the constructor may create (a spec cannot make it loop for hours);
3. lets ``changed`` set only the structural attributes of :data:`STRUCTURAL_ATTRS` (layer widths, head
   counts, what pruning changes) on submodules that exist and already carry that attribute with the same
   type: ``eps``, ``forward``, ``__class__`` or a missing layer is refused;
4. derives every tensor's shape from the layers' attributes (:data:`SHAPE_RULES`: ``Linear.weight`` is
   ``(out_features, in_features)`` ...) and checks the result against the file's tensor header: same keys,
   same shapes, so the parameter count the spec implies equals the tensors in the file (a 203 KB file whose
   spec says ``hidden: [20000, 20000]`` is refused before anything is allocated);
5. runs one forward pass on ``meta`` tensors when the model declares ``input_shape``: layers that do not
   chain are found here, not at the user's first real batch;
6. only then allocates the tensors, at the sizes the file holds.

Every problem is a :class:`SpecError` naming the file and the spec field.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from slimtorch.core.errors import SlimtorchError
from slimtorch.io.architectures import MODELS, SPEC_ATTR

#: Attributes that describe a layer's structure: the only ones a spec's ``changed`` entry may set.
#: Recorded by ``save`` when they differ from a freshly created zoo model; extend it for custom layers
#: whose forward reads such an attribute.
STRUCTURAL_ATTRS: list[str] = [
    "in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
    "normalized_shape", "num_embeddings", "embedding_dim", "num_heads", "embed_dim", "head_dim",
    "num_groups", "num_channels", "use_res", "kdim", "vdim",
    # Hugging Face layers (Conv1D, attention): what their forward reads besides the weights' shapes
    "nf", "nx", "num_attention_heads", "attention_head_size", "all_head_size", "num_key_value_groups",
    "split_size", "scaling",
]

#: Longest string and list a spec value may hold, and how deeply values may nest.
MAX_STRING = 256
MAX_LIST = 4096
MAX_DEPTH = 4

Shape = tuple[int, ...]


class SpecError(SlimtorchError):
    """The architecture spec of a model file is not acceptable; names the file and the field."""

    def __init__(self, path: str | os.PathLike[str], field: str, problem: str) -> None:
        super().__init__(f"{path or 'the model file'}: architecture spec field {field!r}: {problem}")
        self.path = str(path)
        self.field = field


# ---- shape rules: layer type -> {tensor name: shape} from the layer's attributes -------------------------
def _linear(m: nn.Module) -> dict[str, Shape]:
    return {"weight": (m.out_features, m.in_features), "bias": (m.out_features,)}


def _conv(m: nn.Module) -> dict[str, Shape]:
    if m.groups < 1 or m.in_channels % m.groups or m.out_channels % m.groups:
        raise ValueError(f"in_channels={m.in_channels} and out_channels={m.out_channels} must be divisible by "
                         f"groups={m.groups}")
    k = tuple(m.kernel_size)
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        return {"weight": (m.in_channels, m.out_channels // m.groups, *k), "bias": (m.out_channels,)}
    return {"weight": (m.out_channels, m.in_channels // m.groups, *k), "bias": (m.out_channels,)}


def _batchnorm(m: nn.Module) -> dict[str, Shape]:
    n = (m.num_features,)
    return {"weight": n, "bias": n, "running_mean": n, "running_var": n, "num_batches_tracked": ()}


def _layernorm(m: nn.Module) -> dict[str, Shape]:
    s = tuple(m.normalized_shape)
    return {"weight": s, "bias": s}


def _groupnorm(m: nn.Module) -> dict[str, Shape]:
    if m.num_groups < 1 or m.num_channels % m.num_groups:
        raise ValueError(f"num_channels={m.num_channels} must be divisible by num_groups={m.num_groups}")
    return {"weight": (m.num_channels,), "bias": (m.num_channels,)}


def _embedding(m: nn.Module) -> dict[str, Shape]:
    return {"weight": (m.num_embeddings, m.embedding_dim)}


def _mha(m: nn.Module) -> dict[str, Shape]:
    e = m.embed_dim
    if m.num_heads < 1 or e % m.num_heads:
        raise ValueError(f"embed_dim={e} must be divisible by num_heads={m.num_heads}")
    if m.head_dim * m.num_heads != e:
        raise ValueError(f"head_dim={m.head_dim} x num_heads={m.num_heads} != embed_dim={e}")
    shapes: dict[str, Shape] = {"in_proj_weight": (3 * e, e), "in_proj_bias": (3 * e,)}
    shapes.update({"q_proj_weight": (e, e), "k_proj_weight": (e, m.kdim), "v_proj_weight": (e, m.vdim)})
    shapes.update({"bias_k": (1, 1, e), "bias_v": (1, 1, e)})
    return shapes


def _qkv_attention(m: nn.Module) -> dict[str, Shape]:
    q = m.q.out_features
    if m.num_heads < 1 or q % m.num_heads:
        raise ValueError(f"num_heads={m.num_heads} does not divide the {q} query features")
    return {}


#: Layer type (or declared ``slimtorch_kind``) -> function giving the shapes of its own tensors. A tensor of
#: a layer without a rule must keep the shape the constructor gave it.
SHAPE_RULES: dict[type | str, Callable[[nn.Module], dict[str, Shape]]] = {
    nn.Linear: _linear,
    nn.modules.conv._ConvNd: _conv,
    nn.modules.batchnorm._NormBase: _batchnorm,
    nn.LayerNorm: _layernorm,
    nn.GroupNorm: _groupnorm,
    nn.Embedding: _embedding,
    nn.MultiheadAttention: _mha,
    "qkv_attention": _qkv_attention,
}


def _rule(m: nn.Module) -> Callable[[nn.Module], dict[str, Shape]] | None:
    for cls in type(m).__mro__:
        if cls in SHAPE_RULES:
            return SHAPE_RULES[cls]
        kind = cls.__dict__.get("slimtorch_kind")
        if isinstance(kind, str) and kind in SHAPE_RULES:
            return SHAPE_RULES[kind]
    return None


# ---- validation of plain values ----------------------------------------------------------------------------
def _check_value(v: Any, field: str, path: str, depth: int = 0, nested_ok: bool = True) -> Any:
    """``v`` if it is plain JSON data within the limits: non-negative numbers, bools, short strings, lists and
    (when ``nested_ok``: constructor arguments such as a config) mappings of those."""
    if depth > MAX_DEPTH:
        raise SpecError(path, field, f"nested more than {MAX_DEPTH} levels")
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int):
        if v < 0:
            raise SpecError(path, field, f"{v} is negative; sizes and counts are non-negative")
        return v
    if isinstance(v, float):
        if not math.isfinite(v) or v < 0:
            raise SpecError(path, field, f"{v} is not a finite non-negative number")
        return v
    if isinstance(v, str):
        if len(v) > MAX_STRING:
            raise SpecError(path, field, f"a string of {len(v)} characters (at most {MAX_STRING})")
        return v
    if isinstance(v, list):
        if len(v) > MAX_LIST:
            raise SpecError(path, field, f"a list of {len(v)} items (at most {MAX_LIST})")
        return [_check_value(x, f"{field}[{i}]", path, depth + 1, nested_ok) for i, x in enumerate(v)]
    if isinstance(v, dict) and nested_ok:
        if len(v) > MAX_LIST:
            raise SpecError(path, field, f"a mapping of {len(v)} entries (at most {MAX_LIST})")
        for k in v:
            if not isinstance(k, str) or len(k) > MAX_STRING:
                raise SpecError(path, field, f"mapping key {_short(k)} is not a short string")
        return {k: _check_value(x, f"{field}.{k}", path, depth + 1, nested_ok) for k, x in v.items()}
    raise SpecError(path, field, f"a {type(v).__name__}; allowed: numbers, bools, strings and lists of them"
                    + (" (or mappings of those)" if nested_ok else ""))


def _check_kwargs(name: str, ctor: Callable[..., nn.Module], kwargs: Any, path: str) -> dict[str, Any]:
    if not isinstance(kwargs, dict):
        raise SpecError(path, "model.kwargs", f"a {type(kwargs).__name__}; expected a mapping of constructor "
                        "arguments")
    params = inspect.signature(ctor).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    out = {}
    for k, v in kwargs.items():
        if not isinstance(k, str) or (k not in named and not takes_any):
            raise SpecError(path, f"model.kwargs.{k}", f"{name!r} takes no argument {k!r}; allowed: {named}")
        out[k] = _check_value(v, f"model.kwargs.{k}", path)
    return out


@contextmanager
def _creation_cap(max_tensors: int, max_modules: int, path: str) -> Iterator[None]:
    """Abort a constructor that creates more tensors or modules than the file could hold."""
    from torch.nn.modules import module as M

    counts = {"tensors": 0, "modules": 0}

    def count(kind: str, limit: int) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            counts[kind] += 1
            if counts[kind] > limit:
                raise SpecError(path, "model.kwargs", f"the constructor creates more than {limit} {kind}, more "
                                "than the file's tensors could fill")
        return hook

    handles = [
        M.register_module_parameter_registration_hook(count("tensors", max_tensors)),
        M.register_module_buffer_registration_hook(count("tensors", max_tensors)),
        M.register_module_module_registration_hook(count("modules", max_modules)),
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# ---- the builder ------------------------------------------------------------------------------------------
def build_from_spec(spec: Any, path: str | os.PathLike[str], shapes: Mapping[str, Sequence[int]], *,
                    extra_ok: bool = False) -> nn.Module:
    """Rebuild the model ``spec`` describes, checked against the file's tensor ``shapes`` (see module doc).

    Args:
        spec: the parsed ``slimtorch`` metadata of the file.
        path: the file, for messages.
        shapes: tensor name -> shape, from the file's header (nothing is read but the header).
        extra_ok: the file may hold tensors the model lacks (e.g. quantization state loaded afterwards).

    Returns:
        The model on the CPU, its tensors allocated (zero-filled) at the shapes the file holds.

    Raises:
        SpecError: anything in the spec that is not plain structural data consistent with the tensors.
    """
    path = str(path)
    if not isinstance(spec, dict):
        raise SpecError(path, "", f"a {type(spec).__name__}; expected a mapping")
    zoo = spec.get("model")
    if not isinstance(zoo, dict) or set(zoo) - {"name", "kwargs"} or not isinstance(zoo.get("name"), str):
        raise SpecError(path, "model", f"{_short(zoo)}; expected {{'name': <architecture>, 'kwargs': {{...}}}}")
    name = zoo["name"]
    if MODELS.find(name) is None:
        raise SpecError(path, "model.name", f"{name[:MAX_STRING]!r} is not a registered architecture; known: "
                        f"{MODELS.names()}")
    ctor = MODELS.get(name)
    kwargs = _check_kwargs(name, ctor, zoo.get("kwargs", {}), path)
    changed = spec.get("changed", {})
    if not isinstance(changed, dict) or not all(isinstance(v, dict) for v in changed.values()):
        raise SpecError(path, "changed", f"{_short(changed)}; expected {{layer name: {{attribute: value}}}}")
    file_shapes = {k: tuple(int(d) for d in s) for k, s in shapes.items()}

    n = len(file_shapes)
    try:
        with torch.device("meta"), _creation_cap(4 * n + 64, 8 * n + 256, path):
            model = ctor(**kwargs)
    except SpecError:
        raise
    except Exception as e:  # a constructor refusing its arguments raises anything (ValueError, RuntimeError)
        raise SpecError(path, "model.kwargs", f"{name!r} cannot be built from {kwargs}: {e}") from None
    if not isinstance(model, nn.Module):
        raise SpecError(path, "model.name", f"{name!r} built a {type(model).__name__}, not a module")
    for layer, attrs in changed.items():
        _apply_changed(model, layer, attrs, path)

    expected = _expected_shapes(model, file_shapes, path)
    _compare(expected, file_shapes, extra_ok, path)
    _materialize(model, expected, "meta")  # the checked shapes, still without memory
    _meta_forward(model, path)
    _materialize(model, expected, "cpu")
    setattr(model, SPEC_ATTR, {"name": name.lower(), "kwargs": kwargs})
    return model


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _apply_changed(model: nn.Module, layer: Any, attrs: dict[str, Any], path: str) -> None:
    field = f"changed.{layer}"
    if not isinstance(layer, str):
        raise SpecError(path, field, "layer names are strings")
    try:
        m = model.get_submodule(layer) if layer else model
    except AttributeError:
        raise SpecError(path, field, f"the model has no submodule {layer!r}") from None
    for attr, value in attrs.items():
        f = f"{field}.{attr}"
        if attr not in STRUCTURAL_ATTRS:
            raise SpecError(path, f, f"{attr!r} is not a structural attribute; a spec may set only "
                            f"{STRUCTURAL_ATTRS}")
        if isinstance(getattr(type(m), attr, None), property) or attr not in vars(m):
            raise SpecError(path, f, f"{type(m).__name__} {layer!r} has no stored attribute {attr!r}")
        cur = vars(m)[attr]
        _check_value(value, f, path, nested_ok=False)
        if isinstance(cur, bool):
            ok = isinstance(value, bool)
        elif isinstance(cur, int):
            ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        elif isinstance(cur, (tuple, list)):
            ok = (isinstance(value, list) and len(value) == len(cur)
                  and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in value))
        else:
            ok = False
        if not ok:
            raise SpecError(path, f, f"{_short(value)} does not fit {attr} = {_short(cur)} of {type(m).__name__} "
                            f"{layer!r} (a positive integer, a bool or a list of positive integers of the same "
                            "length, as the layer holds)")
        setattr(m, attr, tuple(value) if isinstance(cur, tuple) else value)


def _expected_shapes(model: nn.Module, file_shapes: dict[str, Shape], path: str) -> dict[str, Shape]:
    """Every state-dict tensor's shape as the (changed) layer attributes imply it.

    A tensor no rule covers (e.g. a ViT's class token, which channel pruning narrows) may be narrower than
    the constructor made it, never wider and never of another rank: it takes the file's shape within those
    bounds, and the meta forward pass checks that it still fits its neighbours.
    """
    out: dict[str, Shape] = {}
    for mod_name, m in model.named_modules():
        rule = _rule(m)
        try:
            ruled = rule(m) if rule is not None else {}
        except (ValueError, AttributeError, TypeError) as e:
            raise SpecError(path, f"changed.{mod_name}", str(e)) from None
        own = {**m._parameters, **{k: b for k, b in m._buffers.items() if k not in m._non_persistent_buffers_set}}
        for t_name, t in own.items():
            if t is None:
                continue
            key = f"{mod_name}.{t_name}" if mod_name else t_name
            if t_name in ruled:
                out[key] = ruled[t_name]
                continue
            built, held = tuple(t.shape), file_shapes.get(key)
            fits = held is not None and len(held) == len(built) and all(h <= b for h, b in zip(held, built))
            out[key] = held if fits else built
    return out


def _compare(expected: dict[str, Shape], file_shapes: dict[str, Shape], extra_ok: bool, path: str) -> None:
    implied = sum(math.prod(s) for s in expected.values())
    held_keys = file_shapes if not extra_ok else {k: s for k, s in file_shapes.items() if k in expected}
    held = sum(math.prod(s) for s in held_keys.values())
    missing = [k for k in expected if k not in file_shapes]
    extra = [] if extra_ok else [k for k in file_shapes if k not in expected]
    if implied != held:
        raise SpecError(path, "model", f"the spec implies {implied:,} parameter values but the file holds "
                        f"{held:,}" + (f" (tensors missing from the file: {missing[:5]})" if missing else "")
                        + (f" (tensors the spec does not describe: {extra[:5]})" if extra else ""))
    if missing or extra:
        raise SpecError(path, "model", f"the spec's tensors and the file's differ: missing from the file "
                        f"{missing[:5]}, not in the spec {extra[:5]}")
    for key, s in expected.items():
        if file_shapes[key] != s:
            layer = key.rpartition(".")[0]
            raise SpecError(path, f"changed.{layer}", f"tensor {key!r} is {list(file_shapes[key])} in the file, "
                            f"but the spec implies {list(s)}")


def _meta_forward(model: nn.Module, path: str) -> None:
    shape = getattr(model, "input_shape", None)
    if not isinstance(shape, tuple) or not all(isinstance(d, int) for d in shape):
        return
    dtype = getattr(model, "input_dtype", torch.float32)
    x = torch.zeros((1, *shape), dtype=dtype, device="meta")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    except Exception as e:  # the layers do not chain: any torch shape error
        raise SpecError(path, "changed", f"the layers do not fit together (a forward pass fails: "
                        f"{str(e).splitlines()[0][:200]})") from None
    finally:
        model.train(was_training)


def _materialize(model: nn.Module, shapes: dict[str, Shape], device: str) -> None:
    """Replace every tensor by a zero-filled one of its checked shape on ``device`` (ties kept)."""
    new: dict[int, torch.Tensor] = {}
    for mod_name, m in model.named_modules(remove_duplicate=False):
        for store in (m._parameters, m._buffers):
            for t_name, t in list(store.items()):
                if t is None:
                    continue
                if id(t) not in new:
                    key = f"{mod_name}.{t_name}" if mod_name else t_name
                    shape = shapes.get(key, tuple(t.shape))
                    # zeros, not empty: preparers (e.g. load_quantized's) read the weights before the file's
                    # values are loaded, and uninitialised memory may hold NaN
                    data = torch.zeros(shape, dtype=t.dtype, device=device)
                    new[id(t)] = nn.Parameter(data, requires_grad=t.requires_grad) if isinstance(
                        t, nn.Parameter) else data
                store[t_name] = new[id(t)]
