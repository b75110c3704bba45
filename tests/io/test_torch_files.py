"""Broken .pt files are named as broken, and never answered with a hint to unpickle (issue 18)."""

from __future__ import annotations

import pytest
import torch

import slimtorch
from slimtorch.core.errors import SlimtorchError
from slimtorch.models import create


def test_truncated_state_dict(tmp_path):
    p = tmp_path / "sd.pt"
    torch.save(create("mlp", in_features=8, hidden=(6,), num_classes=3).state_dict(), p)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(SlimtorchError, match=r"sd\.pt is not a readable PyTorch file \(truncated, corrupt") as e:
        slimtorch.load(p)
    assert "trust_pickle" not in str(e.value)


def test_text_file_named_pt(tmp_path):
    p = tmp_path / "notes.pt"
    p.write_text("hello world\n")
    with pytest.raises(SlimtorchError, match=r"notes\.pt is not a readable PyTorch file .*give a \.safetensors file")\
            as e:
        slimtorch.load(p)
    assert "trust_pickle" not in str(e.value)


def test_pickled_module_still_names_trust_pickle(tmp_path):
    p = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(2, 2), p)
    with pytest.raises(SlimtorchError, match="Unpickling runs arbitrary code, so it is refused; if you trust"):
        slimtorch.load(p)
