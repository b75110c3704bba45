"""Reloading saved weight-only (packed) models without user code: zoo models, HF causal LMs, bad files."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimtorch
from slimtorch.core.errors import SlimtorchError
from slimtorch.models import create
from slimtorch.quant import WeightOnly, export_onnx, load_quantized, quantize_, save_quantized
from slimtorch.quant.modules.packed import WeightOnlyLinear


def _tiny_gpt() -> nn.Module:
    torch.manual_seed(0)
    return create("char_gpt", vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=32).eval()


def test_gptq_char_gpt_reloads_with_slimtorch_load(tmp_path):
    model = _tiny_gpt()
    calib = [torch.randint(0, 20, (4, 16)) for _ in range(2)]
    config = WeightOnly(bits=3, group_size=16, method="gptq")
    quantize_(model, config, calib_data=calib)
    path = save_quantized(model, tmp_path / "q.safetensors", config)
    again = slimtorch.load(path)  # no skeleton, no calibration data
    packed = {n: m for n, m in again.named_modules() if isinstance(m, WeightOnlyLinear)}
    assert packed and all(m.bits == 3 and m.group_size == 16 for m in packed.values())
    for name, m in packed.items():
        assert torch.equal(m.qweight, model.get_submodule(name).qweight)
    x = torch.randint(0, 20, (2, 16))
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    # the reloaded model deploys as it is
    out = export_onnx(again, tmp_path / "q.onnx", x)
    assert out.exists()


def test_bias_correction_on_a_bias_free_layer_reloads(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16, bias=False), nn.ReLU(), nn.Linear(16, 4)).eval()
    config = WeightOnly(bits=4, group_size=16, bias_correction=True)
    quantize_(model, config, calib_data=[torch.randn(8, 32)])
    assert model[0].bias is not None
    path = save_quantized(model, tmp_path / "q.safetensors", config)
    skeleton = nn.Sequential(nn.Linear(32, 16, bias=False), nn.ReLU(), nn.Linear(16, 4))
    again = load_quantized(path, skeleton)
    x = torch.randn(3, 32)
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_hf_llama_reloads_without_a_skeleton(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=40, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    lm = transformers.LlamaForCausalLM(cfg).eval()
    config = WeightOnly(bits=4, group_size=32, exclude=("lm_head",))
    quantize_(lm, config)
    path = save_quantized(lm, tmp_path / "llama.safetensors", config)
    again = load_quantized(path)
    assert type(again).__name__ == "LlamaForCausalLM" and isinstance(again.model.layers[0].mlp.up_proj,
                                                                      WeightOnlyLinear)
    assert isinstance(again.lm_head, nn.Linear)
    ids = torch.randint(0, 40, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, lm(input_ids=ids).logits, rtol=0, atol=0)


def test_file_and_model_disagree_on_a_packed_layer(tmp_path):
    model = nn.Sequential(nn.Linear(32, 8))
    config = WeightOnly(bits=4, group_size=16)
    quantize_(model, config)
    path = save_quantized(model, tmp_path / "q.safetensors", config)
    with pytest.raises(SlimtorchError, match="packed layer '0' is a linear in the file but a Conv2d"):
        load_quantized(path, nn.Sequential(nn.Conv2d(32, 8, 1)))
    with pytest.raises(SlimtorchError, match="packed layer '0' that the model lacks"):
        load_quantized(path, nn.Module())


def test_awq_input_scales_reload(tmp_path):
    if "awq" not in __import__("slimtorch.quant", fromlist=["ROUNDING"]).ROUNDING.names():
        pytest.skip("AWQ is not on this branch")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    config = WeightOnly(bits=4, group_size=16, method="awq")
    quantize_(model, config, calib_data=[torch.randn(16, 32) * torch.linspace(0.1, 5, 32)])
    path = save_quantized(model, tmp_path / "q.safetensors", config)
    again = load_quantized(path, nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)))
    x = torch.randn(3, 32)
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_a_packed_table_claiming_more_weights_than_the_file_holds_is_refused(tmp_path):
    """The packed-layer table is untrusted: its float shape must match the codes the file holds."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    quantize_(net, WeightOnly(bits=4, group_size=32))
    p = save_quantized(net, tmp_path / "q.safetensors", WeightOnly(bits=4, group_size=32))
    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    spec = json.loads(meta["slimtorch"])
    spec["metadata"]["packed"]["0"]["shape"] = [32000, 64]
    save_file(tensors, str(p), metadata={**meta, "slimtorch": json.dumps(spec)})
    with pytest.raises(SlimtorchError, match=r"packed layer '0' records a \[32000, 64\] weight at 4 bits"):
        load_quantized(p)
