"""Lossless size reductions of an exported QDQ graph: every rewrite leaves what the model computes unchanged.

An int8 model's file should be close to one byte per weight, but a small convolutional network carries a
few hundred tensors of bookkeeping beside its weights (per-channel scales, int32 biases, one Q/DQ pair per
activation). At ResNet-20's size (270 k weights) that bookkeeping was 8 % of the file. The passes here
remove what is redundant in it, each exact by the ONNX operator definitions:

* **optional inputs at their default**: an all-zero zero point of a ``DequantizeLinear`` whose input is a
  constant int32 bias or a ``Conv`` weight is dropped: the operator's default zero point is 0 of the
  input's type.
  Zero points of activation Q/DQ pairs stay, because ONNX Runtime only fuses pairs that spell them out.
* **attributes at their default**: ``Conv`` ``dilations``/``strides`` of ones, ``group=1``, all-zero
  ``pads``, and ``kernel_shape`` equal to the weight's spatial shape (the operator infers it from W);
  ``Gemm`` ``alpha=beta=1``, ``transA=0``.
* **derived constants**: an int32 bias is dequantized with scale ``s_x * s_w`` (per channel). When the
  stored scale is bit-for-bit that float32 product, it is replaced by a ``Mul`` of the two scales the graph
  already holds; ONNX Runtime folds it back to a constant when it loads the model.
* **duplicates**: initializers with the same type, shape and bytes are stored once, and nodes with the same
  operator, inputs and attributes are computed once (common-subexpression elimination, e.g. the two
  ``DequantizeLinear`` of a residual block's input). ONNX Runtime gives each fused node its own copy again
  (its ``EnsureUniqueDQForNodeUnit`` pass).
* **names**: node names and doc strings are dropped (optional in ONNX) and tensor names become the
  shortest strings available (``a``, ``b``, ... ``ba``); graph inputs and outputs keep theirs.
"""

from __future__ import annotations

import string
from collections.abc import Callable

import numpy as np
import onnx
from onnx import numpy_helper

_ALPHABET = string.ascii_letters + string.digits


def short_name(i: int) -> str:
    """The ``i``-th shortest name: ``a`` ... ``Z`` (52), then two characters, ..."""
    out = _ALPHABET[i % 52]  # a name starts with a letter (readable in tools that print it)
    i //= 52
    while i:
        i -= 1
        out += _ALPHABET[i % len(_ALPHABET)]
        i //= len(_ALPHABET)
    return out


def graph_index(nodes: list[onnx.NodeProto]
                ) -> tuple[dict[str, onnx.NodeProto], dict[str, list[tuple[onnx.NodeProto, int]]]]:
    """``(producer, readers)``: the node writing each tensor, and every ``(node, input index)`` reading it."""
    producer = {o: n for n in nodes for o in n.output}
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in nodes:
        for j, name in enumerate(n.input):
            readers.setdefault(name, []).append((n, j))
    return producer, readers


def attribute(node: onnx.NodeProto, name: str) -> onnx.AttributeProto | None:
    """The attribute ``name`` of ``node``, or None when it is not set (the operator default applies)."""
    return next((a for a in node.attribute if a.name == name), None)


def _drop_attr_if(node: onnx.NodeProto, name: str, is_default: Callable[[onnx.AttributeProto], bool]) -> None:
    """Remove attribute ``name`` of ``node`` when it is present and ``is_default(attribute)``."""
    a = attribute(node, name)
    if a is not None and is_default(a):
        node.attribute.remove(a)


def drop_default_zero_points(nodes: list[onnx.NodeProto], inits: dict[str, onnx.TensorProto]) -> None:
    """Remove all-zero zero points of ``DequantizeLinear`` nodes that dequantize a constant: int32 biases,
    and weights read only as a ``Conv`` weight (ONNX Runtime's ``QGemm`` fusion wants the weight zero
    point written out, its ``QLinearConv`` fusion does not)."""
    _, readers = graph_index(nodes)
    for node in nodes:
        if (node.op_type != "DequantizeLinear" or len(node.input) != 3 or node.input[0] not in inits
                or node.input[2] not in inits or np.any(numpy_helper.to_array(inits[node.input[2]]))):
            continue
        conv_weight = all(r.op_type == "Conv" and j == 1 for r, j in readers.get(node.output[0], []))
        if inits[node.input[0]].data_type == onnx.TensorProto.INT32 or conv_weight:
            del node.input[2]


def weight_shape(node: onnx.NodeProto, producer: dict[str, onnx.NodeProto],
                 inits: dict[str, onnx.TensorProto]) -> list[int] | None:
    """Shape of input 1 (the weight) when it is a constant, a dequantized constant, or a dequantized
    constant ``Pad`` with constant widths (the channel padding of :mod:`slimtorch.quant.export.onnx_kernels`)."""
    if len(node.input) < 2:
        return None
    name = node.input[1]
    src = producer.get(name)
    if src is not None and src.op_type == "DequantizeLinear":
        name = src.input[0]
    pad = producer.get(name)
    if pad is not None and pad.op_type == "Pad" and len(pad.input) == 2 and pad.input[1] in inits:
        widths = numpy_helper.to_array(inits[pad.input[1]])
        if pad.input[0] not in inits:
            return None
        dims = list(inits[pad.input[0]].dims)
        return [d + int(widths[i]) + int(widths[i + len(dims)]) for i, d in enumerate(dims)]
    return list(inits[name].dims) if name in inits else None


def drop_default_attributes(nodes: list[onnx.NodeProto], inits: dict[str, onnx.TensorProto]) -> None:
    """Remove ``Conv`` / ``Gemm`` attributes whose value is the operator's default."""
    producer, _ = graph_index(nodes)
    for node in nodes:
        if node.op_type == "Conv":
            _drop_attr_if(node, "dilations", lambda a: all(v == 1 for v in a.ints))
            _drop_attr_if(node, "strides", lambda a: all(v == 1 for v in a.ints))
            _drop_attr_if(node, "group", lambda a: a.i == 1)
            if attribute(node, "auto_pad") is None:
                _drop_attr_if(node, "pads", lambda a: not any(a.ints))
            w = weight_shape(node, producer, inits)
            _drop_attr_if(node, "kernel_shape", lambda a, w=w: w is not None and list(a.ints) == w[2:])
        elif node.op_type == "Gemm":
            _drop_attr_if(node, "alpha", lambda a: a.f == 1.0)
            _drop_attr_if(node, "beta", lambda a: a.f == 1.0)
            _drop_attr_if(node, "transA", lambda a: a.i == 0)


def derive_bias_scales(nodes: list[onnx.NodeProto], inits: dict[str, onnx.TensorProto]
                       ) -> list[onnx.NodeProto]:
    """Replace a stored bias scale equal to ``s_x * s_w`` (float32, bit for bit) by a ``Mul`` of the two.

    Each ``Mul`` is placed right before the bias ``DequantizeLinear`` that reads it (it reads only
    initializers, so the order stays topological)."""
    producer, readers = graph_index(nodes)
    mul_before: dict[int, onnx.NodeProto] = {}  # id(bias DQ) -> its Mul
    for node in nodes:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) != 3:
            continue
        dqs = [producer.get(i) for i in node.input]
        if not all(d is not None and d.op_type == "DequantizeLinear" for d in dqs):
            continue
        dx, dw, db = dqs
        names = (dx.input[1], dw.input[1], db.input[1])
        if not all(n in inits for n in names) or len(readers.get(db.input[1], [])) != 1:
            continue
        sx, sw, sb = (numpy_helper.to_array(inits[n]) for n in names)
        prod = (sx.astype(np.float32) * sw.astype(np.float32)).astype(np.float32)
        if sx.size == 1 and prod.shape == sb.shape and prod.tobytes() == sb.astype(np.float32).tobytes():
            mul_out = db.input[1] + "__derived"
            mul_before[id(db)] = onnx.helper.make_node("Mul", [names[0], names[1]], [mul_out])
            del inits[db.input[1]]
            db.input[1] = mul_out
    return [m for n in nodes for m in ([mul_before[id(n)]] if id(n) in mul_before else []) + [n]]


def dedupe_initializers(nodes: list[onnx.NodeProto], inits: dict[str, onnx.TensorProto],
                        keep: set[str]) -> None:
    """Store identical constants once (same type, shape and bytes); ``keep`` names are left alone."""
    first: dict[tuple[int, tuple[int, ...], bytes], str] = {}
    alias: dict[str, str] = {}
    for name, t in list(inits.items()):
        if name in keep:
            continue
        key = (t.data_type, tuple(t.dims), numpy_helper.to_array(t).tobytes())
        if key in first:
            alias[name] = first[key]
            del inits[name]
        else:
            first[key] = name
    for node in nodes:
        for j, name in enumerate(node.input):
            node.input[j] = alias.get(name, name)


def dedupe_nodes(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """Common-subexpression elimination: a node equal to an earlier one (operator, domain, inputs,
    attributes) is removed and its outputs read from the earlier node. ``nodes`` in topological order;
    nodes writing a graph output (``outputs``) are kept."""
    seen: dict[bytes, onnx.NodeProto] = {}
    alias: dict[str, str] = {}
    out: list[onnx.NodeProto] = []
    for node in nodes:
        for j, name in enumerate(node.input):
            node.input[j] = alias.get(name, name)
        key_node = onnx.NodeProto()
        key_node.op_type, key_node.domain = node.op_type, node.domain
        key_node.input.extend(node.input)
        key_node.attribute.extend(sorted(node.attribute, key=lambda a: a.name))
        key = key_node.SerializeToString(deterministic=True) + bytes([len(node.output)])
        if key in seen and not any(o in outputs for o in node.output):
            for mine, theirs in zip(node.output, seen[key].output):
                alias[mine] = theirs
            continue
        seen.setdefault(key, node)
        out.append(node)
    return out
