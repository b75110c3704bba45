"""A model that *is* one layer (``prune_(nn.Linear(64, 32), ...)``) works with every technique (issue #14).

The root module's name is ``""`` (as in ``named_modules`` and ``state_dict``); messages and tables show it
as ``"<root>"``. In-place verbs cannot hand back a new root object, so the root becomes its wrapper in
place: the caller's reference is the quantized / pruned / shared layer afterwards.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimtorch import share
from slimtorch.core.selection import ROOT_NAME, Selector, named_modules_matching, set_submodule
from slimtorch.prune import NM, Channel, Magnitude, get_mask, make_permanent_, prune_
from slimtorch.quant import (
    QAT,
    Int8Dynamic,
    Int8Static,
    LowBitStatic,
    QuantConv2d,
    QuantLinear,
    WeightOnly,
    compare_with_onnx,
    convert_qat_,
    export_onnx,
    load_quantized,
    quantize_,
    save_quantized,
)
from slimtorch.quant.modules.packed import WeightOnlyConv2d, WeightOnlyLinear


@dataclass
class Root:
    """One single-layer model kind: how to build it, its inputs, its float op and its classes."""

    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[int], torch.Tensor]
    op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # op(x, weight) without bias
    float_type: type[nn.Module]
    quant_type: type[nn.Module]
    packed_type: type[nn.Module]


def _conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, w, None, 1, 1)


ROOTS = [
    Root("linear", lambda: nn.Linear(64, 32), lambda b: torch.randn(b, 64), F.linear,
         nn.Linear, QuantLinear, WeightOnlyLinear),
    # fan-in 16 * 3 * 3 = 144: a multiple of 4 (N:M) and of 16 (group_size)
    Root("conv", lambda: nn.Conv2d(16, 8, 3, padding=1), lambda b: torch.randn(b, 16, 6, 6), _conv,
         nn.Conv2d, QuantConv2d, WeightOnlyConv2d),
]


@pytest.fixture(params=ROOTS, ids=[r.name for r in ROOTS])
def root(request: pytest.FixtureRequest) -> Root:
    return request.param


def _calib(root: Root, batches: int = 4, size: int = 16) -> list[torch.Tensor]:
    return [root.inputs(size) for _ in range(batches)]


def _float_out(layer: nn.Module, weight: torch.Tensor, root: Root, x: torch.Tensor) -> torch.Tensor:
    bias = layer.bias.detach()
    return root.op(x, weight) + bias.reshape(1, -1, *[1] * (x.dim() - 2))


def _int8_error_bound(root: Root, w: torch.Tensor, x: torch.Tensor, s_x: float, s_w: torch.Tensor) -> torch.Tensor:
    """Largest ``|op(x_hat, w_hat) + b_hat - op(x, w) - b|`` when every input is rounded to a grid of step
    ``s_x``, weight row ``o`` to step ``s_w[o]`` and the bias to ``s_x * s_w[o]`` (no clipping):
    ``|x_hat w_hat - x w| <= |x| |dw| + |w| |dx| + |dx| |dw|`` summed over each output's fan-in."""
    s_o = s_w.reshape(1, -1, *[1] * (x.dim() - 2))  # per output channel
    ones_x, ones_w = torch.ones_like(x), torch.ones_like(w)
    return (root.op(x.abs(), ones_w) * s_o / 2 + root.op(ones_x, w.abs()) * s_x / 2
            + root.op(ones_x, ones_w) * s_o * s_x / 4 + s_o * s_x / 2)


# ---- selection ---------------------------------------------------------------------------------


def test_selector_selects_a_root_layer_and_never_a_container_root():
    layer = nn.Linear(64, 32)
    assert [(n, m) for n, m in Selector((nn.Linear,)).select(layer)] == [("", layer)]
    seq = nn.Sequential(nn.Linear(64, 32))
    assert [n for n, _ in Selector((nn.Linear,)).select(seq)] == ["0"]
    assert [n for n, _ in Selector((nn.Module,)).select(seq)] == ["0"]  # the container is never a layer
    assert named_modules_matching(layer, (nn.Linear,), exclude="*") == []
    assert [n for n, _ in named_modules_matching(layer, (nn.Linear,), include=ROOT_NAME)] == [""]
    assert named_modules_matching(layer, (nn.Linear,), include="fc") == []
    assert named_modules_matching(layer, (nn.Conv2d,)) == []
    seen: list[str] = []
    named_modules_matching(layer, (nn.Linear,), filter_fn=lambda m, n: seen.append(n) or True)
    assert seen == [""]


def test_set_submodule_turns_the_root_into_the_new_module_in_place():
    layer = nn.Linear(4, 3)
    weight = layer.weight
    new = QuantLinear.from_float(layer, None, _frozen_weight_quant(layer))
    set_submodule(layer, "", new)
    assert type(layer) is QuantLinear and isinstance(layer, nn.Linear)
    assert layer.weight is weight  # parameters are shared, not copied
    new.marker = 1  # the two references share one state
    assert layer.marker == 1
    other = nn.Linear(4, 3)
    with pytest.raises(ValueError, match="cannot replace the root Linear by a Sequential that contains it"):
        set_submodule(other, "", nn.Sequential(other))
    assert type(other) is nn.Linear


def _frozen_weight_quant(layer: nn.Linear):
    from slimtorch.quant import FakeQuantize

    q = FakeQuantize(None, bits=8, signed=True, axis=0)
    s = layer.weight.detach().abs().amax(1) / 127
    q.set_qparams(s, torch.zeros_like(s, dtype=torch.int32))
    return q


# ---- pruning -----------------------------------------------------------------------------------


def test_magnitude_prunes_the_root_to_the_requested_sparsity_keeping_the_largest(root: Root):
    model = root.build()
    dense = model.weight.detach().clone()
    x = root.inputs(2)
    report = prune_(model, Magnitude(sparsity=0.75), example_inputs=x)
    w = model.weight.detach()
    assert int((w == 0).sum()) == round(0.75 * w.numel())
    kept = w != 0
    assert dense[kept].abs().min() >= dense[~kept].abs().max()  # the largest magnitudes survive
    assert torch.equal(w[kept], dense[kept])
    assert get_mask(model) is not None and isinstance(model, root.float_type)
    assert [r.name for r in report.layers] == [""]
    assert report.layer(ROOT_NAME).sparsity == pytest.approx(0.75)
    assert report.table().splitlines()[2].startswith(ROOT_NAME)
    assert report.macs_after == pytest.approx(report.macs_before * 0.25, abs=1)
    torch.testing.assert_close(model(x), _float_out(model, dense * kept, root, x))
    make_permanent_(model)
    assert type(model) is root.float_type  # masks gone, the plain layer class back
    assert sorted(model.state_dict()) == ["bias", "weight"]
    assert torch.equal(model.weight.detach(), dense * kept)


def test_nm_keeps_two_of_every_four_inputs_of_the_root(root: Root):
    model = root.build()
    dense = model.weight.detach().clone()
    prune_(model, NM(n=2, m=4))
    make_permanent_(model)
    assert type(model) is root.float_type
    groups = model.weight.detach().reshape(dense.shape[0], -1, 4)  # (out, fan_in / 4, 4), PyTorch memory order
    assert ((groups == 0).sum(-1) == 2).all()
    dense_groups = dense.abs().reshape(dense.shape[0], -1, 4)
    kept = groups != 0
    kept_min = dense_groups.masked_fill(~kept, float("inf")).amin(-1)
    pruned_max = dense_groups.masked_fill(kept, -1.0).amax(-1)
    assert (kept_min >= pruned_max).all()  # the two largest |w| of each group are kept


def test_nm_names_the_root_when_m_does_not_divide_its_inputs():
    with pytest.raises(ValueError, match=r"layer '<root>' \(Linear\) has 6 input elements"):
        prune_(nn.Linear(6, 4), NM(n=2, m=4))


def test_a_selection_that_excludes_the_root_lists_it_as_a_candidate():
    with pytest.raises(ValueError, match=r"no layer of Linear is selected.*\['<root>'\]"):
        prune_(nn.Linear(8, 4), Magnitude(sparsity=0.5, include=("fc",)))


def test_channel_pruning_of_a_root_layer_removes_nothing_and_says_why(root: Root):
    model = root.build()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    x = root.inputs(2)
    with pytest.warns(UserWarning, match=rf"single {root.float_type.__name__} layer \(<root>\).*Magnitude or NM"):
        report = prune_(model, Channel(ratio=0.5), example_inputs=x)
    assert report.layers == [] and report.extra["groups"] == []
    assert report.params_after == report.params_before and report.macs_after == report.macs_before
    assert "single" in report.extra["warnings"][0]
    assert type(model) is root.float_type
    assert all(torch.equal(v, dense[k]) for k, v in model.state_dict().items())


def test_channel_pruning_of_a_root_layer_also_traces_with_fx():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        report = prune_(nn.Linear(8, 4), Channel(ratio=0.5, tracer="fx"), example_inputs=torch.randn(2, 8))
    assert report.extra["groups"] == [] and report.extra["tracer"] == "concrete"


# ---- quantization ------------------------------------------------------------------------------


def test_int8_static_quantizes_the_root_in_place_within_the_rounding_bound(root: Root):
    model = root.build().eval()
    calib = _calib(root)
    w = model.weight.detach().clone()
    report = quantize_(model, Int8Static(), calib_data=calib)
    assert report.quantized == [""] and report.skipped == {}
    assert type(model) is root.quant_type and isinstance(model, root.float_type)
    assert model.output_quant is None  # the model's output (the logits) stays float
    s_x = float(model.input_quant.scale)
    s_w = model.weight_quant.scale.flatten()
    for x in calib:  # calibration inputs: inside the observed range, so nothing is clipped
        err = (model(x) - _float_out(model, w, root, x)).abs()
        assert err.max() > 0  # it really is quantized
        assert (err <= _int8_error_bound(root, w, x, s_x, s_w) + 1e-5).all()


def test_int8_dynamic_quantizes_a_root_linear_and_leaves_a_root_conv_float(root: Root):
    model = root.build().eval()
    w = model.weight.detach().clone()
    report = quantize_(model, Int8Dynamic(granularity="tensor"))
    x = root.inputs(16)
    if root.float_type is nn.Conv2d:  # dynamic int8 covers Linear layers only
        assert report.quantized == [] and type(model) is nn.Conv2d
        assert torch.equal(model(x), _float_out(model, w, root, x))
        return
    assert report.quantized == [""] and type(model) is QuantLinear
    s_x = float((x.max().clamp(min=0) - x.min().clamp(max=0)) / 255)  # ONNX DynamicQuantizeLinear's scale
    err = (model(x) - _float_out(model, w, root, x)).abs()
    assert err.max() > 0
    bound = _int8_error_bound(root, w, x, s_x, model.weight_quant.scale.flatten())
    assert (err <= bound - s_x * model.weight_quant.scale.flatten() / 2 + 1e-5).all()  # the bias stays float


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_weight_only_packs_the_root(root: Root, method: str):
    model = root.build().eval()
    reference = root.build()
    reference.load_state_dict(model.state_dict())
    calib = _calib(root)
    report = quantize_(model, WeightOnly(bits=4, group_size=16, method=method), calib_data=calib)
    assert report.quantized == [""] and type(model) is root.packed_type
    assert model.qweight.numel() == reference.weight.numel() // 2  # two 4-bit codes per byte
    w = reference.weight.detach()
    wq = model.weight.reshape(w.shape[0], -1)
    scale = model.scale.repeat_interleave(16, dim=1)  # (out, fan_in): the step of each weight's group
    if method == "rtn":
        assert ((wq - w.reshape(w.shape[0], -1)).abs() <= scale / 2 + 1e-6).all()  # round to nearest
    x = calib[0]
    torch.testing.assert_close(model(x), _float_out(model, model.weight, root, x))

    @torch.no_grad()
    def calib_error(m: nn.Module) -> float:
        return sum(float((m(x) - reference(x)).pow(2).sum()) for x in calib)

    if method == "gptq":  # GPTQ minimises the layer's output error on the calibration data
        rtn = root.build()
        rtn.load_state_dict(reference.state_dict())
        quantize_(rtn, WeightOnly(bits=4, group_size=16, method="rtn"))
        assert calib_error(model) < calib_error(rtn)


def test_qat_trains_and_converts_the_root(root: Root):
    model = root.build()
    w = model.weight.detach().clone()
    calib = _calib(root)
    report = quantize_(model, QAT(bits_w=8, bits_a=8), calib_data=calib)
    assert report.quantized == [""] and type(model) is root.quant_type and model.training
    model(calib[0]).pow(2).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert set(grads) == {"weight", "bias", "input_quant.scale", "weight_quant.scale"}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())  # LSQ scales learn too
    convert_qat_(model)
    assert not model.training
    s_x, s_w = float(model.input_quant.scale), model.weight_quant.scale.flatten()
    x = calib[0]
    err = (model(x) - _float_out(model, w, root, x)).abs()
    assert (err <= _int8_error_bound(root, w, x, s_x, s_w) + 1e-5).all()


def test_low_bit_static_quantizes_the_root(root: Root):
    model = root.build().eval()
    w = model.weight.detach().clone()
    calib = _calib(root)
    report = quantize_(model, LowBitStatic(bits_w=4, bits_a=8), calib_data=calib)
    assert report.quantized == [""] and type(model) is root.quant_type
    assert model.weight_quant.bits == 4
    s_x, s_w = float(model.input_quant.scale), model.weight_quant.scale.flatten()
    for x in calib:
        err = (model(x) - _float_out(model, w, root, x)).abs()
        assert (err <= _int8_error_bound(root, w, x, s_x, s_w) + 1e-5).all()


def test_an_int8_root_round_trips_through_save_quantized(tmp_path, root: Root):
    model = root.build().eval()
    calib = _calib(root)
    config = Int8Static()
    quantize_(model, config, calib_data=calib)
    path = save_quantized(model, tmp_path / "root.safetensors", config)
    loaded = load_quantized(path, model=root.build())  # not a zoo model: the float skeleton is passed
    assert type(loaded) is root.quant_type
    assert torch.equal(loaded.input_quant.scale, model.input_quant.scale)
    assert torch.equal(loaded(calib[0]), model(calib[0]))


def test_quantize_with_the_root_excluded_changes_nothing():
    model = nn.Linear(8, 4).eval()
    report = quantize_(model, Int8Dynamic(exclude=("*",)))
    assert report.quantized == [] and type(model) is nn.Linear


@pytest.mark.parametrize(
    "kind,config,ops",
    [
        ("linear", Int8Static(), {"QuantizeLinear", "DequantizeLinear"}),
        ("conv", Int8Static(), {"QuantizeLinear", "DequantizeLinear"}),
        ("linear", Int8Dynamic(granularity="tensor"), {"DynamicQuantizeLinear", "MatMulInteger"}),
    ],
)
def test_a_quantized_root_exports_to_onnx_and_onnx_runtime_agrees(tmp_path, kind, config, ops):
    import onnx

    root = next(r for r in ROOTS if r.name == kind)
    model = root.build().eval()
    calib = _calib(root)
    quantize_(model, config, calib_data=calib)
    path = export_onnx(model, tmp_path / "root.onnx", calib[0])  # its own check runs ORT on calib[0]
    assert ops <= {n.op_type for n in onnx.load(str(path)).graph.node}
    got = compare_with_onnx(model, path, calib)
    # ONNX Runtime and torch may round a few inputs differently (ties, fused scales): allow two input
    # steps times the largest weight per output, never bit-equality
    if isinstance(config, Int8Static):
        s_x = float(model.input_quant.scale)
    else:
        s_x = max(float((x.max().clamp(min=0) - x.min().clamp(max=0)) / 255) for x in calib)
    assert got["max_abs_diff"] <= 2 * s_x * float(model.weight.detach().abs().max()) + 1e-5


# ---- weight sharing ----------------------------------------------------------------------------


def test_cluster_shares_the_root_weights_and_learns_the_centroids(root: Root):
    model = root.build()
    share.cluster_(model, 3)
    w = model.weight.detach()
    assert torch.unique(w).numel() <= 2**3
    assert isinstance(model, root.float_type)
    [summary] = share.sharing_summary(model)
    assert summary.name == "" and summary.clusters_used <= 8 and summary.kept == w.numel()
    x = root.inputs(4)
    model(x).sum().backward()
    # Han et al. 2016 eq. 3: each centroid's gradient is the sum of the gradients of its weights
    w_leaf = w.clone().requires_grad_(True)
    _float_out(model, w_leaf, root, x).sum().backward()
    sw = share.shared_layers(model)[""]
    expected = torch.zeros(sw.centroids.numel() + 1).index_add_(0, sw.codes.reshape(-1), w_leaf.grad.reshape(-1))
    torch.testing.assert_close(sw.centroids.grad, expected[1:])


def test_cluster_by_root_pattern_or_kind():
    layer = nn.Linear(64, 32)
    share.cluster_(layer, {ROOT_NAME: 2})
    assert share.sharing_summary(layer)[0].bits == 2
    layer = nn.Linear(64, 32)
    share.cluster_(layer, {"fc": 5})
    assert share.sharing_summary(layer)[0].bits == 5


def test_pruned_and_shared_root_round_trips_through_a_slim_file(tmp_path, root: Root):
    model = root.build()
    prune_(model, Magnitude(sparsity=0.5))
    share.cluster_(model, 4)
    w = model.weight.detach().clone()
    assert int((w == 0).sum()) == round(0.5 * w.numel())  # pruned weights stay zero
    assert torch.unique(w[w != 0]).numel() <= 2**4
    path = share.save(model, tmp_path / "root.slim")
    assert path.stat().st_size < 4 * w.numel() / 2  # smaller than the fp32 nonzeros alone
    loaded = share.load(path, model=root.build())
    assert type(loaded) is root.float_type
    assert torch.equal(loaded.weight, w) and torch.equal(loaded.bias, model.bias.detach())
    x = root.inputs(4)
    assert torch.equal(loaded(x), model(x).detach())
