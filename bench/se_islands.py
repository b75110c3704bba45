"""Int8 islands on a MobileNetV3-like CNN with SE blocks: fp32 vs int8 with and without ``float_islands``.

For a HardSwish variant (MobileNetV3) and a ReLU variant (MobileNetV2 + SE): ONNX Runtime latency at
batch 8 x 3 x 32 x 32 (1 thread, models timed alternately, median), and the QuantizeLinear /
DequantizeLinear / Transpose nodes left in the graph ONNX Runtime executes.

    PYTHONPATH=src python bench/se_islands.py [--reps 60]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import check, write_result  # noqa: E402


class SE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class Block(nn.Module):
    def __init__(self, cin: int, cexp: int, cout: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(cin, cexp, 1, bias=False), nn.BatchNorm2d(cexp), act())
        self.dw = nn.Sequential(nn.Conv2d(cexp, cexp, 3, padding=1, groups=cexp, bias=False), nn.BatchNorm2d(cexp),
                                act())
        self.se = SE(cexp)
        self.project = nn.Sequential(nn.Conv2d(cexp, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.se(self.dw(self.expand(x))))


class SENet(nn.Module):
    def __init__(self, act: type[nn.Module]) -> None:
        super().__init__()
        self.input_shape = (3, 32, 32)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.b1, self.b2, self.b3 = Block(16, 64, 24, act), Block(24, 96, 24, act), Block(24, 96, 32, act)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b3(self.b2(self.b1(self.stem(x)))))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=60)
    args = ap.parse_args()
    t_start = time.time()
    from slimtorch.metrics.ort import onnx_session
    from slimtorch.quant import Int8Static, export_float_onnx, export_onnx, quantize_
    from slimtorch.quant.export.onnx_export import runtime_ops

    tmp = Path(tempfile.mkdtemp())
    rows, checks = [], []
    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for act in (nn.Hardswish, nn.ReLU):
        files = {}
        for variant in ("fp32", "int8", "int8-float-islands"):
            torch.manual_seed(0)
            model = SENet(act).eval()
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_var.uniform_(0.5, 2.0)
                    m.running_mean.uniform_(-0.2, 0.2)
            f = tmp / f"{act.__name__}-{variant}.onnx"
            if variant == "fp32":
                files[variant] = export_float_onnx(model, f, x[:1])
                continue
            quantize_(model, Int8Static(float_islands=variant != "int8"), calib_data=[x])
            files[variant] = export_onnx(model, f, x[:1])
        sess = {k: onnx_session(f, threads=1) for k, f in files.items()}
        feed = {"input": x[:8].numpy()}
        times: dict[str, list[float]] = {k: [] for k in sess}
        for _ in range(args.reps):
            for k, s in sess.items():  # interleaved
                t0 = time.perf_counter()
                s.run(None, feed)
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        for k, f in files.items():
            ops = runtime_ops(f, tmp)
            rows.append({"activation": act.__name__, "model": k, "latency_ms": round(med[k] * 1e3, 2),
                         "speed_vs_fp32": round(med["fp32"] / med[k], 2), "Q": ops.get("QuantizeLinear", 0),
                         "DQ": ops.get("DequantizeLinear", 0), "Transpose": ops.get("Transpose", 0),
                         "int8_convs": ops.get("QLinearConv", 0)})
        speed = med["fp32"] / med["int8-float-islands"]
        checks.append(check(f"{act.__name__}: int8 (float islands) speed vs fp32", speed, ">= 1.0", speed >= 1.0))
    write_result("se_islands", rows, checks, seeds=[0], wall_s=time.time() - t_start,
                 extra={"reps": args.reps, "threads": 1, "batch": "8x3x32x32"})


if __name__ == "__main__":
    main()
