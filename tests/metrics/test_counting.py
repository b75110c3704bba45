"""Parameter / nonzero counts and bytes on disk."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import slimtorch
from slimtorch.core.errors import SlimtorchError
from slimtorch.metrics import count_nonzero, count_params, file_size, model_size_bytes, sparsity
from slimtorch.models import create


def test_counts_with_manually_zeroed_weights():
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))
    assert count_params(model) == 10 * 20 + 20 + 20 * 3 + 3
    with torch.no_grad():
        model[0].weight[:5] = 0.0  # 5 rows of 10
        model[2].bias.zero_()
    assert count_params(model) == 283
    assert count_nonzero(model) == 283 - 50 - 3
    assert sparsity(model) == pytest.approx(53 / 283)


def test_zoo_parameter_counts():
    assert count_params(create("lenet5")) == 431_080
    assert count_params(create("lenet_300_100")) == 266_610


class HalfMask(nn.Module):
    """w * m with a fixed 0/1 mask (a pruning parametrization)."""

    def __init__(self, shape: torch.Size) -> None:
        super().__init__()
        m = torch.ones(shape)
        m.view(-1)[::2] = 0.0
        self.register_buffer("mask", m)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def test_parametrized_weights_count_as_used():
    model = nn.Sequential(nn.Linear(8, 6), nn.Linear(6, 2))
    parametrize.register_parametrization(model[0], "weight", HalfMask(model[0].weight.shape))
    assert count_params(model) == 8 * 6 + 6 + 6 * 2 + 2  # mask buffer / original not double counted
    assert count_nonzero(model) == count_params(model) - 24
    assert torch.is_grad_enabled()


def test_tied_weights_counted_once():
    emb = nn.Embedding(7, 4)
    head = nn.Linear(4, 7, bias=False)
    head.weight = emb.weight
    assert count_params(nn.ModuleList([emb, head])) == 28


def test_size_bytes_is_four_bytes_per_param_plus_header(tmp_path):
    model = create("lenet5")
    size = model_size_bytes(model)
    assert 4 * 431_080 < size < 4 * 431_080 + 8_000  # safetensors header + JSON spec
    assert size == file_size(slimtorch.save(model, tmp_path / "m.safetensors"))


def test_size_bytes_of_parametrized_model():
    model = nn.Sequential(nn.Linear(100, 50))
    parametrize.register_parametrization(model[0], "weight", HalfMask(model[0].weight.shape))
    size = model_size_bytes(model)  # saved as its permanent (dense) copy
    assert 4 * 5050 < size < 4 * 5050 + 2_000
    assert parametrize.is_parametrized(model[0])  # the caller's model is untouched


def test_file_size_of_dir_and_missing_path(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"y" * 5)
    assert file_size(tmp_path / "a.bin") == 10
    assert file_size(tmp_path) == 15
    with pytest.raises(SlimtorchError, match="no such file or directory"):
        file_size(tmp_path / "nope.onnx")
