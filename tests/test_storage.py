"""Safe storage: safetensors + spec, pruned-shape reload, pickles refused without consent."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimtorch
from slimtorch.core.errors import SlimtorchError
from slimtorch.io.storage import read_spec
from slimtorch.models import create


def test_zoo_model_round_trip_bit_identical(tmp_path):
    m = create("resnet20").eval()
    p = slimtorch.save(m, tmp_path / "r.safetensors")
    back = slimtorch.load(p)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(back(x), m(x))
    assert read_spec(p)["model"] == {"name": "resnet20", "kwargs": {}}


def test_directory_save_and_narrowed_layers_reload(tmp_path):
    m = create("lenet5").eval()
    # Narrow conv2 from 50 to 30 filters by hand, the way channel pruning would.
    keep = torch.arange(30)
    conv2, fc1 = m.features[3], m.classifier[1]
    new_conv = nn.Conv2d(20, 30, 5)
    new_conv.weight.data, new_conv.bias.data = conv2.weight.data[keep].clone(), conv2.bias.data[keep].clone()
    new_fc = nn.Linear(30 * 16, 500)
    new_fc.weight.data = fc1.weight.data.view(500, 50, 16)[:, keep].reshape(500, -1).clone()
    new_fc.bias.data = fc1.bias.data.clone()
    m.features[3], m.classifier[1] = new_conv, new_fc
    slimtorch.save(m, tmp_path / "run")
    assert (tmp_path / "run" / "model.safetensors").exists()
    back = slimtorch.load(tmp_path / "run")
    assert back.features[3].out_channels == 30 and back.classifier[1].in_features == 480
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(back(x), m(x))


def test_custom_model_needs_skeleton(tmp_path):
    net = nn.Sequential(nn.Linear(4, 3))
    p = slimtorch.save(net, tmp_path / "n.safetensors", metadata={"note": "hi"})
    with pytest.raises(SlimtorchError, match="holds no architecture spec.*model=MyNet"):
        slimtorch.load(p)
    back = slimtorch.load(p, model=nn.Sequential(nn.Linear(4, 3)))
    assert torch.equal(back[0].weight, net[0].weight)
    assert read_spec(p)["metadata"] == {"note": "hi"}


def test_full_pickle_refused_without_trust(tmp_path):
    net = nn.Sequential(nn.Linear(4, 3))
    p = tmp_path / "whole.pt"
    torch.save(net, p)
    with pytest.raises(SlimtorchError, match="refused.*trust_pickle=True"):
        slimtorch.load(p)
    back = slimtorch.load(p, trust_pickle=True)
    assert torch.equal(back[0].weight, net[0].weight)


def test_state_dict_loads_weights_only(tmp_path):
    net = create("lenet_300_100")
    p = tmp_path / "sd.pt"
    torch.save(net.state_dict(), p)
    with pytest.raises(SlimtorchError, match="plain state dict; pass the skeleton"):
        slimtorch.load(p)
    back = slimtorch.load(p, model=create("lenet_300_100"))
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), net.state_dict().values()))


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(SlimtorchError, match="no model file at"):
        slimtorch.load(tmp_path / "nothing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(SlimtorchError, match="not a readable safetensors file"):
        slimtorch.load(bad)


def test_wrong_skeleton_names_missing_keys(tmp_path):
    p = slimtorch.save(nn.Sequential(nn.Linear(4, 3)), tmp_path / "n.safetensors")
    with pytest.raises(SlimtorchError, match="do not fit the model.*missing"):
        slimtorch.load(p, model=nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)))


def test_parametrized_model_save_is_refused(tmp_path):
    from torch.nn.utils import parametrize

    class Mask(nn.Module):
        def forward(self, w):
            return w

    net = nn.Linear(4, 3)
    parametrize.register_parametrization(net, "weight", Mask())
    with pytest.raises(SlimtorchError, match="make_permanent_"):
        slimtorch.save(net, tmp_path / "p.safetensors")


def test_saved_files_get_the_mode_a_plain_open_would_give(tmp_path):
    import os

    from slimtorch.io.storage import default_file_mode

    old = os.umask(0o022)
    try:
        path = slimtorch.save(torch.nn.Linear(2, 2), tmp_path / "m.safetensors")
        assert default_file_mode() == 0o644 and (path.stat().st_mode & 0o777) == 0o644  # not mkstemp's 0o600
    finally:
        os.umask(old)
