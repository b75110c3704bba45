"""Repeated QDQ node units stored once as model-local ONNX functions: exact (bit-identical under the integer
reference), the same kernels on ONNX Runtime, smaller files."""

from __future__ import annotations

import collections
import os

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.inliner import inline_local_functions
from torch import nn

from slimtorch.metrics.ort import onnx_session as ort_session
from slimtorch.quant import Int8Static, export_onnx, quantize_
from slimtorch.quant.export.experimental.onnx_functions import FUNCTION_DOMAIN, node_units, outline_functions
from slimtorch.quant.export.onnx_export import runtime_ops

from .onnx_reference import DEEP_MODEL, assert_within_steps, output_step, run_reference


def _run(path, x: np.ndarray) -> np.ndarray:
    sess = ort_session(path)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _ops(graph: onnx.GraphProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in graph.node)


def _attrs(node: onnx.NodeProto) -> dict[str, list[int]]:
    return {a.name: list(a.ints) for a in node.attribute}


def test_resnet20_convs_and_adds_become_two_functions_with_identical_outputs(resnet20_int8, tmp_path):
    model, x, fp32 = resnet20_int8
    flat = export_onnx(model, tmp_path / "flat.onnx", x[:1], functions=False)
    small = export_onnx(model, tmp_path / "fn.onnx", x[:1], functions=True)  # opt-in
    # exact: bit-identical under the integer reference (which inlines the functions, as ONNX Runtime does)
    xs = x[:4].numpy()  # the reference's Conv is numpy: a few images
    ref = run_reference(small, xs)
    assert np.array_equal(run_reference(flat, xs), ref)
    # the same fused integer kernels (ONNX Runtime inlines the functions before fusing), which agree
    # with the reference up to a few flipped codes
    assert runtime_ops(small, tmp_path) == runtime_ops(flat, tmp_path)
    assert_within_steps(_run(small, xs), ref, output_step(small), **DEEP_MODEL)
    proto = onnx.load(str(small))
    onnx.checker.check_model(proto, full_check=True)
    flat_graph = onnx.load(str(flat)).graph
    # inlined, the file is the flat graph again: same operators, same initializer bytes
    inlined = inline_local_functions(proto).graph
    assert _ops(inlined) == _ops(flat_graph)
    assert (sorted(numpy_helper.to_array(t).tobytes() for t in inlined.initializer)
            == sorted(numpy_helper.to_array(t).tobytes() for t in flat_graph.initializer))
    # one function for all 21 convolutions (the stride-2 and 1x1 shortcut ones included), one for the adds
    assert {f.name: len(f.node) for f in proto.functions} == {"C0": 6, "A0": 3}
    assert _ops(proto.graph)["C0"] == 21 and _ops(proto.graph)["A0"] == 9 and len(proto.graph.node) == 44
    assert ("st", 1) in {(o.domain, o.version) for o in proto.opset_import} and proto.ir_version >= 9
    conv_fn = next(f for f in proto.functions if f.name == "C0")
    conv = next(n for n in conv_fn.node if n.op_type == "Conv")
    assert {a.name: a.ref_attr_name for a in conv.attribute} == {"pads": "pads", "strides": "strides"}
    # pads default to the common 3x3 value; strides default to the operator's own 1 (declared by name)
    assert {a.name: list(a.ints) for a in conv_fn.attribute_proto} == {"pads": [1, 1, 1, 1]}
    assert list(conv_fn.attribute) == ["strides"]
    calls = collections.Counter(str(sorted(_attrs(n).items())) for n in proto.graph.node if n.op_type == "C0")
    assert calls == {"[]": 17, "[('strides', [2, 2])]": 2, "[('pads', [0, 0, 0, 0]), ('strides', [2, 2])]": 2}
    # 3.6 kB less: ResNet-20 clears 3.9x smaller than fp32 (a float file of ~1.1 MB)
    assert os.path.getsize(flat) - os.path.getsize(small) > 3500
    assert os.path.getsize(fp32) / os.path.getsize(small) > 3.9


def _dq(x, s, out, z=None, axis=None):
    node = helper.make_node("DequantizeLinear", [x, s] + ([z] if z else []), [out])
    if axis is not None:
        node.attribute.append(helper.make_attribute("axis", axis))
    return node


def _conv_unit(k: int, x: str, w: str) -> list[onnx.NodeProto]:
    """``Conv(x, DQ(w))`` with its output ``Q -> DQ``; writes ``y{k}`` (float)."""
    return [_dq(w, "sw", f"wf{k}", axis=0),
            helper.make_node("Conv", [x, f"wf{k}"], [f"c{k}"], pads=[1, 1, 1, 1]),
            helper.make_node("QuantizeLinear", [f"c{k}", "s", "z"], [f"q{k}"]),
            _dq(f"q{k}", "s", f"y{k}", "z")]


def _inits(shared_weight: bool) -> dict[str, TensorProto]:
    """Scales and 7-bit weight codes ([-64, 63], exact on every CPU's int8 kernels, as the portable target's);
    the weight scale is not a round number, which would make exact ties: with 0.02, acc * 0.02 lies a hair
    below k + 0.5 for every acc = 50k + 25, where ONNX Runtime's float32 requantization rounds differently."""
    rng = np.random.default_rng(0)
    arrays = {"sw": np.full(2, 0.0213, np.float32), "s": np.array(0.1, np.float32), "z": np.array(128, np.uint8),
              "w0": rng.integers(-64, 64, (2, 2, 3, 3)).astype(np.int8)}
    arrays["w1"] = arrays["w0"] if shared_weight else rng.integers(-64, 64, (2, 2, 3, 3)).astype(np.int8)
    return {k: numpy_helper.from_array(v, k) for k, v in arrays.items()}


def test_a_unit_takes_its_constant_producers_but_not_its_activation_input():
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]), _dq("xq", "s", "xf", "z"),
             *_conv_unit(0, "xf", "w0"), *_conv_unit(1, "y0", "w1")]
    units = node_units(nodes, _inits(False), {"y1"})
    assert [(a.op_type, [n.op_type for n in u]) for a, u in units] == [
        ("Conv", ["DequantizeLinear", "Conv", "QuantizeLinear", "DequantizeLinear"])] * 2
    # the input's Q/DQ (no constant in it) stays outside every unit
    assert all(nodes[1] not in u for _, u in units)


def test_a_weight_dequantization_read_by_two_convs_stays_outside_both():
    second = _conv_unit(1, "y0", "w1")[1:]  # its conv reads the first unit's dequantized weight instead
    second[0].input[1] = "wf0"
    nodes = [*_conv_unit(0, "x", "w0"), *second]
    units = node_units(nodes, _inits(False), {"y1"})
    assert [[n.op_type for n in u] for _, u in units] == [["Conv", "QuantizeLinear", "DequantizeLinear"]] * 2


def test_repeated_units_are_outlined_and_the_model_computes_the_same(tmp_path):
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]), _dq("xq", "s", "xf", "z"),
             *_conv_unit(0, "xf", "w0"), *_conv_unit(1, "y0", "w1"), *_conv_unit(2, "y1", "w0")]
    inits = _inits(False)
    new_nodes, funcs = outline_functions(nodes, inits, {"y2"}, [helper.make_opsetid("", 17)])
    assert [n.op_type for n in new_nodes] == ["QuantizeLinear", "DequantizeLinear", "C0", "C0", "C0"]
    assert [list(n.input) for n in new_nodes[2:]] == [["w0", "sw", "xf", "s", "z"], ["w1", "sw", "y0", "s", "z"],
                                                     ["w0", "sw", "y1", "s", "z"]]
    assert new_nodes[-1].output[0] == "y2" and all(n.domain == FUNCTION_DOMAIN for n in new_nodes[2:])
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])
    y_info = helper.make_tensor_value_info("y2", TensorProto.FLOAT, [1, 2, 5, 5])

    def save(ns, fs, name):
        graph = helper.make_graph(ns, "g", [x_info], [y_info], list(inits.values()))
        opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(FUNCTION_DOMAIN, 1)] if fs else [])
        model = helper.make_model(graph, opset_imports=opsets, functions=fs, ir_version=9)
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(tmp_path / name))
        return tmp_path / name

    x = np.random.default_rng(1).normal(size=(1, 2, 5, 5)).astype(np.float32)
    flat, fn = save(nodes, [], "flat.onnx"), save(new_nodes, funcs, "fn.onnx")
    ref = run_reference(fn, x)  # exact: bit-identical under the integer reference
    assert np.array_equal(run_reference(flat, x), ref)
    # ONNX Runtime within one step of the units' output scale s = 0.1 (its last requantization, in float32,
    # may round a value at a rounding boundary the other way; an earlier flip, ~3e-5 of 100 values, is not
    # expected, and the 7-bit weights never saturate an int16 pair sum)
    assert_within_steps(_run(fn, x), ref, 0.1, 1)
    assert os.path.getsize(tmp_path / "fn.onnx") < os.path.getsize(tmp_path / "flat.onnx")


def test_units_are_left_flat_when_a_function_would_not_save_bytes():
    """Two ``Relu -> Q`` units: the function's own bytes outweigh what two calls save."""
    nodes = []
    for k in range(2):
        nodes += [helper.make_node("Relu", [f"x{k}"], [f"r{k}"]),
                  helper.make_node("QuantizeLinear", [f"r{k}", "s", "z"], [f"q{k}"])]
    new_nodes, funcs = outline_functions(nodes, _inits(False), {"q0", "q1"}, [helper.make_opsetid("", 17)])
    assert funcs == [] and new_nodes == nodes


def test_a_model_without_repeats_gets_no_functions(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1)).eval()  # one conv: nothing repeats
    x = torch.randn(4, 4, 8, 8)
    quantize_(m, Int8Static(), calib_data=[x])
    proto = onnx.load(str(export_onnx(m, tmp_path / "m.onnx", x[:1])))
    assert not proto.functions and FUNCTION_DOMAIN not in {o.domain for o in proto.opset_import}
    assert _ops(proto.graph)["Conv"] == 1
