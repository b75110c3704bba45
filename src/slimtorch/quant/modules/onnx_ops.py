"""ONNX operators the fake-quant modules emit under the ``torch.export``-based exporter (``dynamo=True``).

The legacy TorchScript exporter reads each ``autograd.Function``'s ``symbolic``; the ``torch.export``
exporter traces ``forward`` instead, so under it the modules call :func:`torch.onnx.ops.symbolic`, which
records an ONNX node (``QuantizeLinear``, ``DequantizeLinear``, ``DynamicQuantizeLinear``, ...) in the
exported program. Integer codes cannot be computed inside a ``torch.export`` trace without recording the
float weight and the rounding ops, so :func:`export_constants` registers them as buffers beforehand
(``weight -> int8 codes``); the float weight is then unused and left out of the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

#: Buffer names holding export-time integer constants and quantization parameters on a quantized module.
CODES, CODES_T, BIAS_CODES = "_export_codes", "_export_codes_t", "_export_bias_codes"
SCALE, ZERO_POINT, BIAS_SCALE = "_export_scale", "_export_zero_point", "_export_bias_scale"


def export_mode() -> str | None:
    """``"dynamo"`` inside ``torch.onnx.export(..., dynamo=True)``, ``"torchscript"`` inside the legacy
    exporter, else None."""
    from torch.onnx._internal.exporter import _flags

    if _flags._is_onnx_exporting:
        return "dynamo"
    return "torchscript" if torch.onnx.is_in_onnx_export() else None


def qdq(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``DequantizeLinear(QuantizeLinear(x))``; ``scale``/``zero_point`` are export buffers (initializers),
    scalars for a per-tensor grid or vectors along ``axis``."""
    attrs = {"axis": axis} if axis is not None else {}
    q = torch.onnx.ops.symbolic("QuantizeLinear", (x, scale, zero_point), attrs, dtype=zero_point.dtype,
                                shape=x.shape)
    return torch.onnx.ops.symbolic("DequantizeLinear", (q, scale, zero_point), attrs, dtype=x.dtype, shape=x.shape)


def dq(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, axis: int) -> torch.Tensor:
    """``DequantizeLinear`` of stored integer ``codes`` (int8 weights, int32 biases) along ``axis``."""
    ins = (codes, scale) if zero_point is None else (codes, scale, zero_point)
    return torch.onnx.ops.symbolic("DequantizeLinear", ins, {"axis": axis}, dtype=torch.float32, shape=codes.shape)


def dynamic_linear(x: torch.Tensor, codes_t: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                   bias: torch.Tensor | None) -> torch.Tensor:
    """``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul -> Add``, fused by ONNX Runtime into
    ``DynamicQuantizeMatMul``. ``codes_t``: ``(in, out)`` int8; ``scale``/``zero_point``: ``(out,)``."""
    xq, xs, xz = torch.onnx.ops.symbolic_multi_out(
        "DynamicQuantizeLinear", (x,), {}, dtypes=(torch.uint8, torch.float32, torch.uint8),
        shapes=(x.shape, (), ()))
    out_shape = (*x.shape[:-1], codes_t.shape[1])
    acc = torch.onnx.ops.symbolic("MatMulInteger", (xq, codes_t, xz, zero_point), {}, dtype=torch.int32,
                                  shape=out_shape)
    y = acc.to(torch.float32) * (xs * scale)
    return y if bias is None else y + bias


def gather_dq(codes: torch.Tensor, scale: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Embedding lookup on int8 rows: ``DequantizeLinear(Gather(codes, ids), Gather(scale, ids), axis=0)``.

    ``codes``: ``(V, D)`` int8, ``scale``: ``(V,)`` per-row scales (symmetric, zero point 0), ``ids``: any
    shape. Ids are flattened so the gathered rows lie on axis 0 with one scale each.
    """
    flat = ids.reshape(-1)
    rows = torch.index_select(codes, 0, flat)  # (N, D) int8
    s = torch.index_select(scale, 0, flat)  # (N,)
    y = torch.onnx.ops.symbolic("DequantizeLinear", (rows, s), {"axis": 0}, dtype=torch.float32,
                                shape=rows.shape)
    return y.reshape(*ids.shape, codes.shape[1])


@contextmanager
def export_constants(model: nn.Module) -> Iterator[None]:
    """Register every quantized module's integer codes as buffers for the ``torch.export`` trace.

    Modules opt in with an ``export_buffers() -> dict[name, tensor]`` method; the buffers are removed
    on exit, so the model is unchanged afterwards.
    """
    added: list[tuple[nn.Module, str]] = []
    try:
        with torch.no_grad():
            for m in model.modules():
                fn = getattr(m, "export_buffers", None)
                if fn is None:
                    continue
                for name, t in fn().items():
                    m.register_buffer(name, t, persistent=False)
                    added.append((m, name))
        yield
    finally:
        for m, name in added:
            m._buffers.pop(name, None)
