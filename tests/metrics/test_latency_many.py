"""measure_latencies (several models in one interleaved run) and the onnxruntime-int8 runtime."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from slimtorch.metrics import (
    export_onnx_fp32,
    measure_latencies,
    measure_latency,
    onnx_session,
    quantize_qdq_int8,
    session_feed,
)


def _mlp(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10)).eval()


def test_measure_latencies_returns_one_positive_median_per_model_in_order() -> None:
    x = torch.randn(4, 64)
    models = [_mlp(8), _mlp(16), _mlp(32)]
    ms = measure_latencies(models, x, runtime="torch", repeats=4, warmup=1)
    assert len(ms) == 3 and all(m > 0 for m in ms)
    assert measure_latencies([], x) == []
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        measure_latencies(models, x, repeats=0)
    with pytest.raises(ValueError, match="block must be >= 1"):
        measure_latencies(models, x, block=0)
    with pytest.raises(ValueError, match="unknown runtime 'tvm'"):
        measure_latencies(models, x, runtime="tvm")


def test_int8_qdq_file_has_integer_ops_and_agrees_with_fp32(tmp_path) -> None:
    model = _mlp(32)
    x = torch.randn(16, 64)
    fp32 = export_onnx_fp32(model, x, tmp_path / "m.onnx")
    feed = session_feed(onnx_session(fp32), x)
    path = quantize_qdq_int8(fp32, tmp_path / "m.int8.onnx", feed)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    ref = model(x).detach()
    out = torch.from_numpy(onnx_session(path).run(None, feed)[0])
    # 8-bit activations and weights, calibrated on these inputs: error well under 5% of the output range
    assert (out - ref).abs().max() < 0.05 * (ref.max() - ref.min())
    assert measure_latency(model, x, runtime="onnxruntime-int8", warmup=1, repeats=2) > 0
    assert measure_latency(path, x, runtime="onnxruntime-int8", warmup=1, repeats=2) > 0  # a file as it is
