"""Structured pruning of tiny Hugging Face models built from configs (BERT, ViT, Llama with GQA, GPT-2).

Exactness is checked by construction: the heads and FFN units to be removed are made exactly zero first
(zero q/k/v rows and output-projection columns; zero FFN rows, biases and down-projection columns), so
they score lowest and removing them must leave the outputs unchanged.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import slimtorch  # noqa: E402
from slimtorch.core.errors import SlimtorchError  # noqa: E402
from slimtorch.prune import prune_  # noqa: E402
from slimtorch.prune.structured import Channel, find_surgery  # noqa: E402
from slimtorch.prune.structured.hf_rules import Conv1DSurgery  # noqa: E402

FAMILIES = ("bert", "vit", "llama", "gpt2")
H, N_HEADS, N_KV, FFN = 32, 4, 2, 64  # hidden, query heads, Llama key-value heads, FFN width (GPT-2: 4*H)


def tiny(family: str, layers: int = 2) -> torch.nn.Module:
    """A tiny model of ``family`` from a config (no download), in eval mode."""
    torch.manual_seed(0)
    t = transformers
    if family == "bert":
        cfg = t.BertConfig(vocab_size=100, hidden_size=H, num_hidden_layers=layers, num_attention_heads=N_HEADS,
                           intermediate_size=FFN, max_position_embeddings=64)
        return t.BertModel(cfg).eval()
    if family == "vit":
        cfg = t.ViTConfig(image_size=16, patch_size=4, hidden_size=H, num_hidden_layers=layers,
                          num_attention_heads=N_HEADS, intermediate_size=FFN, num_labels=3)
        return t.ViTForImageClassification(cfg).eval()
    if family == "llama":
        cfg = t.LlamaConfig(vocab_size=100, hidden_size=H, num_hidden_layers=layers, num_attention_heads=N_HEADS,
                            num_key_value_heads=N_KV, intermediate_size=FFN, max_position_embeddings=64)
        return t.LlamaForCausalLM(cfg).eval()
    cfg = t.GPT2Config(vocab_size=100, n_embd=H, n_layer=layers, n_head=N_HEADS, n_positions=64)
    return t.GPT2LMHeadModel(cfg).eval()


def inputs(family: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if family == "vit":
        return torch.randn(2, 3, 16, 16, generator=g)
    return torch.randint(0, 100, (2, 8), generator=g)


def out(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        o = model(x)
    return o.logits if hasattr(o, "logits") and o.logits is not None else o.last_hidden_state


def blocks(model: torch.nn.Module, family: str) -> list[torch.nn.Module]:
    return {"bert": lambda: model.encoder.layer, "vit": lambda: model.vit.layers,
            "llama": lambda: model.model.layers, "gpt2": lambda: model.transformer.h}[family]()


def zero_units(model: torch.nn.Module, family: str, heads: list[int], ffn: list[int]) -> None:
    """Zero query heads ``heads`` (with their k/v when not GQA) and FFN units ``ffn`` in every block."""
    d = H // N_HEADS
    rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in heads] + [torch.zeros(0, dtype=torch.long)])
    with torch.no_grad():
        for b in blocks(model, family):
            if family == "bert":
                a = b.attention
                for lin in (a.self.query, a.self.key, a.self.value):
                    lin.weight[rows] = 0
                    lin.bias[rows] = 0
                a.output.dense.weight[:, rows] = 0
                b.intermediate.dense.weight[ffn] = 0
                b.intermediate.dense.bias[ffn] = 0
                b.output.dense.weight[:, ffn] = 0
            elif family in ("vit", "llama"):
                a = b.attention if family == "vit" else b.self_attn
                qkv = (a.q_proj,) if family == "llama" else (a.q_proj, a.k_proj, a.v_proj)
                for lin in qkv:
                    lin.weight[rows] = 0
                    if lin.bias is not None:
                        lin.bias[rows] = 0
                a.o_proj.weight[:, rows] = 0
                if family == "vit":
                    b.mlp.fc1.weight[ffn] = 0
                    b.mlp.fc1.bias[ffn] = 0
                    b.mlp.fc2.weight[:, ffn] = 0
                else:
                    b.mlp.gate_proj.weight[ffn] = 0
                    b.mlp.up_proj.weight[ffn] = 0
                    b.mlp.down_proj.weight[:, ffn] = 0
            else:
                for sec in range(3):
                    b.attn.c_attn.weight[:, sec * H + rows] = 0
                    b.attn.c_attn.bias[sec * H + rows] = 0
                b.attn.c_proj.weight[rows] = 0
                b.mlp.c_fc.weight[:, ffn] = 0
                b.mlp.c_fc.bias[ffn] = 0
                b.mlp.c_proj.weight[ffn] = 0


def ffn_of(block: torch.nn.Module, family: str) -> int:
    m = {"bert": lambda: block.intermediate.dense, "vit": lambda: block.mlp.fc1,
         "llama": lambda: block.mlp.up_proj, "gpt2": lambda: block.mlp.c_fc}[family]()
    return int(getattr(m, "nf", None) or m.out_features)


# ---- exactness -------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_ratio_zero_changes_nothing(family):
    model = tiny(family)
    x = inputs(family)
    ref = out(model, x)
    report = prune_(model, Channel(ratio=0.0))
    assert report.params_after == report.params_before
    assert torch.equal(out(model, x), ref)


@pytest.mark.parametrize("family", FAMILIES)
def test_removing_zeroed_heads_and_ffn_units_is_exact(family):
    """Heads 1 and 3 (for Llama: query slot 1 of both key-value groups) and half the FFN are zero."""
    model = tiny(family)
    n_ffn = 4 * H if family == "gpt2" else FFN
    dead_ffn = list(range(1, n_ffn, 2))
    zero_units(model, family, heads=[1, 3], ffn=dead_ffn)
    x = inputs(family)
    ref = out(model, x)
    report = prune_(model, Channel(ratio=0.5))
    torch.testing.assert_close(out(model, x), ref, atol=1e-5, rtol=1e-5)
    info = report.extra["model"]
    assert info["num_attention_heads"] == [2, 2]
    assert info["ffn_widths"] == [n_ffn // 2] * 2
    cfg = model.config
    assert cfg.num_attention_heads == 2
    assert (cfg.n_inner if family == "gpt2" else cfg.intermediate_size) == n_ffn // 2
    assert cfg.hidden_size == H  # the hidden size is kept by default
    assert not any(k[0] == "module" and "embed" in k[1] for g in [] for k in g)  # no exclude was needed


def test_gqa_query_mode_keeps_kv_heads_and_prunes_within_groups():
    model = tiny("llama")
    zero_units(model, "llama", heads=[1, 3], ffn=list(range(0, FFN, 2)))  # slot 1 of groups 0 and 1
    x = inputs("llama")
    ref = out(model, x)
    k_before = model.model.layers[0].self_attn.k_proj.weight.clone()
    prune_(model, Channel(ratio=0.5, gqa="query"))
    attn = model.model.layers[0].self_attn
    assert torch.equal(attn.k_proj.weight, k_before)  # key-value heads untouched
    assert attn.q_proj.out_features == 2 * (H // N_HEADS)
    assert attn.num_key_value_groups == 1  # 2 query heads / 2 kv heads
    assert model.config.num_key_value_heads == 2 and model.config.num_attention_heads == 2
    torch.testing.assert_close(out(model, x), ref, atol=1e-5, rtol=1e-5)


def test_gqa_query_mode_lets_each_group_drop_its_own_weakest_heads():
    """Group 0's weakest is its first query head (head 0), group 1's its second (head 3): different slots.
    Sorting each group's heads by importance first (function-preserving) makes both go."""
    model = tiny("llama")
    zero_units(model, "llama", heads=[0, 3], ffn=list(range(0, FFN, 2)))
    x = inputs("llama")
    ref = out(model, x)
    prune_(model, Channel(ratio=0.5, gqa="query"))
    assert model.model.layers[0].self_attn.q_proj.out_features == 2 * (H // N_HEADS)
    torch.testing.assert_close(out(model, x), ref, atol=1e-5, rtol=1e-5)


def test_sorting_query_heads_keeps_the_function():
    """After sorting, each group's heads are in decreasing l2 score (mean over q rows and o columns of the
    head's L2 norms), every head is still in its own key-value group, and the outputs are unchanged."""
    from slimtorch.prune.structured.hf_model import sort_query_heads

    model = tiny("llama", layers=1)
    x = inputs("llama")
    ref = out(model, x)
    attn = model.model.layers[0].self_attn
    r, d = N_HEADS // N_KV, H // N_HEADS

    def head_scores():
        q = attn.q_proj.weight.detach().double().reshape(N_HEADS, -1).norm(dim=1)
        o = attn.o_proj.weight.detach().double().T.reshape(N_HEADS, -1).norm(dim=1)
        return ((q + o) / 2).reshape(N_KV, r)

    def group_heads():  # the set of heads of each group, by their q rows
        w = attn.q_proj.weight.detach().reshape(N_KV, r, d * H)
        return [sorted(tuple(h.tolist()) for h in g) for g in w]

    with torch.no_grad():  # make group 0's first head its weakest, so sorting must move it
        attn.q_proj.weight[:d] *= 0.01
    before_scores, before_heads = head_scores(), group_heads()
    ref = out(model, x)
    sort_query_heads(attn, Channel(importance="l2"))
    after = head_scores()
    assert (after[:, :-1] >= after[:, 1:]).all()
    assert torch.allclose(after.sort(dim=1, descending=True).values, before_scores.sort(dim=1, descending=True).values)
    assert group_heads() == before_heads
    torch.testing.assert_close(out(model, x), ref, atol=1e-5, rtol=1e-5)


def test_gqa_kv_mode_removes_whole_key_value_groups():
    model = tiny("llama")
    d = H // N_HEADS
    zero_units(model, "llama", heads=[], ffn=list(range(0, FFN, 2)))
    with torch.no_grad():  # kv group 1 = kv head 1 with query heads 2 and 3
        for b in model.model.layers:
            a = b.self_attn
            a.k_proj.weight[d:2 * d] = 0
            a.v_proj.weight[d:2 * d] = 0
            a.q_proj.weight[2 * d:] = 0
            a.o_proj.weight[:, 2 * d:] = 0
    x = inputs("llama")
    ref = out(model, x)
    report = prune_(model, Channel(ratio=0.5, gqa="kv"))
    attn = model.model.layers[0].self_attn
    assert (attn.k_proj.out_features, attn.q_proj.out_features) == (d, 2 * d)
    assert attn.num_key_value_groups == 2
    assert model.config.num_key_value_heads == 1 and model.config.num_attention_heads == 2
    assert report.extra["model"]["num_key_value_heads"] == [1, 1]
    torch.testing.assert_close(out(model, x), ref, atol=1e-5, rtol=1e-5)


def test_round_to_rounds_channels_not_heads():
    model = tiny("bert")
    prune_(model, Channel(ratio=0.5, round_to=8))
    assert model.config.num_attention_heads == 2  # heads are not rounded up to 8
    assert model.config.intermediate_size % 8 == 0


def test_heads_false_prunes_only_ffn():
    model = tiny("bert")
    report = prune_(model, Channel(ratio=0.5, heads=False))
    assert model.config.num_attention_heads == N_HEADS
    assert model.config.intermediate_size == FFN // 2
    assert "attention heads kept (heads=False)" in report.extra["notes"]


def test_taylor_heads_from_dict_batches_with_the_attention_mask():
    """Gradients for Taylor importance come from dict batches (input_ids, attention_mask, labels); the mask
    reaches the model: masking out half the tokens changes the scores."""
    from slimtorch.prune.structured import build_dependency_graph, score_groups

    model = tiny("llama")
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 100, (4, 8), generator=g)
    full = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}]
    half = [{"input_ids": ids, "attention_mask": (torch.arange(8) < 4).long().expand(4, 8), "labels": ids}]
    graph = build_dependency_graph(model, torch.zeros(1, 8, dtype=torch.long))
    cfg = Channel(ratio=0.5, importance="taylor")
    s_full, s_half = score_groups(model, graph, cfg, full), score_groups(model, graph, cfg, half)
    assert all(torch.isfinite(s).all() and (s > 0).any() for s in s_full)
    assert any(not torch.allclose(a, b) for a, b in zip(s_full, s_half))
    report = prune_(model, Channel(ratio=0.5, importance="taylor"), data=full)
    assert report.extra["model"]["num_attention_heads"] == [2, 2]
    assert out(model, inputs("llama")).shape == (2, 8, 100)


def test_taylor_without_targets_says_what_it_needs():
    model = tiny("bert", layers=1)
    with pytest.raises(ValueError, match="taylor importance needs batches with targets"):
        prune_(model, Channel(ratio=0.5, importance="taylor"), data=[{"input_ids": torch.zeros(1, 8).long()}])


# ---- reload ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_reload_without_code(family, tmp_path):
    """Non-uniform widths (layer 0 at 0.5, layer 1 at 0.25) reload exactly with slimtorch.load, from a
    slimtorch.save file and from a save_pretrained folder."""
    model = tiny(family)
    layer0 = {"bert": "encoder.layer.0.*", "vit": "vit.layers.0.*", "llama": "model.layers.0.*",
              "gpt2": "transformer.h.0.*"}[family]
    report = prune_(model, Channel(ratio=0.25, overrides={layer0: 0.5}))
    assert not report.extra["model"]["from_pretrained"]
    widths = [ffn_of(b, family) for b in blocks(model, family)]
    assert widths[0] < widths[1]
    x = inputs(family)
    ref = out(model, x)
    slimtorch.save(model, tmp_path / "m.safetensors")
    again = slimtorch.load(tmp_path / "m.safetensors")
    assert type(again) is type(model)
    torch.testing.assert_close(out(again, x), ref)
    model.save_pretrained(tmp_path / "hf")
    folder = slimtorch.load(tmp_path / "hf")
    assert [ffn_of(b, family) for b in blocks(folder, family)] == widths
    torch.testing.assert_close(out(folder, x), ref)
    assert folder.config.slimtorch_widths  # per-layer widths are in config.json


@pytest.mark.parametrize("family,kw", [("vit", {}), ("llama", {}), ("llama", {"gqa": "kv", "hidden": True}),
                                       ("bert", {"heads": False}), ("gpt2", {"heads": False})])
def test_uniform_widths_reload_with_from_pretrained(family, kw, tmp_path):
    model = tiny(family)
    report = prune_(model, Channel(ratio=0.5, **kw))
    assert report.extra["model"]["from_pretrained"], report.extra["model"]["from_pretrained_note"]
    x = inputs(family)
    ref = out(model, x)
    model.save_pretrained(tmp_path)
    auto = transformers.AutoModelForImageClassification if family == "vit" else (
        transformers.AutoModel if family == "bert" else transformers.AutoModelForCausalLM)
    again = auto.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(out(again, x), ref)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_head_pruned_bert_gpt2_say_from_pretrained_cannot_and_slimtorch_load_can(family, tmp_path):
    model = tiny(family)
    report = prune_(model, Channel(ratio=0.5))
    info = report.extra["model"]
    assert not info["from_pretrained"] and "reload with slimtorch.load" in info["from_pretrained_note"]
    x = inputs(family)
    model.save_pretrained(tmp_path)
    torch.testing.assert_close(out(slimtorch.load(tmp_path), x), out(model, x))


def test_llama_hidden_size_pruning_updates_config_and_runs():
    model = tiny("llama")
    prune_(model, Channel(ratio=0.5, hidden=True))
    assert model.config.hidden_size == H // 2
    assert model.model.norm.weight.shape == (H // 2,)
    assert out(model, inputs("llama")).shape == (2, 8, 100)


def test_loading_into_a_fresh_skeleton_updates_linear_widths(tmp_path):
    """The issue's MiniLM report: a fresh AutoModel skeleton kept Linear.out_features at the old width."""
    model = tiny("bert")
    prune_(model, Channel(ratio=0.5, heads=False))
    slimtorch.save(model, tmp_path / "m.safetensors")
    skeleton = tiny("bert")
    loaded = slimtorch.load(tmp_path / "m.safetensors", model=skeleton)
    lin = loaded.encoder.layer[0].intermediate.dense
    assert lin.out_features == lin.weight.shape[0] == FFN // 2


# ---- Conv1D ----------------------------------------------------------------------------------------
def test_conv1d_surgery_matches_a_sliced_reference():
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(6, 5)  # nf=6 outputs, nx=5 inputs, weight (5, 6)
    with torch.no_grad():
        conv.bias.normal_()
    assert isinstance(find_surgery(Conv1D), Conv1DSurgery)
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    w, b = conv.weight.detach().double(), conv.bias.detach().double()
    keep_out, keep_in = torch.tensor([0, 2, 5]), torch.tensor([1, 3, 4])
    rule = find_surgery(Conv1D)
    rule.prune(conv, "out", keep_out)
    rule.prune(conv, "in", keep_in)
    assert (conv.nf, conv.nx) == (3, 3)
    ref = x[..., keep_in] @ w[keep_in][:, keep_out] + b[keep_out]
    torch.testing.assert_close(conv.double()(x[..., keep_in]), ref)


# ---- bad inputs ------------------------------------------------------------------------------------
def test_bad_gqa_mode_is_named():
    with pytest.raises(ValueError, match="gqa: 'groups' is not one of"):
        Channel(gqa="groups")


def test_remote_code_folder_is_refused_without_consent(tmp_path):
    from slimtorch.core.consent import CodeConsentError

    model = tiny("bert", layers=1)
    model.save_pretrained(tmp_path)
    import json

    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CodeConsentError, match=r"auto_map.*modeling_evil.EvilModel.*allow_code=True"):
        slimtorch.load(tmp_path)


def test_folder_without_safetensors_is_refused(tmp_path):
    tiny("bert", layers=1).config.save_pretrained(tmp_path)
    with pytest.raises(SlimtorchError, match="no model.safetensors"):
        slimtorch.load(tmp_path)


def test_unknown_architecture_name_is_refused(tmp_path):
    model = tiny("bert", layers=1)
    model.save_pretrained(tmp_path)
    import json

    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["architectures"] = ["os.system"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SlimtorchError, match="'os.system', which is not a model class of transformers"):
        slimtorch.load(tmp_path)


def test_missing_transformers_says_how_to_install(monkeypatch):
    import sys

    from slimtorch.io.hf import require_transformers

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(SlimtorchError, match=r"pip install 'slimtorch\[hf\]'"):
        require_transformers()


def test_macs_count_gpt2_conv1d_layers():
    """Conv1D MACs are out.numel() * nx (a Linear's formula); the pruned model's count follows the cut."""
    from slimtorch.metrics import count_macs

    model = tiny("gpt2", layers=1)
    x = torch.zeros(1, 8, dtype=torch.long)
    a, mlp = model.transformer.h[0].attn, model.transformer.h[0].mlp
    expect = 8 * (3 * H * H + H * H + 4 * H * H + 4 * H * H) + 8 * H * 100  # c_attn, c_proj, c_fc, c_proj, lm_head
    assert count_macs(model, x) == expect
    prune_(model, Channel(ratio=0.5))
    expect = 8 * (H * 3 * H // 2 + H // 2 * H + H * 2 * H + 2 * H * H) + 8 * H * 100
    assert (a.c_attn.nf, mlp.c_fc.nf) == (3 * H // 2, 2 * H)
    assert count_macs(model, x) == expect


def test_channel_transformer_options_round_trip():
    cfg = Channel(ratio=0.3, heads=False, hidden=True, gqa="kv")
    again = Channel.from_dict(cfg.to_dict())
    assert (again.heads, again.hidden, again.gqa) == (False, True, "kv")


@pytest.mark.parametrize("entry,why", [({"encoder.layer.0.attention.self": {"forward": 1}}, "forward"),
                                       ({"no.such.layer": {"out_features": 1}}, "does not exist"),
                                       ({"pooler.dense": {"out_features": "8"}}, "out_features")])
def test_recorded_structure_is_checked_as_data(entry, why, tmp_path):
    """config.json's slimtorch_structure may only set structural attributes of existing layers."""
    import json

    tiny("bert", layers=1).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["slimtorch_structure"] = entry
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SlimtorchError, match=why):
        slimtorch.load(tmp_path)


def test_dict_example_inputs_trace_the_masked_call_and_count_macs():
    """``example_inputs`` may be a dict of named tensors (a tokenizer's output): the pruned model is the same
    as with positional ids, and the MAC counter takes the same dict."""
    from slimtorch.metrics import count_macs

    ids = inputs("bert")
    named = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    a, b = tiny("bert"), tiny("bert")
    assert count_macs(a, named) == count_macs(a, ids) > 0
    ra = prune_(a, Channel(ratio=0.5, heads=True), example_inputs=named)
    rb = prune_(b, Channel(ratio=0.5, heads=True), example_inputs=ids)
    assert ra.macs_after == rb.macs_after < ra.macs_before
    assert torch.allclose(out(a, ids), out(b, ids), atol=1e-6)
    with torch.no_grad():
        got = a(**named).last_hidden_state
    assert torch.allclose(got, out(b, ids), atol=1e-6)


def test_bad_example_inputs_name_what_is_accepted():
    with pytest.raises(ValueError, match="dict of named tensors"):
        prune_(tiny("bert"), Channel(ratio=0.5), example_inputs="not a tensor")
