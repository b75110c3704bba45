"""The architecture spec of a model file is untrusted data (issue 18): only structural fields, checked
against the tensor header before anything is allocated; every problem a SpecError naming file and field."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import slimtorch
from slimtorch.core.errors import SlimtorchError
from slimtorch.io import spec as spec_mod
from slimtorch.io.spec import STRUCTURAL_ATTRS, SpecError
from slimtorch.io.storage import read_spec, write_safetensors
from slimtorch.models import create


@pytest.fixture
def mlp_file(tmp_path):
    torch.manual_seed(0)
    m = create("mlp", in_features=8, hidden=[6], num_classes=3).eval()
    return slimtorch.save(m, tmp_path / "mlp.safetensors"), m


def _tamper(src, dst, edit=None, tensors=None):
    """Copy ``src`` to ``dst`` with ``edit(spec)`` applied and ``tensors`` replacing some tensors."""
    spec = read_spec(src)
    state = load_file(str(src))
    if edit is not None:
        spec = edit(spec) or spec
    state.update(tensors or {})
    return write_safetensors(dst, state, spec)


def _set(path, value):
    def edit(spec):
        node = spec
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = value
    return edit


def test_bn_eps_in_changed_is_refused(tmp_path):
    m = create("resnet20", width=4).eval()
    src = slimtorch.save(m, tmp_path / "r.safetensors")
    assert torch.equal(slimtorch.load(src).bn1.running_var, m.bn1.running_var)  # the untampered file loads
    bad = _tamper(src, tmp_path / "eps.safetensors", _set(["changed", "bn1"], {"eps": 100}))
    with pytest.raises(SpecError, match=r"eps\.safetensors: architecture spec field 'changed\.bn1\.eps': 'eps' is "
                       r"not a structural attribute; a spec may set only \['in_channels'"):
        slimtorch.load(bad)


def test_huge_widths_in_a_small_file_are_refused_before_allocating(mlp_file, tmp_path):
    src, _ = mlp_file
    # 10**9 x 10**9 float32 weights would be 4 exabytes: reaching the message proves nothing was allocated
    bad = _tamper(src, tmp_path / "huge.safetensors", _set(["model", "kwargs", "hidden"], [10**9, 10**9]))
    with pytest.raises(SpecError, match=r"field 'model': the spec implies 1,000,000,0\d\d,\d{3},\d{3},\d{3} "
                       r"parameter values but the file holds 75"):
        slimtorch.load(bad)
    bad2 = _tamper(src, tmp_path / "wide.safetensors", _set(["model", "kwargs", "hidden"], [20000, 20000]))
    with pytest.raises(SpecError, match="implies 400,260,003 parameter values but the file holds 75"):
        slimtorch.load(bad2)


def test_negative_kwarg_is_refused(mlp_file, tmp_path):
    bad = _tamper(mlp_file[0], tmp_path / "neg.safetensors", _set(["model", "kwargs", "hidden"], [-5]))
    with pytest.raises(SpecError, match=r"field 'model\.kwargs\.hidden\[0\]': -5 is negative"):
        slimtorch.load(bad)


def test_unknown_kwarg_and_unknown_architecture(mlp_file, tmp_path):
    bad = _tamper(mlp_file[0], tmp_path / "kw.safetensors", _set(["model", "kwargs", "activation"], "gelu"))
    with pytest.raises(SpecError, match=r"'model\.kwargs\.activation': 'mlp' takes no argument 'activation'; "
                       r"allowed: \['in_features', 'hidden'"):
        slimtorch.load(bad)
    bad = _tamper(mlp_file[0], tmp_path / "name.safetensors", _set(["model", "name"], "os:system"))
    with pytest.raises(SpecError, match=r"'model\.name': 'os:system' is not a registered architecture; known:"):
        slimtorch.load(bad)


def test_non_plain_kwarg_is_refused(mlp_file, tmp_path):
    # a mapping is plain data (a constructor may take a config), but what it holds is checked the same way
    bad = _tamper(mlp_file[0], tmp_path / "d.safetensors", _set(["model", "kwargs", "hidden"], {"a": -1}))
    with pytest.raises(SpecError, match=r"'model\.kwargs\.hidden\.a': -1 is negative"):
        slimtorch.load(bad)
    bad = _tamper(mlp_file[0], tmp_path / "e.safetensors", _set(["model", "kwargs", "hidden"], {"a": 1}))
    with pytest.raises(SpecError, match=r"'model\.kwargs': 'mlp' cannot be built from"):
        slimtorch.load(bad)
    bad = _tamper(mlp_file[0], tmp_path / "f.safetensors", _set(["changed", "net.1"], {"out_features": {"a": 1}}))
    with pytest.raises(SpecError, match=r"'changed\.net\.1\.out_features': a dict; allowed: numbers, bools, "
                       r"strings and lists of them$"):
        slimtorch.load(bad)


def test_model_as_a_string_is_refused(mlp_file, tmp_path):
    bad = _tamper(mlp_file[0], tmp_path / "s.safetensors", _set(["model"], "mlp"))
    with pytest.raises(SpecError, match=r"field 'model': 'mlp'; expected \{'name': <architecture>"):
        slimtorch.load(bad)


def test_missing_submodule_is_refused(mlp_file, tmp_path):
    bad = _tamper(mlp_file[0], tmp_path / "m.safetensors", _set(["changed", "net.99"], {"out_features": 3}))
    with pytest.raises(SpecError, match=r"'changed\.net\.99': the model has no submodule 'net\.99'"):
        slimtorch.load(bad)


@pytest.mark.parametrize("attr", ["forward", "__class__", "training", "eps", "weight"])
def test_non_structural_attributes_are_refused(mlp_file, tmp_path, attr):
    bad = _tamper(mlp_file[0], tmp_path / "a.safetensors", _set(["changed", "net.1"], {attr: 1}))
    with pytest.raises(SpecError, match=rf"'changed\.net\.1\.{attr}': '{attr}' is not a structural attribute"):
        slimtorch.load(bad)


def test_structural_attribute_of_the_wrong_type_is_refused(mlp_file, tmp_path):
    bad = _tamper(mlp_file[0], tmp_path / "t.safetensors", _set(["changed", "net.1"], {"out_features": [6]}))
    with pytest.raises(SpecError, match=r"'changed\.net\.1\.out_features': \[6\] does not fit out_features = 6"):
        slimtorch.load(bad)
    bad = _tamper(mlp_file[0], tmp_path / "u.safetensors", _set(["changed", "net.1"], {"num_heads": 2}))
    with pytest.raises(SpecError, match=r"Linear 'net\.1' has no stored attribute 'num_heads'"):
        slimtorch.load(bad)


def test_changed_width_that_the_tensors_do_not_have_is_refused(mlp_file, tmp_path):
    bad = _tamper(mlp_file[0], tmp_path / "w.safetensors", _set(["changed", "net.1"], {"out_features": 5}))
    with pytest.raises(SpecError, match="the spec implies 66 parameter values but the file holds 75"):
        slimtorch.load(bad)


def test_tensor_shape_that_the_spec_does_not_imply_is_refused(mlp_file, tmp_path):
    src, m = mlp_file
    w = m.net[1].weight.detach().reshape(4, 12).clone()  # same count, other shape
    bad = _tamper(src, tmp_path / "shape.safetensors", tensors={"net.1.weight": w})
    with pytest.raises(SpecError, match=r"'changed\.net\.1': tensor 'net\.1\.weight' is \[4, 12\] in the file, but "
                       r"the spec implies \[6, 8\]"):
        slimtorch.load(bad)


def test_layers_that_do_not_chain_are_refused_at_load_not_at_forward(mlp_file, tmp_path):
    src, _ = mlp_file
    # net.1 claims 7 outputs, net.3 5 inputs, and the file's tensors agree with each: consistent per layer,
    # but 7 features do not feed 5, so the first forward pass would fail
    def edit(spec):
        spec["changed"] = {"net.1": {"out_features": 7}, "net.3": {"in_features": 5}}

    bad = _tamper(src, tmp_path / "chain.safetensors", edit,
                  tensors={"net.3.weight": torch.zeros(3, 5), "net.1.weight": torch.zeros(7, 8),
                           "net.1.bias": torch.zeros(7)})
    with pytest.raises(SpecError, match=r"the layers do not fit together \(a forward pass fails"):
        slimtorch.load(bad)


def test_missing_tensor_is_refused(mlp_file, tmp_path):
    src, _ = mlp_file
    state = load_file(str(src))
    del state["net.3.bias"]
    bad = write_safetensors(tmp_path / "miss.safetensors", state, read_spec(src))
    with pytest.raises(SpecError, match=r"tensors missing from the file: \['net\.3\.bias'\]"):
        slimtorch.load(bad)


def test_constructor_that_would_create_too_many_layers_is_stopped(mlp_file, tmp_path):
    bad = _tamper(mlp_file[0], tmp_path / "deep.safetensors", _set(["model", "kwargs", "hidden"], [1] * 4000))
    with pytest.raises(SpecError, match="the constructor creates more than 80 tensors, more than the file"):
        slimtorch.load(bad)


def test_spec_that_is_not_json_is_refused(mlp_file, tmp_path):
    state = load_file(str(mlp_file[0]))
    p = tmp_path / "nojson.safetensors"
    from safetensors.torch import save_file

    save_file(state, str(p), metadata={"slimtorch": "{not json"})
    with pytest.raises(SpecError, match="nojson.safetensors: architecture spec field '': not valid JSON"):
        slimtorch.load(p)


def test_tied_weights_and_pruned_shapes_still_round_trip(tmp_path):
    torch.manual_seed(0)
    gpt = create("char_gpt", vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8).eval()
    back = slimtorch.load(slimtorch.save(gpt, tmp_path / "g.safetensors"))
    idx = torch.randint(0, 11, (2, 8))
    assert torch.equal(back(idx), gpt(idx))
    tied = [n for n, p in gpt.named_parameters(remove_duplicate=False)]
    assert [n for n, p in back.named_parameters(remove_duplicate=False)] == tied
    assert len(list(back.parameters())) == len(list(gpt.parameters()))  # ties are kept, not split


# ---- fuzz: only our error escapes, nothing bigger than the file is allocated -------------------------------
_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)
_layers = st.sampled_from(["", "net", "net.0", "net.1", "net.2", "net.3", "net.9", "x", "net.1.weight"])
_attrs = st.sampled_from([*STRUCTURAL_ATTRS, "eps", "forward", "__class__", "__dict__", "weight", "_parameters"])
_kwarg_names = st.sampled_from(["in_features", "hidden", "num_classes", "dropout", "input_dropout", "bogus"])
_specs = st.fixed_dictionaries(
    {
        "model": st.one_of(
            _values,
            st.fixed_dictionaries({"name": st.sampled_from(["mlp", "lenet5", "nope", "MLP"]),
                                   "kwargs": st.dictionaries(_kwarg_names, _values, max_size=4)}),
        ),
        "changed": st.one_of(_values, st.dictionaries(_layers, st.dictionaries(_attrs, _values, max_size=3),
                                                      max_size=3)),
    }
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=_specs)
def test_fuzzed_specs_raise_only_our_error_and_never_over_allocate(mlp_file, spec, monkeypatch):
    src, _ = mlp_file
    shapes = {k: tuple(v.shape) for k, v in load_file(str(src)).items()}
    file_numel = sum(math.prod(s) for s in shapes.values())
    allocated = []
    real = spec_mod._materialize

    def counting(model, sizes, device):
        if device == "cpu":
            allocated.append(sum(math.prod(s) for s in sizes.values()))
        return real(model, sizes, device)

    monkeypatch.setattr(spec_mod, "_materialize", counting)
    json.dumps(spec)  # what a file can hold
    try:
        model = slimtorch.io.storage.model_from_spec(spec, src, shapes)
    except SlimtorchError:
        assert not allocated
        return
    assert allocated == [file_numel]
    assert sum(t.numel() for t in model.state_dict().values()) == file_numel
