"""Sparse (CSR) storage: bit-identical round trip, size follows the nonzeros, smallest index dtypes."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from torch import nn

import slimtorch
from slimtorch.core.errors import SlimtorchError
from slimtorch.metrics import file_size
from slimtorch.models import create
from slimtorch.prune import Magnitude, from_csr, load_sparse, make_permanent_, prune_, save_sparse, to_csr
from slimtorch.prune.sparse import csr_nbytes, index_dtype


def test_csr_hand_example():
    w = torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [3.0, 0.0, -1.0]])
    parts = to_csr(w)
    assert parts["csr_values"].tolist() == [2.0, 3.0, -1.0]
    assert parts["csr_col"].tolist() == [1, 0, 2]
    assert parts["csr_rowptr"].tolist() == [0, 1, 1, 3]
    assert parts["csr_col"].dtype == torch.uint8 and parts["csr_rowptr"].dtype == torch.uint8
    assert torch.equal(from_csr(parts, (3, 3)), w)


@pytest.mark.parametrize(
    "value,dtype",
    [
        (0, torch.uint8),
        (255, torch.uint8),
        (256, torch.uint16),
        (65535, torch.uint16),
        (65536, torch.uint32),
        (2**32, torch.int64),
    ],
)
def test_index_dtype_is_the_smallest_that_fits(value, dtype):
    assert index_dtype(value) == dtype


def test_negative_zero_and_conv_shapes_round_trip_bitwise():
    w = torch.randn(4, 3, 2, 2)
    w[w.abs() < 0.8] = 0.0
    w[0, 0, 0, 0] = -0.0
    back = from_csr(to_csr(w), tuple(w.shape))
    assert torch.equal(back.view(torch.int32), w.view(torch.int32))


def test_pruned_lenet_round_trip_is_bit_identical_and_small(tmp_path):
    model = create("lenet_300_100")
    prune_(model, Magnitude(0.9))
    make_permanent_(model)
    sparse = save_sparse(model, tmp_path / "s.safetensors")
    dense = slimtorch.save(model, tmp_path / "d.safetensors")
    back = load_sparse(sparse)
    ref = model.state_dict()
    assert set(back.state_dict()) == set(ref)
    for k, v in back.state_dict().items():
        assert v.dtype == ref[k].dtype and torch.equal(v.view(torch.int32), ref[k].view(torch.int32)), k
    x = torch.randn(3, 784)
    assert torch.equal(back(x), model.eval()(x))
    # size follows the nonzeros: 90% sparse -> well under a quarter of the dense file
    assert file_size(sparse) < 0.25 * file_size(dense)
    expected = sum(csr_nbytes(m.weight) for m in (model.net[1], model.net[3], model.net[5]))
    biases = sum(m.bias.numel() * 4 for m in (model.net[1], model.net[3], model.net[5]))
    assert expected + biases <= file_size(sparse) < expected + biases + 4096  # + header
    with safe_open(str(sparse), framework="pt") as f:
        assert f.get_tensor("net.1.weight.csr_col").dtype == torch.uint16  # 784 columns
        assert f.get_tensor("net.5.weight.csr_col").dtype == torch.uint8  # 100 columns
        assert f.get_tensor("net.1.weight.csr_rowptr").dtype == torch.uint16  # ~23k nonzeros


def test_masked_model_is_saved_as_it_acts_without_being_changed(tmp_path):
    model = create("mlp", in_features=16, hidden=(32,), num_classes=4)
    prune_(model, Magnitude(0.8))
    out = model.eval()(torch.ones(1, 16))
    back = load_sparse(save_sparse(model, tmp_path))
    assert torch.equal(back(torch.ones(1, 16)), out)
    assert torch.equal(model(torch.ones(1, 16)), out)  # still masked and usable


def test_dense_tensors_stay_dense_and_non_zoo_models_need_a_skeleton(tmp_path):
    net = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
    p = save_sparse(net, tmp_path / "n.safetensors")
    with safe_open(str(p), framework="pt") as f:
        assert "0.weight" in f.keys()  # 0% sparse: CSR would be larger
    with pytest.raises(SlimtorchError, match="pass the skeleton"):
        load_sparse(p)
    back = load_sparse(p, model=nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8)))
    assert torch.equal(back[0].weight, net[0].weight)


def test_wrong_files_are_refused_with_a_hint(tmp_path):
    model = create("mlp", in_features=8, hidden=(4,))
    dense = slimtorch.save(model, tmp_path / "d.safetensors")
    with pytest.raises(SlimtorchError, match="not written by save_sparse"):
        load_sparse(dense)
    sparse = save_sparse(model, tmp_path / "s.safetensors")
    with pytest.raises(SlimtorchError, match="load_sparse"):
        slimtorch.load(sparse)
    with pytest.raises(SlimtorchError, match="no sparse model file"):
        load_sparse(tmp_path / "missing.safetensors")
