"""The lossless size passes of an exported QDQ graph: exact (bit-identical under the integer reference), the
same kernels on ONNX Runtime, and each pass on its own."""

from __future__ import annotations

import os

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from slimtorch.metrics.ort import onnx_session as ort_session
from slimtorch.models import create
from slimtorch.quant import Int8Static, export_onnx, quantize_
from slimtorch.quant.export.onnx_compact import (
    dedupe_initializers,
    dedupe_nodes,
    derive_bias_scales,
    drop_default_attributes,
    drop_default_zero_points,
    short_name,
)
from slimtorch.quant.export.onnx_export import _export, runtime_ops, tidy_qdq_graph

from .onnx_reference import DEEP_MODEL, assert_within_steps, output_step, run_reference


def _run(path, x: np.ndarray) -> np.ndarray:
    sess = ort_session(path)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_compacted_resnet_computes_exactly_what_the_plain_export_does(resnet20_int8, tmp_path):
    model, x, fp32 = resnet20_int8
    plain = _export(model, tmp_path / "plain.onnx", (x[:1],), dynamic_batch=True, tidy=False)
    proto = onnx.load(str(plain))
    tidy_qdq_graph(proto, compact=False)  # the same graph before the size passes
    onnx.save(proto, str(plain))
    # the size passes of onnx_compact only (no channel padding, no local functions)
    small = export_onnx(model, tmp_path / "small.onnx", x[:1], pad_input_channels=0, functions=False)
    # exact: bit-identical under the integer reference
    xs = x[:4].numpy()  # the reference's Conv is numpy: a few images
    ref = run_reference(small, xs)
    assert np.array_equal(run_reference(plain, xs), ref)
    # the same integer kernels after ONNX Runtime's fusions (the derived bias scales were folded back),
    # which agree with the reference up to a few flipped codes
    ops_plain, ops_small = runtime_ops(plain, tmp_path), runtime_ops(small, tmp_path)
    assert ops_small == ops_plain and ops_small["QLinearConv"] == 21 and ops_small["QGemm"] == 1
    assert_within_steps(_run(small, xs), ref, output_step(small), **DEEP_MODEL)
    g = onnx.load(str(small)).graph
    # per-channel bias scales are not stored: every int32 bias is dequantized with a derived Mul
    bias_dq = [n for n in g.node if n.op_type == "DequantizeLinear" and len(n.input) == 2
               and any(t.name == n.input[0] and t.data_type == TensorProto.INT32 for t in g.initializer)]
    muls = {n.output[0] for n in g.node if n.op_type == "Mul"}
    assert len(bias_dq) == 22 and all(n.input[1] in muls for n in bias_dq)
    # 3x3 stride-1 convs (the stem and 16 in the blocks) keep only their pads; no node carries a name
    attrs = [sorted(a.name for a in n.attribute) for n in g.node if n.op_type == "Conv"]
    assert attrs.count(["pads"]) == 17 and all("dilations" not in a and "group" not in a for a in attrs)
    assert not any(n.name for n in g.node)
    # 272k weights: the bookkeeping beside them is under 5 % of the file
    ratio = os.path.getsize(fp32) / os.path.getsize(small)
    assert ratio > 3.8, ratio
    assert os.path.getsize(small) < os.path.getsize(plain) - 5000


def test_short_names_are_distinct_and_short():
    names = [short_name(i) for i in range(5000)]
    assert len(set(names)) == 5000
    assert names[:3] == ["a", "b", "c"] and all(len(n) == 1 for n in names[:52]) and len(names[52]) == 2
    assert all(n[0].isalpha() for n in names)


def _dq(x, s, z=None, out="y", axis=None):
    node = helper.make_node("DequantizeLinear", [x, s] + ([z] if z else []), [out])
    if axis is not None:
        node.attribute.append(helper.make_attribute("axis", axis))
    return node


def test_zero_points_dropped_only_for_conv_weights_and_int32_biases():
    inits = {
        "w": numpy_helper.from_array(np.ones((2, 1, 1, 1), np.int8), "w"),
        "g": numpy_helper.from_array(np.ones((2, 3), np.int8), "g"),
        "b": numpy_helper.from_array(np.ones(2, np.int32), "b"),
        "s": numpy_helper.from_array(np.ones(2, np.float32), "s"),
        "z8": numpy_helper.from_array(np.zeros(2, np.int8), "z8"),
        "z32": numpy_helper.from_array(np.zeros(2, np.int32), "z32"),
        "nz": numpy_helper.from_array(np.array([0, 1], np.int8), "nz"),
    }
    nodes = [_dq("w", "s", "z8", "wd", 0), _dq("g", "s", "z8", "gd", 0), _dq("b", "s", "z32", "bd", 0),
             _dq("w", "s", "nz", "wn", 0),
             helper.make_node("Conv", ["x", "wd", "bd"], ["c"]), helper.make_node("Conv", ["x", "wn"], ["c2"]),
             helper.make_node("Gemm", ["v", "gd"], ["o"], transB=1)]
    drop_default_zero_points(nodes, inits)
    assert [len(n.input) for n in nodes[:4]] == [2, 3, 2, 3]  # Gemm weight and nonzero zero point kept


def test_default_attributes_dropped_and_others_kept():
    inits = {"w": numpy_helper.from_array(np.ones((4, 2, 3, 3), np.int8), "w")}
    plain = helper.make_node("Conv", ["x", "wd"], ["a"], dilations=[1, 1], group=1, kernel_shape=[3, 3],
                             pads=[0, 0, 0, 0], strides=[1, 1])
    strided = helper.make_node("Conv", ["x", "wd"], ["b"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                               strides=[2, 2], group=2)
    other_kernel = helper.make_node("Conv", ["x", "u"], ["c"], kernel_shape=[3, 3])  # weight shape unknown
    gemm = helper.make_node("Gemm", ["a", "b"], ["d"], alpha=1.0, beta=0.5, transA=0, transB=1)
    nodes = [_dq("w", "s", out="wd"), plain, strided, other_kernel, gemm]
    drop_default_attributes(nodes, inits)
    names = [sorted(a.name for a in n.attribute) for n in nodes[1:]]
    assert names == [[], ["group", "pads", "strides"], ["kernel_shape"], ["beta", "transB"]]


def test_bias_scale_derived_only_when_it_is_the_exact_product():
    sx = np.array(0.1, np.float32)
    sw = np.array([0.3, 0.7], np.float32)
    inits = {n: numpy_helper.from_array(v, n) for n, v in {
        "sx": sx, "sw": sw, "sb": (sx * sw).astype(np.float32), "sb2": (sx * sw * 1.0001).astype(np.float32),
        "w": np.ones((2, 1, 1, 1), np.int8), "b": np.ones(2, np.int32)}.items()}
    nodes = [_dq("xq", "sx", out="xd"), _dq("w", "sw", out="wd", axis=0), _dq("b", "sb", out="bd", axis=0),
             helper.make_node("Conv", ["xd", "wd", "bd"], ["y"]),
             _dq("b", "sb2", out="bd2", axis=0), helper.make_node("Conv", ["xd", "wd", "bd2"], ["y2"])]
    out = derive_bias_scales(nodes, inits)
    muls = [n for n in out if n.op_type == "Mul"]
    assert len(muls) == 1 and list(muls[0].input) == ["sx", "sw"] and "sb" not in inits and "sb2" in inits
    order = [n.output[0] for n in out]
    assert order.index(muls[0].output[0]) < order.index("bd")  # the Mul comes before its reader


def test_duplicates_merged_but_graph_outputs_kept():
    inits = {"s": numpy_helper.from_array(np.array(0.5, np.float32), "s"),
             "s2": numpy_helper.from_array(np.array(0.5, np.float32), "s2"),
             "t": numpy_helper.from_array(np.array(0.25, np.float32), "t")}
    nodes = [_dq("q", "s", out="a"), _dq("q", "s2", out="b"), _dq("q", "t", out="c"),
             helper.make_node("Add", ["a", "b"], ["d"]), helper.make_node("Add", ["a", "a"], ["out"]),
             helper.make_node("Add", ["a", "b"], ["out2"])]
    dedupe_initializers(nodes, inits, keep=set())
    assert set(inits) == {"s", "t"} and nodes[1].input[1] == "s"
    out = dedupe_nodes(nodes, outputs={"out", "out2"})
    assert [n.output[0] for n in out] == ["a", "c", "d", "out", "out2"]
    assert list(out[2].input) == ["a", "a"]  # the duplicate DQ's readers now read the first one


def test_compacted_graph_passes_the_onnx_checker(tmp_path):
    model = create("lenet5").eval()
    x = torch.randn(4, 1, 28, 28)
    quantize_(model, Int8Static(), calib_data=[x])
    path = export_onnx(model, tmp_path / "l.onnx", x[:1])
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].name == "input" and proto.graph.output[0].name == "output"
