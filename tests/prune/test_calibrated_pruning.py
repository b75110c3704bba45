"""SparseGPT (Frantar & Alistarh 2023) and Wanda (Sun et al. 2024): one-layer references, N:M, models, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.llm_models import dict_batches, logits, tiny_char_gpt, tiny_llama
from torch import nn

from slimtorch.prune import (
    METHODS,
    NM,
    Magnitude,
    SparseGPT,
    Wanda,
    check_nm,
    get_mask,
    make_permanent_,
    nm_mask,
    prune_,
    sparsegpt_prune,
    wanda_mask,
)


def _inputs(n: int, d: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g) @ (torch.randn(d, d, generator=g) / d**0.5)
    x[:, :3] *= 8  # a few large input channels
    return x


def test_wanda_mask_is_per_row_ranking_of_abs_w_times_input_norm():
    w, x = torch.randn(6, 16), _inputs(200, 16)
    norm = x.pow(2).sum(0).sqrt()
    mask = wanda_mask(w, norm, sparsity=0.5)
    for r in range(6):  # reference: in each row, keep the 8 largest |W_rj| * ||X_j||
        score = [abs(w[r, j].item()) * norm[j].item() for j in range(16)]
        keep = sorted(range(16), key=lambda j: -score[j])[:8]
        assert set(torch.nonzero(mask[r]).flatten().tolist()) == set(keep)


def test_wanda_layer_comparison_ranks_the_whole_layer():
    w, x = torch.randn(6, 16), _inputs(200, 16)
    norm = x.pow(2).sum(0).sqrt()
    mask = wanda_mask(w, norm, sparsity=0.5, comparison="layer")
    score = (w.abs() * norm).flatten().tolist()  # reference: keep the 48 largest of all 96 scores
    keep = sorted(range(96), key=lambda i: -score[i])[:48]
    assert set(torch.nonzero(mask.flatten()).flatten().tolist()) == set(keep)
    assert mask.sum(1).tolist() != [8] * 6  # rows now lose different numbers of weights


def test_wanda_layer_comparison_through_prune_():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    data = [_inputs(64, 16)]
    ref = copy.deepcopy(mlp)
    prune_(mlp, Wanda(sparsity=0.5, comparison="layer"), data=data)
    first = get_mask(mlp[0]).mask
    norm = data[0].pow(2).sum(0).sqrt()
    assert torch.equal(first, wanda_mask(ref[0].weight.detach(), norm, 0.5, comparison="layer"))
    assert abs(first.float().mean().item() - 0.5) < 1e-6


def test_wanda_comparison_bad_values_say_what_is_allowed():
    with pytest.raises(ValueError, match="comparison must be 'row' or 'layer', got 'column'"):
        Wanda(comparison="column")
    with pytest.raises(ValueError, match="comparison='layer' is for unstructured sparsity"):
        Wanda(n=2, m=4, comparison="layer")


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
def test_nm_masks_keep_exactly_n_per_group(n, m):
    w, x = torch.randn(8, 32), _inputs(100, 32)
    h = 2 * x.T @ x / 100
    wm = wanda_mask(w, x.norm(dim=0), nm=(n, m))
    new, sm, _ = sparsegpt_prune(w, h, nm=(n, m), block_size=16)
    for mask in (wm, sm):
        assert torch.equal(mask.reshape(8, -1, m).sum(-1), torch.full((8, 32 // m), n))
    assert check_nm(new, n, m) and torch.equal(new != 0, sm & (w != 0))


def test_sparsegpt_output_error_below_magnitude_at_equal_sparsity():
    w, x = torch.randn(32, 64), _inputs(512, 64)
    h = 2 * x.T @ x / 512
    new, mask, loss = sparsegpt_prune(w, h, sparsity=0.5, block_size=32)
    assert loss > 0 and abs(1 - mask.float().mean().item() - 0.5) < 1e-6
    mag = w * nm_mask(w, 32, 64)  # keep the 32 largest |w| of each row: per-row magnitude at 50%
    err_sgpt = (x @ (w - new).T).pow(2).sum()
    err_mag = (x @ (w - mag).T).pow(2).sum()
    assert err_sgpt < 0.7 * err_mag
    # and Wanda, no reconstruction, sits in between on outlier inputs
    err_wanda = (x @ (w - w * wanda_mask(w, x.norm(dim=0), 0.5)).T).pow(2).sum()
    assert err_sgpt < err_wanda < err_mag


@pytest.mark.parametrize("config", [SparseGPT(sparsity=0.5), SparseGPT(n=2, m=4), Wanda(sparsity=0.5),
                                    Wanda(n=2, m=4)], ids=str)
def test_char_gpt_pruning_beats_magnitude_and_masks_survive(config):
    model = tiny_char_gpt()
    calib = [torch.randint(0, 65, (8, 32)) for _ in range(3)]
    x = torch.randint(0, 65, (8, 32))
    ref = model(x)
    pruned = copy.deepcopy(model)
    report = prune_(pruned, config, data=calib)
    assert report.extra["calibration"]["mode"] == "sequential"
    layers = [m for m in pruned.modules() if isinstance(m, nn.Linear)]
    assert all(get_mask(m) is not None for m in layers)
    if config.nm:
        assert all(check_nm(m.weight, 2, 4) for m in layers)
    else:
        assert all(abs(1 - m.weight.count_nonzero().item() / m.weight.numel() - 0.5) < 0.01 for m in layers)
    # fine-tuning keeps the zeros: a gradient step cannot revive a pruned weight
    zeros = [m.weight.detach() == 0 for m in layers]
    opt = torch.optim.SGD(pruned.parameters(), lr=0.1)
    pruned(x).pow(2).mean().backward()
    opt.step()
    assert all(torch.all(m.weight.detach()[z] == 0) for m, z in zip(layers, zeros))
    make_permanent_(pruned)
    assert all(get_mask(m) is None for m in pruned.modules())
    if isinstance(config, SparseGPT):  # reconstruction: closer to the dense model than magnitude
        mag = copy.deepcopy(model)
        prune_(mag, NM(2, 4) if config.nm else Magnitude(0.5, scope="layer"))
        with torch.no_grad():
            assert (pruned(x) - ref).pow(2).mean() < 0.9 * (mag(x) - ref).pow(2).mean()


@pytest.mark.parametrize("cls", [SparseGPT, Wanda])
def test_tiny_llama_with_gqa_and_dict_batches(cls):
    model = tiny_llama()
    calib = dict_batches(96)
    report = prune_(model, cls(n=2, m=4), calib_data=calib)
    lin = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert "model.layers.0.self_attn.k_proj" in lin and lin["model.layers.0.self_attn.k_proj"].out_features == 32
    assert all(check_nm(m.weight, 2, 4) for m in lin.values())
    assert report.extra["calibration"]["blocks"] == 2
    assert torch.isfinite(logits(model, calib[0])).all()


def test_registered_for_the_cli():
    assert METHODS.get("sparsegpt") is SparseGPT and METHODS.get("wanda") is Wanda
    assert SparseGPT.from_dict(SparseGPT(n=2, m=4).to_dict()) == SparseGPT(n=2, m=4)


def test_bad_input():
    with pytest.raises(ValueError, match="n=5 must be < m=4"):
        SparseGPT(n=5, m=4)
    with pytest.raises(ValueError, match="give both n and m"):
        Wanda(n=2)
    with pytest.raises(ValueError, match=r"sparsity: 1.5 is not in \[0, 1\)"):
        Wanda(sparsity=1.5)
    conv = nn.Sequential(nn.Conv2d(1, 4, 3))
    with pytest.raises(ValueError, match="prunes nn.Linear layers; Sequential has none"):
        prune_(conv, Wanda(), data=[torch.randn(1, 1, 5, 5)])
    model = tiny_char_gpt()
    with pytest.raises(ValueError, match="calibration data is empty"):
        prune_(model, SparseGPT(), data=[])
    bad = [torch.randn(2, 16), torch.full((2, 16), float("nan"))]
    mlp = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    with pytest.raises(ValueError, match="calibration batch 1 contains 32 NaN"):
        prune_(mlp, Wanda(), data=bad)
    with pytest.raises(ValueError, match="give one"):
        prune_(mlp, Wanda(), data=[torch.randn(2, 16)], calib_data=[torch.randn(2, 16)])


class _Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(8, 8)
        self.spare = nn.Linear(8, 8)  # never called by forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_layer_never_reached_by_calibration_is_named():
    with pytest.raises(ValueError, match=r"\['spare'\] never received an input during calibration"):
        prune_(_Unused(), SparseGPT(), data=[torch.randn(4, 8)])
