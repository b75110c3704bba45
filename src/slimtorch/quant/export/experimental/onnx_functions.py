"""Outline repeated QDQ node units of an exported graph into model-local ONNX functions (lossless).

After :mod:`slimtorch.quant.export.onnx_compact` an int8 ResNet-20 still spells out every convolution as six
nodes: ``DequantizeLinear`` of the weight, a ``Mul`` deriving the bias scale, ``DequantizeLinear`` of the
bias, the ``Conv``, and the ``QuantizeLinear`` / ``DequantizeLinear`` pair of its output. The 21
convolutions differ only in which tensors they read, so the graph repeats the same few hundred bytes of
operator names and attributes 21 times (a node's ``op_type`` string, "DequantizeLinear", is longer than
most of its inputs' names).

ONNX (IR version >= 8) lets a model define *local functions* (``ModelProto.functions``): a named subgraph
with formal inputs and outputs, called like an operator from the main graph. This pass finds the node
unit around each quantized operator, groups units that are identical up to the names of the tensors
they read, and replaces every unit of a repeated group by one call node. What the model computes is
unchanged by definition: a call means its function body with the actual inputs substituted. ONNX Runtime
inlines local functions when it loads a model, before its graph optimizations, so its QDQ fusions
(``QLinearConv``, ``QLinearAdd``, ...) see exactly the flat graph they saw before. On ResNet-20 the pass
turns 167 nodes into 44 (21 convolution calls, 9 residual-add calls) and removes 3.8 kB of the file.

A *unit* is anchored at an operator ``X`` whose only reader is a ``QuantizeLinear`` ``Q``:

* ``X`` and ``Q``;
* the ``DequantizeLinear`` reading ``Q`` when it is ``Q``'s only reader (the unit then outputs float);
* every node computing one of ``X``'s inputs purely from constants and read by nothing outside the unit
  (weight and bias ``DequantizeLinear``, the bias-scale ``Mul``).

Activation ``DequantizeLinear`` nodes of a unit's *input* belong to the unit that produced it, so units
chain float to float and a residual ``Add`` still shares the dequantized block input.

Convolution units that differ only in ``pads``, ``strides``, ``dilations`` or ``group`` share one function:
the body's ``Conv`` takes those from the call (ONNX attribute references, ``ref_attr_name``), with the
group's most common value as the function's default (``FunctionProto.attribute_proto``, IR version 9), so
only the calls that differ spell it out. ResNet-20's stride-1, stride-2 and 1x1 shortcut convolutions
become one function.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import NamedTuple

import onnx
from onnx import helper

from slimtorch.quant.export.onnx_compact import graph_index, short_name, weight_shape

#: domain of the functions this pass writes (short: every call node spells it out)
FUNCTION_DOMAIN = "st"
FUNCTION_DOMAIN_VERSION = 1
#: constant-computing operators a unit takes in with its quantized operator (weight/bias dequantization and
#: the bias-scale product)
ABSORBED_OPS = {"DequantizeLinear", "Mul"}
#: IR version that added default values of function attributes (``FunctionProto.attribute_proto``)
IR_VERSION_ATTRIBUTE_DEFAULTS = 9

#: Conv attributes a shared function takes from its call, and their operator defaults for ``n`` spatial dims
_CONV_PARAMS = {"pads": lambda n: (0,) * (2 * n), "strides": lambda n: (1,) * n, "dilations": lambda n: (1,) * n,
                "group": lambda n: 1}


def _operator_default(attr: str, spatial: int) -> int | tuple[int, ...]:
    return _CONV_PARAMS[attr](spatial)


def _conv_params(conv: onnx.NodeProto, producer: dict[str, onnx.NodeProto],
                 inits: dict[str, onnx.TensorProto]) -> dict[str, int | tuple[int, ...]] | None:
    """The value of each :data:`_CONV_PARAMS` attribute of ``conv`` (the operator default where it is not
    set), or None when its weight shape is unknown or it pads by ``auto_pad``."""
    shape = weight_shape(conv, producer, inits)
    if shape is None or any(a.name == "auto_pad" for a in conv.attribute):
        return None
    given = {a.name: (a.i if a.type == onnx.AttributeProto.INT else tuple(a.ints)) for a in conv.attribute}
    return {name: given.get(name, _operator_default(name, len(shape) - 2)) for name in _CONV_PARAMS}


def _attribute(name: str, value: int | tuple[int, ...]) -> onnx.AttributeProto:
    return helper.make_attribute(name, value if isinstance(value, int) else list(value))


def _constant_producers(name: str, producer: dict[str, onnx.NodeProto], inits: dict[str, onnx.TensorProto],
                        outputs: set[str]) -> list[onnx.NodeProto] | None:
    """The nodes computing tensor ``name`` from constants, or None when it depends on an activation (a
    graph input or a node reading one) or one of those nodes writes a graph output.

    Only :data:`ABSORBED_OPS` are collected. Another operator applied to initializers alone (the weight
    ``Pad`` of :mod:`slimtorch.quant.export.onnx_kernels`) is a constant too, but one particular to its layer: it
    stays outside and its output becomes an input of the unit, so the unit still matches its siblings."""
    node = producer.get(name)
    if node is None or any(o in outputs for o in node.output):
        return None
    if node.op_type not in ABSORBED_OPS:
        return [] if all(not i or i in inits for i in node.input) else None
    found = [node]
    for i in node.input:
        if i and i not in inits:
            sub = _constant_producers(i, producer, inits, outputs)
            if sub is None:
                return None
            found += sub
    return found


def node_units(nodes: list[onnx.NodeProto], inits: dict[str, onnx.TensorProto],
               outputs: set[str]) -> list[tuple[onnx.NodeProto, list[onnx.NodeProto]]]:
    """The quantized node units of a QDQ graph (see the module docstring) as ``(anchor, nodes)``, the
    nodes in graph order.

    ``nodes`` in topological order; ``outputs`` are the graph output names. A node belongs to one unit
    at most; nodes in no unit are left to the caller."""
    producer, readers = graph_index(nodes)
    position = {id(n): k for k, n in enumerate(nodes)}
    taken: set[int] = set()
    units = []
    for x in nodes:
        if x.op_type in ("QuantizeLinear", "DequantizeLinear") or len(x.output) != 1 or x.output[0] in outputs:
            continue
        x_readers = readers.get(x.output[0], [])
        if len(x_readers) != 1 or x_readers[0][0].op_type != "QuantizeLinear":
            continue
        q = x_readers[0][0]
        unit = [x, q]
        q_readers = readers.get(q.output[0], [])
        if len(q_readers) == 1 and q_readers[0][0].op_type == "DequantizeLinear" and q.output[0] not in outputs:
            unit.append(q_readers[0][0])
        for name in x.input:
            if not name or name in inits:
                continue
            const = _constant_producers(name, producer, inits, outputs)
            if const is None:
                continue
            ids = {id(n) for n in unit + const}
            if all(id(r) in ids for n in const for o in n.output for r, _ in readers.get(o, [])):
                unit += [n for n in const if n not in unit]
        if any(id(n) in taken for n in unit):
            continue
        taken.update(id(n) for n in unit)
        units.append((x, sorted(unit, key=lambda n: position[id(n)])))
    return units


class _Member(NamedTuple):
    """One unit of a group, as it will be outlined.

    ``body`` is the unit with every tensor renamed by order of appearance (what a function body holds;
    ``formal_in`` / ``formal_out`` its inputs and outputs), without node names and, on the anchor
    (``body[anchor_at]``), without the free Conv attributes ``params``; ``actual_in`` / ``actual_out`` are
    the graph tensors a call of it reads and writes."""

    nodes: list[onnx.NodeProto]
    body: list[onnx.NodeProto]
    anchor_at: int
    params: dict[str, int | tuple[int, ...]]
    formal_in: list[str]
    formal_out: list[str]
    actual_in: list[str]
    actual_out: list[str]

    def key(self) -> bytes:
        """Equal for two units exactly when one is the other with other tensors read and written (and
        other free Conv attributes)."""
        return b"".join(m.SerializeToString(deterministic=True) for m in self.body) + "|".join(
            self.formal_out).encode()


def _member(unit: list[onnx.NodeProto], anchor: onnx.NodeProto, params: dict[str, int | tuple[int, ...]],
            readers: dict[str, list[tuple[onnx.NodeProto, int]]], outputs: set[str]) -> _Member:
    """Rename the unit's tensors by order of appearance and find what it reads and writes outside."""
    ids = {id(n) for n in unit}
    written = {o for n in unit for o in n.output}
    actual_in: list[str] = []
    local: dict[str, str] = {}
    body = []
    for n in unit:
        m = onnx.NodeProto()
        m.op_type = n.op_type
        if n.domain:  # an empty domain is the default: left unset, it costs no bytes
            m.domain = n.domain
        m.attribute.extend(sorted((a for a in n.attribute if n is not anchor or a.name not in params),
                                  key=lambda a: a.name))
        for name in n.input:
            if name and name not in written and name not in local:
                local[name] = short_name(len(local))
                actual_in.append(name)
            m.input.append(local[name] if name else "")
        for name in n.output:
            local[name] = short_name(len(local))
            m.output.append(local[name])
        body.append(m)
    actual_out = [o for n in unit for o in n.output
                  if o in outputs or any(id(r) not in ids for r, _ in readers.get(o, []))]
    return _Member(unit, body, unit.index(anchor), params, [local[t] for t in actual_in],
                   [local[t] for t in actual_out], actual_in, actual_out)


def outline_functions(nodes: list[onnx.NodeProto], inits: dict[str, onnx.TensorProto], outputs: set[str],
                      opset_imports: Iterable[onnx.OperatorSetIdProto],
                      domain: str = FUNCTION_DOMAIN) -> tuple[list[onnx.NodeProto], list[onnx.FunctionProto]]:
    """Replace repeated node units by calls of model-local functions.

    Args:
        nodes: the graph's nodes in topological order (not modified).
        inits: its initializers by name.
        outputs: graph output names (a unit never hides one).
        opset_imports: the model's operator sets; function bodies import the same.
        domain: the functions' domain. The caller adds ``(domain, 1)`` to the model's ``opset_import``
            when functions come back.

    Returns:
        ``(nodes, functions)``: the new node list (still topological: each call sits where its unit's last
        node was) and the functions to append to ``ModelProto.functions``. A group of units is outlined
        only when it occurs at least twice and the calls plus the function take fewer bytes than the
        nodes they replace.
    """
    producer, readers = graph_index(nodes)
    groups: dict[bytes, list[_Member]] = {}
    anchors: dict[bytes, str] = {}
    for anchor, unit in node_units(nodes, inits, outputs):
        params = (_conv_params(anchor, producer, inits) if anchor.op_type == "Conv" else None) or {}
        member = _member(unit, anchor, params, readers, outputs)
        key = member.key()
        groups.setdefault(key, []).append(member)
        anchors[key] = anchor.op_type
    opsets = [helper.make_opsetid(o.domain, o.version) for o in opset_imports if o.domain != domain]
    replace: dict[int, onnx.NodeProto | None] = {}
    functions: list[onnx.FunctionProto] = []
    counts: dict[str, int] = {}
    for key, members in groups.items():
        if len(members) < 2:
            continue
        # named after the quantized operator and numbered: C0, C1 (Conv), A0 (Add), ...
        letter = anchors[key][0]
        fname = f"{letter}{counts.get(letter, 0)}"
        func, calls = _function(fname, domain, members, opsets)
        before = sum(n.ByteSize() for m in members for n in m.nodes)
        if sum(c.ByteSize() for c in calls) + func.ByteSize() >= before:
            continue
        counts[letter] = counts.get(letter, 0) + 1
        functions.append(func)
        for m, call in zip(members, calls, strict=True):
            for n in m.nodes[:-1]:
                replace[id(n)] = None
            replace[id(m.nodes[-1])] = call
    out = [replace.get(id(n), n) for n in nodes]
    return [n for n in out if n is not None], functions


def _function(name: str, domain: str, members: list[_Member], opsets: list[onnx.OperatorSetIdProto]
              ) -> tuple[onnx.FunctionProto, list[onnx.NodeProto]]:
    """The function for a group of equal units (body: the first member's renamed body) and one call per
    member. A free Conv attribute with one value in the whole group is written into the body (nothing when
    it is the operator default); one that varies becomes an attribute reference whose default is its most
    common value, and each call passes it only when its value differs."""
    first = members[0]
    literal: dict[str, int | tuple[int, ...]] = {}
    defaults: dict[str, int | tuple[int, ...]] = {}
    for attr in first.params:
        values = Counter(m.params[attr] for m in members)
        if len(values) == 1:
            literal[attr] = first.params[attr]
        else:
            defaults[attr] = values.most_common(1)[0][0]
    spatial = len(first.params["strides"]) if first.params else 0  # type: ignore[arg-type]
    body = [onnx.NodeProto() for _ in first.body]
    for m, n in zip(body, first.body, strict=True):
        m.CopyFrom(n)
    anchor = body[first.anchor_at]
    for attr, value in literal.items():
        if value != _operator_default(attr, spatial):
            anchor.attribute.append(_attribute(attr, value))
    for attr, value in defaults.items():
        kind = onnx.AttributeProto.INT if isinstance(value, int) else onnx.AttributeProto.INTS
        anchor.attribute.append(helper.make_attribute_ref(attr, kind))
    func = helper.make_function(domain, name, first.formal_in, first.formal_out, body, opsets)
    # every referenced attribute is declared: with its default value (attribute_proto), or by name only
    # (attribute) when the default is the operator's own, which an unset reference gives anyway
    for attr, value in defaults.items():
        if value != _operator_default(attr, spatial):
            func.attribute_proto.append(_attribute(attr, value))
        else:
            func.attribute.append(attr)
    calls = []
    for m in members:
        call = helper.make_node(name, m.actual_in, m.actual_out, domain=domain)
        call.attribute.extend(_attribute(attr, m.params[attr]) for attr, value in defaults.items()
                              if m.params[attr] != value)
        calls.append(call)
    return func, calls

