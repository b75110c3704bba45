"""The exact reference the ONNX tests compare with (tests/quant/onnx_reference.py) is itself exact."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .onnx_reference import inline_functions, output_step, run_reference


def _qdq_conv(rng: np.random.Generator) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """``Q(x) -> DQ -> Conv(DQ(w int8, per channel), DQ(b int32, sx * sw)) -> Q -> DQ`` with odd scales."""
    a = {"sx": np.array(0.0371, np.float32), "zx": np.array(131, np.uint8),
         "sw": rng.uniform(0.004, 0.02, 3).astype(np.float32),
         "w": rng.integers(-127, 128, (3, 2, 3, 3)).astype(np.int8),
         "b": rng.integers(-3000, 3000, 3).astype(np.int32), "sy": np.array(0.0893, np.float32),
         "zy": np.array(120, np.uint8)}
    a["sb"] = (a["sx"] * a["sw"]).astype(np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xf"]),
             helper.make_node("DequantizeLinear", ["w", "sw"], ["wf"], axis=0),
             helper.make_node("DequantizeLinear", ["b", "sb"], ["bf"], axis=0),
             helper.make_node("Conv", ["xf", "wf", "bf"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["c", "sy", "zy"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 5, 5])],
                              [numpy_helper.from_array(v, k) for k, v in a.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), a


def test_a_quantized_conv_gives_the_codes_of_exact_integer_arithmetic():
    rng = np.random.default_rng(0)
    model, a = _qdq_conv(rng)
    x = rng.normal(size=(2, 2, 5, 5)).astype(np.float32)
    codes = np.rint(run_reference(model, x) / np.float64(a["sy"])).astype(np.int64) + int(a["zy"])
    # the same with int64 accumulation and rational requantization (round half to even)
    sx, sy = Fraction(float(a["sx"])), Fraction(float(a["sy"]))
    xq = np.clip(np.rint(x.astype(np.float64) / float(a["sx"])) + int(a["zx"]), 0, 255).astype(np.int64)
    xp = np.pad(xq - int(a["zx"]), [(0, 0), (0, 0), (1, 1), (1, 1)])
    want = np.empty_like(codes)
    for n, c, i, j in np.ndindex(*codes.shape):
        acc = int((xp[n, :, i:i + 3, j:j + 3] * a["w"][c].astype(np.int64)).sum())
        value = acc * sx * Fraction(float(a["sw"][c])) + int(a["b"][c]) * Fraction(float(a["sb"][c]))
        want[n, c, i, j] = min(max(round(value / sy) + int(a["zy"]), 0), 255)  # round(): half to even
    assert 0 < want.min() and want.max() < 255  # the codes are not all clipped: the test sees the rounding
    assert np.array_equal(codes, want)
    assert output_step(model) == float(a["sy"])


def test_function_calls_get_the_attribute_defaults_they_omit():
    """A conv unit as a function whose ``pads`` defaults to 1: a call without ``pads`` keeps its padding."""
    conv = helper.make_node("Conv", ["x", "w"], ["y"])
    conv.attribute.append(onnx.AttributeProto(name="pads", ref_attr_name="pads", type=onnx.AttributeProto.INTS))
    fn = helper.make_function("st", "C", ["x", "w"], ["y"], [conv], [helper.make_opsetid("", 17)],
                              attribute_protos=[helper.make_attribute("pads", [1, 1, 1, 1])])
    calls = [helper.make_node("C", ["x", "w"], ["h"], domain="st"),
             helper.make_node("C", ["h", "w"], ["y"], domain="st", pads=[0, 0, 0, 0])]
    w = numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")
    graph = helper.make_graph(calls, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("st", 1)],
                              functions=[fn], ir_version=9)
    pads = [[list(a.ints) for a in n.attribute] for n in inline_functions(model).graph.node]
    assert pads == [[[1, 1, 1, 1]], [[0, 0, 0, 0]]]
    x = np.arange(36, dtype=np.float32).reshape(1, 1, 6, 6)
    assert run_reference(model, x).shape == (1, 1, 4, 4)  # 6 -> 6 (padded) -> 4
