"""Fake-quant modules: an activation/weight quantizer and quantized Conv/Linear wrappers.

The simulated model computes in float but every quantized tensor is snapped to its integer grid
(``x_hat = s * (clamp(round(x / s) + z) - z)``), so its accuracy is the int8 model's accuracy. During
ONNX export (``torch.onnx.is_in_onnx_export()``) the same modules emit ``QuantizeLinear`` /
``DequantizeLinear`` nodes carrying our scales and zero points, and weights as int8 initializers, so
ONNX Runtime can fuse them into integer kernels (see :mod:`slimtorch.quant.export.onnx_export`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimtorch.core.registry import TypeRegistry
from slimtorch.quant.modules import onnx_ops
from slimtorch.quant.observers import Observer
from slimtorch.quant.primitives import (
    check_bits,
    dequantize_affine,
    fake_quantize,
    qrange,
    quantize_affine,
)

_ONNX_INT = {torch.int8: 3, torch.uint8: 2, torch.int32: 6}  # onnx.TensorProto codes


def _onnx_params(g: Any, scale: list[float], zero_point: list[int], zp_dtype: torch.dtype) -> tuple[Any, Any]:
    s = g.op("Constant", value_t=torch.tensor(scale, dtype=torch.float32))
    z = g.op("Constant", value_t=torch.tensor(zero_point, dtype=zp_dtype))
    return s, z


@contextmanager
def _untraced() -> Iterator[None]:
    """Compute without recording into the ONNX exporter's trace (results become constants)."""
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        yield
    finally:
        torch._C._set_tracing_state(state)


class _QDQ(torch.autograd.Function):
    """Export-time fake quantization: ``QuantizeLinear -> DequantizeLinear`` with constant parameters."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, bits, signed, axis):  # noqa: ANN001 - autograd signature
        s = torch.tensor(scale, dtype=x.dtype)
        z = torch.tensor(zero_point, dtype=torch.int32)
        if axis is None:
            s, z = s.reshape(()), z.reshape(())
        return fake_quantize(x, s, z, bits, signed, axis=axis)

    @staticmethod
    def symbolic(g, x, scale, zero_point, bits, signed, axis):  # noqa: ANN001
        if bits != 8:
            raise ValueError(f"ONNX QDQ export needs 8-bit activations, got {bits}-bit")
        per_axis = axis is not None
        s, z = _onnx_params(g, scale if per_axis else scale[0], zero_point if per_axis else zero_point[0],
                            torch.int8 if signed else torch.uint8)
        kw = {"axis_i": axis} if per_axis else {}
        return g.op("DequantizeLinear", g.op("QuantizeLinear", x, s, z, **kw), s, z, **kw)


class _DQ(torch.autograd.Function):
    """Export-time dequantization of stored integer codes (int8 weights, int32 biases)."""

    @staticmethod
    def forward(ctx, q, scale, zero_point, axis):  # noqa: ANN001
        z = torch.tensor(zero_point, dtype=torch.int32)
        return dequantize_affine(q, torch.tensor(scale), z, axis=axis)

    @staticmethod
    def symbolic(g, q, scale, zero_point, axis):  # noqa: ANN001
        zp_dtype = {"Char": torch.int8, "Byte": torch.uint8, "Int": torch.int32}[q.type().scalarType()]
        s, z = _onnx_params(g, scale, zero_point, zp_dtype)
        return g.op("DequantizeLinear", q, s, z, axis_i=axis)


class FakeQuantize(nn.Module):
    """Observe a tensor, then simulate its quantization with frozen scale and zero point.

    Modes: *observing* (calibration: statistics are recorded, ``x`` passes unchanged) and *quantizing*
    (after :meth:`freeze`: ``x`` is fake-quantized). Both may be on at once (QAT with moving ranges).

    Args:
        observer: range estimator; None for a quantizer whose parameters are set with
            :meth:`set_qparams` (e.g. tied to another quantizer).
        bits: 2..8.
        symmetric: symmetric or asymmetric grid (used when no observer is given).
        signed: signed (int8) or unsigned (uint8) grid.
        axis: per-channel axis (None: per tensor).
        group_size: per-group length along ``axis``.
        narrow: narrow signed range.
    """

    #: activation parameters computed per call (see ``ptq.DynamicFakeQuantize``) instead of frozen.
    dynamic = False

    def __init__(self, observer: Observer | None = None, *, bits: int = 8, signed: bool = False,
                 axis: int | None = None, group_size: int | None = None, narrow: bool = False) -> None:
        super().__init__()
        if observer is not None:
            bits, signed, axis = observer.bits, observer.signed, observer.axis
            group_size, narrow = observer.group_size, observer.narrow
        check_bits(bits)
        self.observer = observer
        self.bits, self.signed, self.axis = bits, signed, axis
        self.group_size, self.narrow = group_size, narrow
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.observing = observer is not None
        self.quantizing = False

    @property
    def qmin(self) -> int:
        return qrange(self.bits, self.signed, self.narrow)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits, self.signed, self.narrow)[1]

    def set_qparams(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        """Fix the quantization parameters and switch to quantizing (observing stops)."""
        self.scale = scale.detach().to(torch.float32).clone()
        self.zero_point = zero_point.detach().to(torch.int32).clone()
        self.observing, self.quantizing = False, True

    def freeze(self) -> None:
        """Compute parameters from the observer, then quantize with them from now on."""
        if self.observer is None:
            raise ValueError("this quantizer has no observer; use set_qparams()")
        self.set_qparams(*self.observer.calculate_qparams())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing and self.observer is not None:
            self.observer(x)
        if not self.quantizing:
            return x
        if torch.onnx.is_in_onnx_export():
            if self.group_size is not None:
                raise ValueError("ONNX QDQ export does not support per-group activation quantization")
            if self.bits != 8:
                raise ValueError(f"ONNX QDQ export needs 8-bit activations, got {self.bits}-bit")
            if onnx_ops.export_mode() == "dynamo":
                return onnx_ops.qdq(x, getattr(self, onnx_ops.SCALE), getattr(self, onnx_ops.ZERO_POINT), self.axis)
            return _QDQ.apply(x, self.scale.flatten().tolist(), self.zero_point.flatten().tolist(), self.bits,
                              self.signed, self.axis)
        return fake_quantize(x, self.scale, self.zero_point, self.bits, self.signed, axis=self.axis,
                             group_size=self.group_size, narrow=self.narrow)

    def export_buffers(self) -> dict[str, torch.Tensor]:
        """Scale and zero point as ONNX wants them, for a ``torch.export`` trace (``onnx_ops.export_constants``)."""
        if not self.quantizing or self.dynamic:
            return {}
        zdt = torch.int8 if self.signed else torch.uint8
        shape = (-1,) if self.axis is not None else ()
        return {onnx_ops.SCALE: self.scale.detach().float().reshape(shape).clone(),
                onnx_ops.ZERO_POINT: self.zero_point.detach().reshape(shape).to(zdt).clone()}

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes of ``x`` with the frozen parameters."""
        return quantize_affine(x, self.scale, self.zero_point, self.bits, self.signed, axis=self.axis,
                               group_size=self.group_size, narrow=self.narrow)

    def extra_repr(self) -> str:
        state = "quantizing" if self.quantizing else ("observing" if self.observing else "off")
        return f"bits={self.bits}, signed={self.signed}, axis={self.axis}, {state}"


class _QuantMixin:
    """Shared wiring of :class:`QuantConv2d` / :class:`QuantLinear`.

    Attributes:
        input_quant: quantizer of the layer input (None: input left in float).
        weight_quant: quantizer of the weight (per output channel, axis 0, by default).
        output_quant: quantizer of the layer output (None: output left in float).
        output_relu: apply ReLU before ``output_quant`` (the graph applies ReLU right after this layer;
            ReLU of a ReLU is a no-op, so the model's own ReLU can stay).
        quantize_bias: store the bias as int32 with scale ``s_in * s_w`` (the integer kernels' bias).
    """

    input_quant: FakeQuantize | None
    weight_quant: FakeQuantize
    output_quant: FakeQuantize | None

    def _init_quant(self, input_quant: FakeQuantize | None, weight_quant: FakeQuantize,
                    output_quant: FakeQuantize | None, output_relu: bool, quantize_bias: bool) -> None:
        self.input_quant, self.weight_quant, self.output_quant = input_quant, weight_quant, output_quant
        self.output_relu = output_relu
        self.quantize_bias = quantize_bias

    def calibrate_weight(self) -> None:
        """Observe the current weight and freeze its quantization parameters."""
        wq = self.weight_quant
        if wq.observer is None:
            raise ValueError("the weight quantizer has no observer")
        wq.observer.num_batches = 0  # forget earlier weights (min/max observers restart on batch 0)
        wq.observer(self.weight)
        wq.freeze()

    def _bias_params(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        iq = self.input_quant
        if self.bias is None or not self.quantize_bias or iq is None or not iq.quantizing or iq.dynamic:
            return None
        if self.input_quant.axis is not None:
            return None
        s = (self.input_quant.scale.reshape(()) * self.weight_quant.scale).reshape(-1)  # (out,)
        if s.numel() == 1:
            s = s.expand(self.weight.shape[0])
        return s.contiguous(), torch.zeros(s.shape, dtype=torch.int32)

    def quantized_bias(self) -> torch.Tensor | None:
        """The bias as the integer kernel sees it (int32 codes dequantized), or the float bias."""
        p = self._bias_params()
        if p is None:
            return self.bias
        s, z = p
        q = torch.clamp(torch.round(self.bias / s), -(2**31), 2**31 - 1)
        return self.bias + (q * s - self.bias).detach()

    def integer_weight(self) -> torch.Tensor:
        """The weight's integer codes (int8 for 8 bits), as the runtime stores them."""
        return self.weight_quant.quantize(self.weight.detach())

    def integer_bias(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(int32 codes, scale)`` of the bias with scale ``s_in * s_w``, or None if it stays float."""
        p = self._bias_params()
        if p is None:
            return None
        s, _ = p
        q = torch.clamp(torch.round(self.bias.detach() / s), -(2**31), 2**31 - 1).to(torch.int32)
        return q, s

    def export_buffers(self) -> dict[str, torch.Tensor]:
        """Integer constants for a ``torch.export`` trace (:func:`onnx_ops.export_constants`)."""
        if not self.weight_quant.quantizing:
            return {}
        wq = self.weight_quant
        codes = self.integer_weight().to(torch.int8)
        n = codes.shape[0]
        out = {onnx_ops.CODES: codes, onnx_ops.SCALE: wq.scale.detach().float().flatten().expand(n).clone(),
               onnx_ops.ZERO_POINT: wq.zero_point.detach().flatten().expand(n).to(torch.int8).clone()}
        if codes.dim() == 2:
            out[onnx_ops.CODES_T] = codes.t().contiguous()
        ib = self.integer_bias()
        if ib is not None:
            out[onnx_ops.BIAS_CODES], out[onnx_ops.BIAS_SCALE] = ib[0], ib[1].float().contiguous()
        return out

    def _fake_quant_weight(self) -> torch.Tensor:
        """``weight_quant(weight)``, cached while neither the weight nor its grid changes.

        Calibration and evaluation run the same frozen weight through its quantizer on every call; without
        a cache that rounding costs more than the layer's matmul. Training (grad enabled and a trainable
        weight or scale) and an observing weight quantizer always recompute.
        """
        wq, w = self.weight_quant, self.weight
        if wq.observing or (torch.is_grad_enabled() and (w.requires_grad or wq.scale.requires_grad)):
            return wq(w)
        key = (w.data_ptr(), w._version, w.shape, wq.scale.data_ptr(), wq.scale._version,
               wq.zero_point.data_ptr(), wq.zero_point._version, wq.quantizing, id(wq), wq.bits, wq.signed,
               wq.narrow, wq.axis, wq.group_size)
        cache = self.__dict__.get("_weight_cache")
        if cache is None or cache[0] != key:
            with torch.no_grad():
                cache = (key, wq(w))
            self.__dict__["_weight_cache"] = cache
        return cache[1]

    def _quant_weight(self, transposed: bool = False) -> torch.Tensor:
        """The fake-quant weight; during ONNX export ``DQ(int8 codes)``, ``(in, out)`` if ``transposed``."""
        if not self.weight_quant.quantizing:
            return self.weight.t() if transposed else self.weight
        if onnx_ops.export_mode() == "dynamo":
            codes = getattr(self, onnx_ops.CODES_T if transposed else onnx_ops.CODES)
            return onnx_ops.dq(codes, getattr(self, onnx_ops.SCALE), getattr(self, onnx_ops.ZERO_POINT),
                               1 if transposed else 0)
        if torch.onnx.is_in_onnx_export():
            # integer codes computed outside the trace, so the file stores them as an int8 initializer
            wq = self.weight_quant
            with _untraced():
                codes = self.integer_weight()
                if transposed:
                    codes = codes.t().contiguous()
            axis = wq.axis if wq.axis is not None else 0
            return _DQ.apply(codes, wq.scale.flatten().tolist(), wq.zero_point.flatten().tolist(),
                             1 - axis if transposed else axis)
        w = self._fake_quant_weight()
        return w.t() if transposed else w

    def _export_bias(self) -> torch.Tensor | None:
        if not torch.onnx.is_in_onnx_export():
            return self.quantized_bias()
        if onnx_ops.export_mode() == "dynamo":
            if not hasattr(self, onnx_ops.BIAS_CODES):
                return self.bias
            return onnx_ops.dq(getattr(self, onnx_ops.BIAS_CODES), getattr(self, onnx_ops.BIAS_SCALE), None, 0)
        with _untraced():
            ib = self.integer_bias()
        if ib is None:
            return self.bias
        q, s = ib
        return _DQ.apply(q, s.tolist(), [0] * s.numel(), 0)

    def _finish(self, y: torch.Tensor) -> torch.Tensor:
        if self.output_relu:
            y = F.relu(y)
        if self.output_quant is not None:
            y = self.output_quant(y)
        return y

    def quantizers(self) -> dict[str, FakeQuantize]:
        """The quantizers present, by role."""
        out = {"weight": self.weight_quant}
        if self.input_quant is not None:
            out["input"] = self.input_quant
        if self.output_quant is not None:
            out["output"] = self.output_quant
        return out


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """``nn.Conv2d`` with fake-quantized input, weight (per output channel), bias and output."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, input_quant: FakeQuantize | None, weight_quant: FakeQuantize,
                   output_quant: FakeQuantize | None = None, output_relu: bool = False,
                   quantize_bias: bool = True) -> QuantConv2d:
        """Wrap ``conv`` (its parameters are shared, not copied)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.__dict__.update(conv.__dict__)  # attributes, parameter and buffer dicts (shared)
        new._modules = {}
        new._init_quant(input_quant, weight_quant, output_quant, output_relu, quantize_bias)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H', W')
        if self.input_quant is not None:
            x = self.input_quant(x)
        y = self._conv_forward(x, self._quant_weight(), self._export_bias())
        return self._finish(y)


class QuantLinear(_QuantMixin, nn.Linear):
    """``nn.Linear`` with fake-quantized input, weight (per output channel), bias and output."""

    @classmethod
    def from_float(cls, linear: nn.Linear, input_quant: FakeQuantize | None, weight_quant: FakeQuantize,
                   output_quant: FakeQuantize | None = None, output_relu: bool = False,
                   quantize_bias: bool = True) -> QuantLinear:
        """Wrap ``linear`` (its parameters are shared, not copied)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.__dict__.update(linear.__dict__)  # attributes, parameter and buffer dicts (shared)
        new._modules = {}
        new._init_quant(input_quant, weight_quant, output_quant, output_relu, quantize_bias)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if torch.onnx.is_in_onnx_export() and getattr(self.input_quant, "dynamic", False):
            return self._finish(self._export_dynamic(x))
        if self.input_quant is not None:
            x = self.input_quant(x)
        if torch.onnx.is_in_onnx_export() and x.dim() != 2 and self.weight_quant.quantizing:
            # (B, T, in) inputs export as MatMul; a DQ'd (in, out) weight lets ONNX Runtime fuse it
            # (F.linear would put a Transpose between the weight's DQ and the MatMul)
            y = torch.matmul(x, self._quant_weight(transposed=True))
            b = self._export_bias()
            return self._finish(y if b is None else y + b)
        y = F.linear(x, self._quant_weight(), self._export_bias())
        return self._finish(y)


    def _export_dynamic(self, x: torch.Tensor) -> torch.Tensor:
        """Dynamic int8 matmul in the form ONNX Runtime fuses into ``DynamicQuantizeMatMul``."""
        iq = self.input_quant
        if getattr(iq, "granularity", "tensor") != "tensor" or iq.bits != 8:
            raise ValueError("ONNX export of dynamic quantization needs Int8Dynamic(granularity='tensor') "
                             "(ONNX DynamicQuantizeLinear computes one scale per tensor)")
        wq = self.weight_quant
        if onnx_ops.export_mode() == "dynamo":
            return onnx_ops.dynamic_linear(x, getattr(self, onnx_ops.CODES_T), getattr(self, onnx_ops.SCALE),
                                           getattr(self, onnx_ops.ZERO_POINT), self.bias)
        with _untraced():
            codes = self.integer_weight().t().contiguous()  # (in, out) int8
            scale = wq.scale.flatten().expand(self.out_features).tolist()
            zp = wq.zero_point.flatten().expand(self.out_features).tolist()
        return _DynamicLinear.apply(x, codes, scale, zp, self.bias)


class _DynamicLinear(torch.autograd.Function):
    """``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(s_x * s_w) -> Add(bias)``, ORT's own form."""

    @staticmethod
    def forward(ctx, x, codes, scale, zero_point, bias):  # noqa: ANN001
        from slimtorch.quant.primitives import dynamic_fake_quantize

        w = (codes.float() - torch.tensor(zero_point).float()) * torch.tensor(scale)  # (in, out)
        y = dynamic_fake_quantize(x, "tensor") @ w
        return y if bias is None else y + bias

    @staticmethod
    def symbolic(g, x, codes, scale, zero_point, bias):  # noqa: ANN001
        xq, xs, xz = g.op("DynamicQuantizeLinear", x, outputs=3)
        wz = g.op("Constant", value_t=torch.tensor(zero_point, dtype=torch.int8))
        acc = g.op("MatMulInteger", xq, codes, xz, wz)
        ws = g.op("Constant", value_t=torch.tensor(scale, dtype=torch.float32))
        y = g.op("Mul", g.op("Cast", acc, to_i=1), g.op("Mul", xs, ws))
        return y if bias is None else g.op("Add", y, bias)


#: float layer type -> its fake-quant wrapper (extend to quantize more layer types).
QUANT_MODULES: TypeRegistry[type[nn.Module]] = TypeRegistry("fake-quant wrapper")
QUANT_MODULES.register(nn.Conv2d, QuantConv2d)
QUANT_MODULES.register(nn.Linear, QuantLinear)
