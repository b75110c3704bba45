"""A small conv net trained on the bundled digits data, shared by the PTQ and export tests."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from slimtorch.data import load


class DigitsNet(nn.Module):
    """conv-BN-ReLU-pool x2 -> fc: 8x8 digits, 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.input_shape = (1, 8, 8)
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 8, 8) -> (B, 10)
        return self.head(self.features(x))


def _tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    ds = load("digits", split)
    xs, ys = zip(*[ds[i] for i in range(len(ds))])
    return torch.stack(xs), torch.tensor(ys)


@pytest.fixture(scope="session")
def digits_data() -> dict[str, torch.Tensor]:
    xtr, ytr = _tensors("train")
    xte, yte = _tensors("test")
    return {"xtr": xtr, "ytr": ytr, "xte": xte, "yte": yte}


@pytest.fixture(scope="session")
def _trained_digits_state(digits_data) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = DigitsNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = digits_data["xtr"], digits_data["ytr"]
    for _ in range(6):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return copy.deepcopy(model.eval().state_dict())


@pytest.fixture
def digits_model(_trained_digits_state) -> DigitsNet:
    """A fresh trained copy (eval mode) for each test."""
    model = DigitsNet()
    model.load_state_dict(_trained_digits_state)
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.fixture
def resnet20_int8(tmp_path):
    """``(model, x, fp32_path)``: a random-init ResNet-20 with its fp32 ONNX export written first, then
    quantized in place by ``Int8Static`` calibrated on ``x`` (8 CIFAR-shaped images)."""
    from slimtorch.models import create
    from slimtorch.quant import Int8Static, export_float_onnx, quantize_

    torch.manual_seed(0)
    model = create("resnet20").eval()
    x = torch.randn(8, 3, 32, 32)
    fp32 = export_float_onnx(model, tmp_path / "f.onnx", x[:1])
    quantize_(model, Int8Static(), calib_data=[x])
    return model, x, fp32
