"""Int8 islands: a conv between two float ops (HardSwish, an SE gate) stays float (structural, CPU-free)."""

from __future__ import annotations

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from slimtorch.quant import Int8Static, export_onnx, quantize_
from slimtorch.quant.modules.fake_quant import QuantConv2d


class SE(nn.Module):
    """Squeeze-and-excitation gate: GlobalAveragePool -> 1x1 conv -> ReLU -> 1x1 conv -> HardSigmoid -> Mul."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.hardsigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * w


class Block(nn.Module):
    """MobileNetV3 bottleneck: expand 1x1 -> HardSwish -> depthwise 3x3 -> HardSwish -> SE -> project 1x1."""

    def __init__(self, cin: int, cexp: int, cout: int) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(cin, cexp, 1, bias=False), nn.BatchNorm2d(cexp), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(cexp, cexp, 3, padding=1, groups=cexp, bias=False), nn.BatchNorm2d(cexp),
                                nn.Hardswish())
        self.se = SE(cexp)
        self.project = nn.Sequential(nn.Conv2d(cexp, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.se(self.dw(self.expand(x))))


class SENet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input_shape = (3, 16, 16)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.b1, self.b2 = Block(16, 32, 16), Block(16, 32, 24)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b2(self.b1(self.stem(x))))


def _quantized(float_islands: bool) -> tuple[SENet, dict]:
    torch.manual_seed(0)
    model = SENet().eval()
    report = quantize_(model, Int8Static(float_islands=float_islands), calib_data=[torch.randn(8, 3, 16, 16)])
    return model, report.details


def _graph(model: nn.Module, path) -> onnx.GraphProto:
    return onnx.load(str(export_onnx(model, path, torch.randn(2, 3, 16, 16)))).graph


def _conv_weight_is_int8(graph: onnx.GraphProto) -> list[bool]:
    """For each Conv in graph order: is its weight a DequantizeLinear output (int8) or a float initializer?"""
    dq_out = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return [n.input[1] in dq_out for n in graph.node if n.op_type == "Conv"]


def test_depthwise_convs_between_hardswishes_stay_float_without_qdq(tmp_path) -> None:
    model, details = _quantized(True)
    # the depthwise convs read a HardSwish and feed a HardSwish; b2.project feeds the float head pool
    assert details["float_islands"] == ["b1.dw.0", "b2.dw.0", "b2.project.0"]
    assert not isinstance(model.b1.dw[0], QuantConv2d) and isinstance(model.b1.expand[0], QuantConv2d)
    # SE gates: fc1 -> ReLU -> fc2 is a tied int8 chain, not an island
    assert isinstance(model.b1.se.fc1, QuantConv2d) and model.b1.se.fc2.input_source == "b1.se.fc1"
    g = _graph(model, tmp_path / "islands.onnx")
    int8 = _conv_weight_is_int8(g)
    # stem, b1: expand, dw, fc1, fc2, project; b2: expand, dw, fc1, fc2, project
    assert int8 == [True, True, False, True, True, True, True, False, True, True, False]
    # a float conv is read and written in float: no QuantizeLinear on its output, no DQ on its input
    producer = {o: n for n in g.node for o in n.output}
    readers = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    float_convs = [n for n, q in zip([n for n in g.node if n.op_type == "Conv"], int8) if not q]
    for conv in float_convs:
        assert producer[conv.input[0]].op_type != "DequantizeLinear"
        assert all(r.op_type != "QuantizeLinear" for r in readers.get(conv.output[0], []))


def test_islands_remove_qdq_pairs(tmp_path) -> None:
    counts = {}
    for flag in (False, True):
        model, details = _quantized(flag)
        ops = [n.op_type for n in _graph(model, tmp_path / f"{flag}.onnx").node]
        counts[flag] = (ops.count("QuantizeLinear"), ops.count("DequantizeLinear"))
    islands = 3
    # each island drops its input Q/DQ pair, its output Q/DQ pair and its weight (and bias) DQ
    assert counts[False][0] - counts[True][0] >= 2 * islands
    assert counts[False][1] - counts[True][1] >= 3 * islands
