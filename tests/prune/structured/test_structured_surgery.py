"""Channel surgery against manual slices, and the dependency graph's coupling on small hand-made nets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimtorch.models.attention import SelfAttention
from slimtorch.prune import prune_
from slimtorch.prune.structured import Channel, build_dependency_graph, find_surgery, registered_types


def _zero_out_channels(conv: nn.Conv2d | nn.Linear, idx: list[int], *norms: nn.Module) -> None:
    """Make output channels ``idx`` exactly zero after the layer and its norms (so they are unimportant)."""
    with torch.no_grad():
        conv.weight[idx] = 0
        if conv.bias is not None:
            conv.bias[idx] = 0
        for n in norms:
            n.bias[idx] = 0
            if isinstance(n, nn.BatchNorm2d):
                n.running_mean[idx] = 0


class ConvBnConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(F.relu(self.bn(self.c1(x))))


def test_conv_bn_conv_zero_channels_removed_output_unchanged() -> None:
    net = ConvBnConv().eval()
    _zero_out_channels(net.c1, [1, 4, 6, 7], net.bn)
    x = torch.randn(2, 3, 6, 6)
    y = net(x)
    w2 = net.c2.weight.detach().clone()
    prune_(net, Channel(ratio=0.5), example_inputs=x)
    assert (net.c1.out_channels, net.bn.num_features, net.c2.in_channels) == (4, 4, 4)
    assert torch.equal(net.c2.weight, w2[:, [0, 2, 3, 5]])  # manual slice of the consumer
    torch.testing.assert_close(net(x), y, rtol=0, atol=1e-6)


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def test_linear_surgery_equals_manual_slice() -> None:
    net = Mlp()
    x = torch.randn(5, 6)
    keep = torch.tensor([0, 2, 3, 7])
    ref1, ref2 = nn.Linear(6, 4), nn.Linear(4, 3)
    with torch.no_grad():
        ref1.weight.copy_(net.fc1.weight[keep])
        ref1.bias.copy_(net.fc1.bias[keep])
        ref2.weight.copy_(net.fc2.weight[:, keep])
        ref2.bias.copy_(net.fc2.bias)
    rule = find_surgery(nn.Linear)
    rule.prune(net.fc1, "out", keep)
    rule.prune(net.fc2, "in", keep)
    assert (net.fc1.out_features, net.fc2.in_features) == (4, 4)
    torch.testing.assert_close(net(x), ref2(torch.relu(ref1(x))), rtol=0, atol=0)


class CatSplit(nn.Module):
    """Two branches concatenated on channels, then chunked back into two halves that are added."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1)
        self.mix = nn.Conv2d(10, 8, 1)
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mix(torch.cat([self.a(x), self.b(x)], dim=1))
        p, q = torch.chunk(y, 2, dim=1)
        return self.out(p + q)


def test_concat_and_chunk_are_coupled_by_position() -> None:
    net = CatSplit().eval()
    x = torch.randn(1, 3, 4, 4)
    graph = build_dependency_graph(net, x)
    sizes = sorted((g.name, g.n_units) for g in graph.groups)
    # a: 4 channels, b: 6 channels; mix's 8 outputs are chunked into 2 halves that are added, so
    # channel i of the first half is coupled with channel i of the second: 4 units of 2 channels.
    assert sizes == [("a", 4), ("b", 6), ("mix", 4)]
    mix = next(g for g in graph.groups if g.name == "mix")
    assert mix.members[("module", "mix", "out")].tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    b = next(g for g in graph.groups if g.name == "b")
    assert b.members[("module", "mix", "in")].ravel().tolist() == [4, 5, 6, 7, 8, 9]  # offset by a's 4
    _zero_out_channels(net.b, [0, 3, 5])
    with torch.no_grad():  # the group score averages producer filters and consumer columns: zero both
        net.mix.weight[:, [4, 7, 9]] = 0
    y = net(x)
    report = prune_(net, Channel(ratio=0.5, overrides={"a": 0.0, "mix": 0.0}), example_inputs=x)
    assert net.mix.in_channels == 7 and net.b.out_channels == 3
    assert {g["name"]: g["removed"] for g in report.extra["groups"]} == {"a": 0, "b": 3, "mix": 0}
    torch.testing.assert_close(net(x), y, rtol=0, atol=1e-6)


class FlattenNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.conv(x), 1))


def test_linear_after_flatten_loses_the_spatial_block_of_each_channel() -> None:
    net = FlattenNet()
    _zero_out_channels(net.conv, [1, 2])
    x = torch.randn(3, 1, 4, 4)
    y = net(x)
    w = net.fc.weight.detach().clone()
    prune_(net, Channel(ratio=0.5), example_inputs=x)
    assert net.fc.in_features == 8
    assert torch.equal(net.fc.weight, torch.cat([w[:, 0:4], w[:, 12:16]], 1))
    torch.testing.assert_close(net(x), y, rtol=0, atol=1e-6)


class DepthwiseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pw = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.gn = nn.GroupNorm(4, 8)
        self.grouped = nn.Conv2d(8, 4, 1, groups=2)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.grouped(self.gn(self.dw(self.pw(x)))))


def test_depthwise_groupnorm_and_grouped_conv_remove_whole_groups() -> None:
    net = DepthwiseNet().eval()
    x = torch.randn(1, 3, 5, 5)
    graph = build_dependency_graph(net, x)
    # GroupNorm(4 groups of 2) and the 2-group conv (4 in- and 2 out-channels per group) couple
    # pw/dw channels in blocks of 4 with the grouped conv's outputs in blocks of 2: two removable units.
    assert [(g.name, g.n_units) for g in graph.groups] == [("pw", 2)]
    with torch.no_grad():  # make the second block of 4 channels exactly zero everywhere
        net.pw.weight[4:] = 0
        net.pw.bias[4:] = 0
        net.dw.bias[4:] = 0
        net.gn.bias[4:] = 0
        net.grouped.bias[2:] = 0
    y = net(x)
    prune_(net, Channel(ratio=0.5), example_inputs=x)
    assert (net.pw.out_channels, net.dw.groups, net.gn.num_groups, net.gn.num_channels) == (4, 4, 2, 4)
    assert (net.grouped.in_channels, net.grouped.out_channels, net.grouped.groups) == (4, 2, 1)
    torch.testing.assert_close(net(x), y, rtol=0, atol=1e-6)


def test_self_attention_head_surgery_equals_zeroed_heads() -> None:
    torch.manual_seed(0)
    attn = SelfAttention(16, 4).eval()
    x = torch.randn(2, 5, 16)
    ref = SelfAttention(16, 4).eval()
    ref.load_state_dict(attn.state_dict())
    with torch.no_grad():  # heads 1 and 3 contribute nothing once their proj columns are zero
        ref.proj.weight[:, 4:8] = 0
        ref.proj.weight[:, 12:16] = 0
    find_surgery(SelfAttention).prune(attn, "heads", torch.tensor([0, 2]))
    assert attn.num_heads == 2 and attn.q.out_features == 8 and attn.proj.in_features == 8
    torch.testing.assert_close(attn(x), ref(x), rtol=0, atol=1e-6)


def test_multihead_attention_surgery_equals_zeroed_heads_and_channels() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 4, batch_first=True).eval()
    ref = nn.MultiheadAttention(8, 4, batch_first=True).eval()
    ref.load_state_dict(mha.state_dict())
    keep = torch.tensor([0, 1, 4, 5])  # heads 0 and 2 (head_dim 2)
    with torch.no_grad():
        ref.out_proj.weight[:, [2, 3, 6, 7]] = 0
    x = torch.randn(2, 3, 8)
    x_ref = x.clone()
    x_ref[..., [2, 3, 6, 7]] = 0  # removed input channels carry nothing
    find_surgery(nn.MultiheadAttention).prune(mha, "out", keep)
    assert (mha.embed_dim, mha.num_heads, mha.head_dim) == (4, 2, 2)
    xk = x[..., keep]
    out = mha(xk, xk, xk, need_weights=False)[0]
    expect = ref(x_ref, x_ref, x_ref, need_weights=False)[0][..., keep]
    torch.testing.assert_close(out, expect, rtol=0, atol=1e-6)


@pytest.mark.parametrize("layer_type", registered_types(), ids=lambda t: t.__name__)
def test_every_registered_rule_declares_spaces(layer_type: type) -> None:
    rule = find_surgery(layer_type)
    assert rule is not None
    samples = {
        nn.Conv1d: lambda: nn.Conv1d(4, 6, 3),
        nn.Conv2d: lambda: nn.Conv2d(4, 6, 3),
        nn.Conv3d: lambda: nn.Conv3d(4, 6, 3),
        nn.Linear: lambda: nn.Linear(4, 6),
        nn.LayerNorm: lambda: nn.LayerNorm(6),
        nn.GroupNorm: lambda: nn.GroupNorm(3, 6),
        nn.Embedding: lambda: nn.Embedding(5, 6),
        SelfAttention: lambda: SelfAttention(6, 3),
        nn.MultiheadAttention: lambda: nn.MultiheadAttention(6, 3),
        nn.modules.batchnorm._BatchNorm: lambda: nn.BatchNorm2d(6),
    }
    if layer_type not in samples:  # rules that keep every channel (PadShortcut)
        assert rule.spaces(None) == {}
        return
    m = samples[layer_type]()
    spaces = rule.spaces(m)
    assert spaces and all(n > 0 for n in spaces.values())
    for s, n in spaces.items():
        keep = (
            torch.arange(0, n, 3)
            if s != "out" or not isinstance(m, nn.MultiheadAttention)
            else torch.arange(2)
        )
        for ws in rule.tensors(m, s):
            assert ws.view(ws.param).shape[ws.dim] == n * ws.block
        rule.prune(m, s, keep)
        assert rule.spaces(m)[s] == len(keep)


class Doubler(nn.Module):
    """A custom layer that uses its weight through F.conv2d (unknown to the graph without a rule)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight) * 2


class WithDoubler(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.d, self.c2 = nn.Conv2d(3, 4, 1), Doubler(4), nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(self.d(self.c1(x)))


def test_custom_layer_without_rule_is_an_error_naming_it_and_a_rule_fixes_it() -> None:
    from slimtorch.prune.structured import LayerSurgery, register_surgery
    from slimtorch.prune.structured.surgery import _SURGERY, WeightSlice, slice_tensor_

    x = torch.randn(1, 3, 2, 2)
    with pytest.raises(
        ValueError, match=r"layer type Doubler \(at 'd'\).*register_surgery\(Doubler\).*ignore="
    ):
        prune_(WithDoubler(), Channel(ratio=0.5), example_inputs=x)

    class DoublerSurgery(LayerSurgery):
        def spaces(self, m):
            return {"in": m.weight.shape[1], "out": m.weight.shape[0]}

        def bind(self, m, args, kwargs, output):
            return [("in", args[0], 1)], [("out", output, 1)]

        def tensors(self, m, space):
            return [WeightSlice("weight", m.weight, 0 if space == "out" else 1)]

        def prune(self, m, space, keep):
            slice_tensor_(m, "weight", 0 if space == "out" else 1, keep)

    register_surgery(Doubler)(DoublerSurgery)
    try:
        net = WithDoubler()
        prune_(net, Channel(ratio=0.5), example_inputs=x)
        assert (
            net.d.weight.shape == (2, 2, 1, 1) and net.c1.out_channels == 2 and net(x).shape == (1, 2, 2, 2)
        )
    finally:
        del _SURGERY[Doubler]
    net = WithDoubler()  # ignore= also gets past it: the layer becomes opaque and its channels stay
    prune_(net, Channel(ratio=0.5, ignore=("d",)), example_inputs=x)
    assert net.c1.out_channels == 4 and net.d.weight.shape == (4, 4, 1, 1)


class MeanPoolHead(nn.Module):
    def __init__(self, reduce_channels: bool) -> None:
        super().__init__()
        self.reduce_channels = reduce_channels
        self.conv, self.fc = nn.Conv2d(3, 6, 1), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).permute(0, 2, 3, 1)  # (B, H, W, C): channels moved last
        if self.reduce_channels:
            return self.fc(y * y.sum(-1, keepdim=True)).mean((1, 2))
        return self.fc(y.mean((1, 2)))


def test_permute_and_spatial_mean_keep_channels_and_a_channel_reduction_pins_them() -> None:
    x = torch.randn(1, 3, 4, 4)
    graph = build_dependency_graph(MeanPoolHead(False), x)
    assert [(g.name, g.n_units) for g in graph.groups] == [("conv", 6)]
    assert graph.groups[0].members[("module", "fc", "in")].ravel().tolist() == list(range(6))
    pinned = build_dependency_graph(MeanPoolHead(True), x)
    assert pinned.groups == []
    assert any("'sum' over the channel dim" in n for n in pinned.notes)


def test_zoo_layers_get_their_rules_through_the_kind_they_declare() -> None:
    """prune and metrics never import the zoo: SelfAttention and PadShortcut name a rule family."""
    from slimtorch.metrics.macs import find_rule
    from slimtorch.models.resnet_cifar import PadShortcut
    from slimtorch.prune.structured.surgery import PinnedSurgery, SelfAttentionSurgery

    assert isinstance(find_surgery(SelfAttention), SelfAttentionSurgery)
    assert isinstance(find_surgery(PadShortcut), PinnedSurgery)
    attn = SelfAttention(8, 2)
    assert find_rule(attn)(attn, (torch.zeros(3, 5, 8),), {}, None) == 2 * 3 * 2 * 5 * 5 * 4
