"""Channel pruning on every zoo model: runs, same output shape, MACs/params cut as predicted, reloads."""

from __future__ import annotations

import math

import pytest
import torch

import slimtorch
from slimtorch.metrics import count_macs, count_params
from slimtorch.models import create
from slimtorch.prune import prune_
from slimtorch.prune.structured import Channel

ZOO = {
    "resnet20": {},
    "mobilenetv2_cifar": {"width_mult": 0.25},
    "vit_tiny": {"image_size": 8, "patch_size": 4, "in_channels": 1, "dim": 32, "depth": 2, "heads": 4},
    "vit_tiny_torch_attn": {
        "image_size": 8,
        "patch_size": 4,
        "in_channels": 1,
        "dim": 32,
        "depth": 2,
        "heads": 4,
        "attn": "torch",
    },
    "char_gpt": {"block_size": 16, "n_layer": 2, "n_head": 4, "n_embd": 32},
    "lenet5": {},
    "mlp": {},
}
RATIOS = (0.0, 0.3, 0.5)


def _build(key: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create(key.replace("_torch_attn", ""), **ZOO[key]).eval()
    with torch.no_grad():  # non-trivial norms so that pruning changes outputs measurably
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.running_mean.uniform_(-0.1, 0.1)
    return model


def _inputs(model: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if getattr(model, "input_dtype", torch.float32) == torch.long:
        return torch.randint(0, model.num_classes, (2, *model.input_shape), generator=g)
    return torch.randn((2, *model.input_shape), generator=g)


def _keep(n: int, r: float) -> int:
    return max(1, math.floor(n * (1 - r) + 1e-9))


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("key", list(ZOO))
def test_zoo_model_prunes(key: str, ratio: float, tmp_path) -> None:
    model = _build(key)
    x = _inputs(model)
    y0 = model(x)
    macs0, params0 = count_macs(model, x), count_params(model)
    report = prune_(model, Channel(ratio=ratio), example_inputs=x)
    y1 = model(x)
    assert y1.shape == y0.shape
    groups = report.extra["groups"]
    assert groups, "every zoo model has prunable channel groups"
    for g in groups:  # each group keeps floor(n (1 - r)) units (at least one)
        assert g["units"] - g["removed"] == _keep(g["units"], ratio), g
    assert report.macs_before == macs0 and report.params_before == params0
    assert report.macs_after == count_macs(model, x) and report.params_after == count_params(model)
    if ratio == 0:
        assert torch.equal(y1, y0)
        assert report.macs_after == macs0 and report.params_after == params0
    else:
        assert report.macs_after < macs0 and report.params_after < params0
    slimtorch.save(model, tmp_path)
    again = slimtorch.load(tmp_path)
    assert torch.equal(again(x), y1)


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_resnet20_equals_a_narrower_resnet20(ratio: float) -> None:
    # uniform pruning keeps floor(16 (1-r)), floor(32 (1-r)), floor(64 (1-r)) channels in the 3 stages,
    # which is exactly resnet20(width=floor(16 (1-r))) when 2x/4x of it round the same way.
    model = _build("resnet20")
    x = _inputs(model)
    report = prune_(model, Channel(ratio=ratio), example_inputs=x)
    w = _keep(16, ratio)
    assert (_keep(32, ratio), _keep(64, ratio)) == (2 * w, 4 * w)
    ref = create("resnet20", width=w)
    assert report.macs_after == count_macs(ref, x)
    assert report.params_after == count_params(ref)
    assert [tuple(p.shape) for p in model.parameters()] == [tuple(p.shape) for p in ref.parameters()]


def test_lenet5_macs_and_params_follow_the_formula() -> None:
    model = _build("lenet5")
    x = torch.randn(1, 1, 28, 28)
    report = prune_(model, Channel(ratio=0.3), example_inputs=x)
    k1, k2, k3 = _keep(20, 0.3), _keep(50, 0.3), _keep(500, 0.3)
    # conv 5x5 on 28->24 (pool 12), conv 5x5 12->8 (pool 4), fc on k2*4*4, fc 10
    macs = k1 * 25 * 24 * 24 + k2 * k1 * 25 * 8 * 8 + k3 * k2 * 16 + 10 * k3
    params = (k1 * 25 + k1) + (k2 * k1 * 25 + k2) + (k3 * k2 * 16 + k3) + (10 * k3 + 10)
    assert report.macs_after == macs
    assert report.params_after == params


def test_mlp_params_follow_the_formula() -> None:
    model = _build("mlp")
    report = prune_(model, Channel(ratio=0.5), example_inputs=torch.randn(1, 784))
    assert report.params_after == 784 * 150 + 150 + 150 * 50 + 50 + 50 * 10 + 10
    assert report.macs_after == 784 * 150 + 150 * 50 + 50 * 10


@pytest.mark.parametrize("key", ["vit_tiny", "char_gpt"])
def test_transformers_at_half_equal_half_width_models(key: str) -> None:
    # width 32 -> 16, 4 heads -> 2 (head_dim 8 kept), MLP hidden 4x/2x width halves too.
    model = _build(key)
    x = _inputs(model)
    report = prune_(model, Channel(ratio=0.5), example_inputs=x)
    kw = dict(ZOO[key])
    if key == "vit_tiny":
        kw.update(dim=16, heads=2)
    else:
        kw.update(n_embd=16, n_head=2)
    ref = create(key, **kw)
    assert report.params_after == count_params(ref)
    assert report.macs_after == count_macs(ref, x)
    assert all(b.attn.num_heads == 2 for b in model.blocks)


def test_vit_torch_attention_keeps_head_dim_and_updates_embed_dim() -> None:
    model = _build("vit_tiny_torch_attn")
    x = _inputs(model)
    prune_(model, Channel(ratio=0.5), example_inputs=x)
    for b in model.blocks:
        a = b.attn
        assert (a.embed_dim, a.num_heads, a.head_dim, a.kdim, a.vdim) == (16, 2, 8, 16, 16)
        assert a.in_proj_weight.shape == (48, 16) and a.out_proj.weight.shape == (16, 16)
    assert model.pos.shape[-1] == 16 and model.cls_token.shape[-1] == 16
    assert model.head.out_features == 10


def test_resnet_option_a_pad_shortcut_is_kept_with_a_note() -> None:
    model = create("resnet20", shortcut="A").eval()
    x = torch.randn(1, 3, 32, 32)
    report = prune_(model, Channel(ratio=0.5), example_inputs=x)
    assert any("PadShortcut" in n for n in report.extra["notes"])
    # the residual streams are pinned: every block keeps its output width, inner convs are halved
    for layer, c in ((model.layer1, 16), (model.layer2, 32), (model.layer3, 64)):
        for blk in layer:
            assert blk.conv2.out_channels == c and blk.conv1.out_channels == c // 2
    assert model(x).shape == (1, 10)
