"""Save and reload a quantized (fake-quant) model.

``save_quantized`` writes the usual slimtorch safetensors file (weights, scales, zero points, observer
state) and records the quantization config in its metadata. ``load_quantized`` rebuilds the float
model (zoo models and Hugging Face ``transformers`` models need no code; others need a skeleton), rebuilds
the packed weight-only layers from the table the file records, re-applies the config's *structure* with the
preparer registered for its type (wrappers, BatchNorm folding, hooks), loads the saved tensors on top,
and freezes every quantizer, so the result computes exactly what was saved, without calibration data.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

import slimtorch
from slimtorch.core.config import CONFIG_TYPES, Config
from slimtorch.core.errors import SlimtorchError
from slimtorch.core.registry import TypeRegistry
from slimtorch.io.storage import (
    header_shapes,
    load_state_into,
    model_from_spec,
    read_spec,
    register_spec_loader,
    resolve_model_file,
)
from slimtorch.quant import primitives as P
from slimtorch.quant.algorithms.awq import InputScaled
from slimtorch.quant.groupwise import GroupCodes
from slimtorch.quant.modules.fake_quant import FakeQuantize
from slimtorch.quant.modules.packed import WeightOnlyConv2d, WeightOnlyLinear

#: config type -> ``prepare(model, config)`` rebuilding the quantized structure without data.
PREPARERS: TypeRegistry[Callable[[nn.Module, Config], Any]] = TypeRegistry("preparer")


def register_preparer(config_type: type[Config]) -> Callable[[Callable], Callable]:
    """Decorator registering how to rebuild a quantized structure of ``config_type`` before loading."""

    return PREPARERS.register(config_type, overwrite=True)  # a later registration replaces an earlier one


def save_quantized(model: nn.Module, path: str | os.PathLike[str], config: Config,
                   metadata: dict[str, Any] | None = None) -> Path:
    """Save a quantized ``model`` with the ``config`` that produced it (see :func:`load_quantized`).

    Besides the config, the file records the table of packed weight-only layers (name, kind, bits, group size,
    symmetry, weight shape) so they are rebuilt without calibration data; a Hugging Face model's class and
    config are in its spec (:func:`slimtorch.io.storage.save`), so it is rebuilt without a skeleton.
    """
    cfg = {k: v for k, v in config.to_dict().items() if not callable(v)}
    meta: dict[str, Any] = {"quant": {"type": type(config).__name__, "config": cfg}}
    packed = packed_layer_table(model)
    if packed:
        meta["packed"] = packed
    wrappers = {n: {"type": type(m).__name__, "in_features": int(m.inv_scale.numel())}
                for n, m in model.named_modules() if isinstance(m, InputScaled)}
    if wrappers:
        meta["wrappers"] = wrappers
    return slimtorch.save(model, path, metadata={**meta, **(metadata or {})})


def packed_layer_table(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{layer name: {"kind", "bits", "group_size", "symmetric", "shape", "bias"}}`` of the packed layers."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if isinstance(m, (WeightOnlyLinear, WeightOnlyConv2d)):
            out[name] = {"kind": "linear" if isinstance(m, WeightOnlyLinear) else "conv2d", "bits": m.bits,
                         "group_size": m.group_size, "symmetric": m.symmetric, "shape": list(m.weight_shape),
                         "bias": m.bias is not None}
    return out


def rebuild_packed_layers_(model: nn.Module, table: dict[str, dict[str, Any]]) -> None:
    """Replace each float layer named in ``table`` by an empty packed layer of the recorded form (in place).

    The codes, scales and zero points are zeros until the saved tensors are loaded on top.

    Raises:
        SlimtorchError: a named layer is missing or is not the Linear/Conv2d the table says.
    """
    for name, row in table.items():
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise SlimtorchError(f"the file has a packed layer {name!r} that the model lacks") from None
        kind = {"linear": nn.Linear, "conv2d": nn.Conv2d}.get(row["kind"])
        if kind is None or not isinstance(layer, kind):
            raise SlimtorchError(f"packed layer {name!r} is a {row['kind']} in the file but a "
                                 f"{type(layer).__name__} in the model")
        shape = tuple(row["shape"])
        out_f, fan_in = shape[0], math.prod(shape[1:])
        bits, symmetric = int(row["bits"]), bool(row["symmetric"])
        groups = fan_in // int(row["group_size"])
        codes = GroupCodes(
            torch.zeros(out_f, fan_in, dtype=P.storage_dtype(bits, symmetric)),
            torch.ones(out_f, groups), torch.zeros(out_f, groups, dtype=torch.int32), bits, symmetric,
            int(row["group_size"]))
        new = WeightOnlyLinear(codes, layer.bias) if kind is nn.Linear else WeightOnlyConv2d(layer, codes)
        if row.get("bias") and new.bias is None:  # bias correction gave a bias-free layer one
            new.bias = nn.Parameter(torch.zeros(out_f))
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)


def rebuild_wrappers_(model: nn.Module, table: dict[str, dict[str, Any]]) -> None:
    """Wrap each layer named in ``table`` as the file recorded (AWQ's ``InputScaled`` input scale that could not
    be folded); the scale itself comes with the saved tensors."""
    for name, row in table.items():
        if row.get("type") != "InputScaled":
            raise SlimtorchError(f"unknown layer wrapper {row.get('type')!r} at {name!r} in the file")
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise SlimtorchError(f"the file wraps a layer {name!r} that the model lacks") from None
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr,
                InputScaled(layer, torch.ones(int(row["in_features"]))))


def float_shapes(path: str | os.PathLike[str], meta: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of the float skeleton a quantized file is loaded into, from the file's header.

    The untrusted spec is checked against these before anything is built (:mod:`slimtorch.io.spec`). A packed
    layer holds ``qweight`` codes instead of ``weight``: its recorded float shape stands in for the weight only if
    the packed codes in the file are exactly that many values at its bit width (so a table cannot claim more
    weights than the file holds). A wrapped layer's tensors (``<name>.layer.*``) belong to ``<name>`` in the
    float skeleton.

    Raises:
        SlimtorchError: a packed-layer row whose shape disagrees with the codes in the file.
    """
    shapes = dict(header_shapes(path))
    for name, row in (meta.get("packed") or {}).items():
        codes = shapes.get(f"{name}.qweight")
        try:
            shape, bits = tuple(int(d) for d in row["shape"]), int(row["bits"])
        except (KeyError, TypeError, ValueError):
            raise SlimtorchError(f"{path}: packed layer {name!r} has a malformed record {row!r}") from None
        if codes is None or any(d < 1 for d in shape) or not 2 <= bits <= 8 \
                or math.prod(codes) != math.ceil(math.prod(shape) * bits / 8):
            raise SlimtorchError(f"{path}: packed layer {name!r} records a {list(shape)} weight at {bits} bits, "
                                 f"but the file holds {list(codes) if codes else 'no'} packed codes for it")
        shapes[f"{name}.weight"] = shape
    for name in meta.get("wrappers") or {}:
        for key in [k for k in shapes if k.startswith(f"{name}.layer.")]:
            shapes[name + key[len(name) + len(".layer"):]] = shapes.pop(key)
    return shapes


def load_quantized(path: str | os.PathLike[str], model: nn.Module | None = None, *,
                   allow_code: bool = False) -> nn.Module:
    """Reload a model written by :func:`save_quantized`.

    Args:
        path: the ``.safetensors`` file or run directory.
        model: float skeleton for models neither from the zoo nor built by a recorded factory.
        allow_code: rebuild a model built by ``package.module:function`` by calling it again (runs its code).

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
    meta = spec.get("metadata") or {}
    if model is None and meta.get("wrappers"):
        # the recorded layer structure names wrapped layers as "<name>.layer"; the float skeleton has "<name>"
        changed = {}
        for key, attrs in (spec.get("changed") or {}).items():
            for name in meta["wrappers"]:
                if key == f"{name}.layer" or key.startswith(f"{name}.layer."):
                    key = name + key[len(name) + len(".layer"):]
            changed[key] = attrs
        spec = {**spec, "changed": changed}
    if model is None:
        # the quantizer state is loaded after the preparer; a Hugging Face model is rebuilt from the class and
        # config its spec records (slimtorch.io.hf), a zoo or factory model from its structure
        model = model_from_spec(spec, path, float_shapes(path, meta), extra_ok=True, allow_code=allow_code)
    model.eval()
    rebuild_wrappers_(model, meta.get("wrappers") or {})
    rebuild_packed_layers_(model, meta.get("packed") or {})
    PREPARERS.get(ctype)(model, config)
    load_state_into(model, load_file(str(resolve_model_file(path))))
    for m in model.modules():
        if isinstance(m, FakeQuantize) and not m.dynamic:
            m.observing, m.quantizing = False, True
    return model



def _load_any_quantized(path: str | os.PathLike[str], model: nn.Module | None) -> nn.Module:
    return load_quantized(path, model)


register_spec_loader("quant", _load_any_quantized)
