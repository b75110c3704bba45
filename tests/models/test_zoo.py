"""The model zoo: registry, parameter counts pinned to the papers, shapes, argument errors."""

from __future__ import annotations

import pytest
import torch

from slimtorch.models import create, list_models

SMALL = {"vit_tiny": {"dim": 32, "depth": 2, "heads": 2}, "char_gpt": {"n_layer": 1, "n_embd": 32, "block_size": 16},
         "mobilenetv2_cifar": {"width_mult": 0.25}}


def example(model, batch=2):
    if getattr(model, "input_dtype", torch.float32) == torch.long:
        return torch.randint(0, model.num_classes, (batch, *model.input_shape))
    return torch.randn(batch, *model.input_shape)


@pytest.mark.parametrize("name", list_models())
def test_every_model_runs_and_records_its_spec(name):
    kwargs = SMALL.get(name, {})
    m = create(name, **kwargs).eval()
    y = m(example(m))
    assert y.shape[0] == 2 and y.shape[-1] == m.num_classes
    assert m.slimtorch_spec == {"name": name, "kwargs": kwargs}


@pytest.mark.parametrize(
    "name, kwargs, params",
    [
        ("lenet_300_100", {}, 266_610),  # Han et al. 2015 Table 2
        ("lenet5", {}, 431_080),  # Caffe LeNet-5, Han et al. 2015 Table 3
        ("mlp_1200_1200", {}, 784 * 1200 + 1200 + 1200 * 1200 + 1200 + 12_010),
        ("mlp_800_800", {}, 784 * 800 + 800 + 800 * 800 + 800 + 8_010),
        ("resnet20", {"shortcut": "A"}, 269_722),  # He et al. 2016: 0.27M
        ("resnet56", {"shortcut": "A"}, 853_018),  # He et al. 2016: 0.85M
    ],
)
def test_parameter_counts(name, kwargs, params):
    assert sum(p.numel() for p in create(name, **kwargs).parameters()) == params


def test_resnet_option_b_adds_only_the_projections():
    a = sum(p.numel() for p in create("resnet20", shortcut="A").parameters())
    b = sum(p.numel() for p in create("resnet20", shortcut="B").parameters())
    # 1x1 convs 16->32 and 32->64 plus their BatchNorms (weight + bias).
    assert b - a == 16 * 32 + 32 * 64 + 2 * (32 + 64)


def test_option_a_shortcut_pads_channels():
    m = create("resnet20", shortcut="A").eval()
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize(
    "name, kwargs, match",
    [("resnet20x", {}, r"unknown model 'resnet20x'; valid: .*resnet20"),
     ("lenet5", {"image_size": 8}, "too small"),
     ("vit_tiny", {"patch_size": 5}, "does not divide"),
     ("lenet5", {"bogus": 1}, "bad arguments for model 'lenet5'")],
)
def test_bad_model_arguments(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        create(name, **kwargs)


def test_char_gpt_is_causal_and_checks_length():
    m = create("char_gpt", **SMALL["char_gpt"]).eval()
    x = torch.randint(0, 65, (1, 16))
    y1 = m(x)
    x2 = x.clone()
    x2[0, 10:] = (x2[0, 10:] + 1) % 65
    assert torch.allclose(m(x2)[0, :10], y1[0, :10], atol=1e-6)  # earlier positions do not see later tokens
    with pytest.raises(ValueError, match="exceeds block_size 16"):
        m(torch.zeros(1, 17, dtype=torch.long))


def test_torch_attention_variant_matches_shapes():
    m = create("vit_tiny", dim=32, depth=1, heads=4, attn="torch").eval()
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
