"""An exact, instruction-set-independent reference for exported QDQ graphs (a test helper).

ONNX Runtime fuses ``DQ -> Conv -> Q`` into integer kernels, and which kernel runs depends on the CPU
(AVX2, AVX-512 VNNI, AMX): kernels may differ, and those of x86 CPUs without VNNI saturate u8 x s8
pairs. So no test compares two ONNX Runtime runs for bit-equality. A rewrite of a graph is *exact* when
the original and the rewritten graph give bit-identical outputs under :func:`run_reference`, and ONNX
Runtime is checked against that reference within a tolerance derived from the quantization scales
(:func:`output_step`, :func:`assert_within_steps`).

:func:`run_reference` is ``onnx.reference.ReferenceEvaluator`` (numpy) with ``QuantizeLinear`` and
``DequantizeLinear`` replaced by float64 versions: a dequantized 8-bit code ``(q - z) * s`` (9 bits
times a float32 scale's 24) is exact in float64, every Conv / Gemm / Add then runs in float64 (relative
error ~1e-16 per product, ~1e-13 over a reduction) and ``QuantizeLinear`` rounds half to even. So the
codes are those of exact arithmetic on the integer codes, unless a pre-rounding value lies within
~1e-13 of a rounding boundary.

Model-local functions are inlined first (:func:`inline_functions`), as ONNX Runtime does on load: the
reference evaluator cannot run a call that omits an attribute the function declares without a default
(``strides`` of our conv unit), and ONNX's inliner (onnx 1.23) drops the defaults a function declares
(``pads`` of our conv unit), so those are written onto the calls before inlining.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.inliner import inline_local_functions
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

#: How far ONNX Runtime may be off the reference in a deep int8 model (ResNet-20, LeNet-5), in
#: output_step()s: ``assert_within_steps(ort, ref, step, **DEEP_MODEL)``.
#:
#: ORT requantizes in float32 (the int32 accumulator times a float32 multiplier, rounded; the adds and
#: the pool alike), so a code comes out one off the exact one when the exact value lies within float32
#: rounding of a rounding boundary: at most 2 * 255 * 2^-24 ~ 3e-5 of the values, and kernels of other
#: CPUs may round such values differently. ResNet-20 requantizes ~2e5 values per 32x32 image (21 convs,
#: 9 adds, the pool), so an image now and then gets a flipped code, which spreads through the layers
#: after it; at the classifier, k of its input codes off by one move a logit by at most k steps. So:
#: at most 8 steps anywhere (8 pooled codes off), and 1 step on average, since a flip touches a minority
#: of the images. Measured on ResNet-20: max 5.8, mean 0.34 on AVX-512 VNNI (3 models x 64 images);
#: max 4.8, mean 0.43 on AVX2 (qemu Haswell) with 7-bit weights. With 8-bit weights AVX2's saturating
#: u8 x s8 pair sums move every output: max 7.7 to 10, mean 2.8 to 3.1 steps, which the mean catches.
DEEP_MODEL = {"steps": 8, "mean_steps": 1.0}


def _along(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A scale or zero point broadcast along ``axis`` of an ``ndim``-D tensor (a single value stays one)."""
    if v.size == 1:
        return v.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return v.reshape(shape)


def dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None = None, axis: int = 1
               ) -> np.ndarray:
    """``(q - z) * s`` in float64: exact for 8-bit codes; an int32 bias code is rounded at 2^-53."""
    d = q.astype(np.int64)
    if zero_point is not None:
        d = d - _along(zero_point.astype(np.int64), q.ndim, axis)
    return d * _along(scale.astype(np.float64), q.ndim, axis)


class QuantizeLinear(OpRun):
    """``saturate(round_half_even(x / s) + z)`` with ``x / s`` in float64."""

    op_domain = ""

    def _run(self, x, y_scale, zero_point=None, axis=1, block_size=0, **_):  # the rest is for float types
        assert not block_size, "blocked quantization is not used by our exports"
        dtype = np.uint8 if zero_point is None else zero_point.dtype
        z = 0 if zero_point is None else _along(zero_point.astype(np.int64), x.ndim, axis)
        q = np.rint(x.astype(np.float64) / _along(y_scale.astype(np.float64), x.ndim, axis)) + z
        info = np.iinfo(dtype)
        return (np.clip(q, info.min, info.max).astype(dtype),)


class DequantizeLinear(OpRun):
    """:func:`dequantize` as an operator (float64 output)."""

    op_domain = ""

    def _run(self, x, x_scale, x_zero_point=None, axis=1, block_size=0, **_):
        assert not block_size, "blocked quantization is not used by our exports"
        return (dequantize(x, x_scale, x_zero_point, axis),)


def _load(path: str | os.PathLike[str] | onnx.ModelProto) -> onnx.ModelProto:
    return path if isinstance(path, onnx.ModelProto) else onnx.load(str(path))


def inline_functions(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with its model-local functions inlined, each call first given the default values of the
    function's attributes it does not set (``onnx.inliner`` alone would drop them)."""
    proto = copy.deepcopy(proto)
    defaults = {(f.domain, f.name): f.attribute_proto for f in proto.functions}
    for node in proto.graph.node:
        given = {a.name for a in node.attribute}
        node.attribute.extend(a for a in defaults.get((node.domain, node.op_type), ()) if a.name not in given)
    return inline_local_functions(proto)


def run_reference(path: str | os.PathLike[str] | onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The first output of the model on input ``x``, computed exactly (see the module docstring).

    A float output comes back as float64: compare two graphs with ``np.array_equal``, and ONNX Runtime's
    float32 output with :func:`assert_within_steps`.
    """
    proto = inline_functions(_load(path))
    sess = ReferenceEvaluator(proto, new_ops=[QuantizeLinear, DequantizeLinear])
    return sess.run(None, {proto.graph.input[0].name: x})[0]


def output_step(path: str | os.PathLike[str] | onnx.ModelProto) -> float:
    """The most one quantization step moves an element of the graph's first output.

    When a ``DequantizeLinear`` writes the output: its scale. When a float ``Gemm`` (a classifier) does:
    one step of the Gemm's quantized input times its largest dequantized weight.
    """
    g = inline_functions(_load(path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    last = producer[g.output[0].name]
    if last.op_type == "DequantizeLinear":
        return float(inits[last.input[1]])
    assert last.op_type == "Gemm", f"no quantization step known for a {last.op_type} output"
    x_dq, w_dq = producer[last.input[0]], producer[last.input[1]]
    axis = next((a.i for a in w_dq.attribute if a.name == "axis"), 1)
    w = dequantize(*(inits[i] for i in w_dq.input), axis=axis)
    return float(inits[x_dq.input[1]]) * float(np.abs(w).max())


def assert_within_steps(actual: np.ndarray, reference: np.ndarray, step: float, steps: float,
                        mean_steps: float | None = None) -> None:
    """``actual`` (ONNX Runtime's float32 output) is within ``steps`` quantization steps of ``reference``
    everywhere, and within ``mean_steps`` on average if given, plus float32 rounding of the values."""
    diff = np.abs(actual.astype(np.float64) - reference)
    slack = 1e-5 * float(np.abs(reference).max())
    err = float(diff.max())
    assert err <= steps * step + slack, (
        f"ONNX Runtime is {err / step:.2f} steps of {step:.4g} off the reference (allowed {steps})")
    if mean_steps is not None:
        mean = float(diff.mean())
        assert mean <= mean_steps * step + slack, (
            f"ONNX Runtime is {mean / step:.2f} steps of {step:.4g} off the reference on average "
            f"(allowed {mean_steps})")
