"""Int8 quantization and ONNX export of tiny Hugging Face models built from configs (no download).

Each family goes quantize -> export (no wrapper, dict example inputs) -> ONNX Runtime at two other batch
sizes and sequence lengths, compared with the simulation. ONNX Runtime and the simulation compute the
same integer products; what differs is float rounding and requantization ties, so the tolerance is
``CHECK_TOLERANCE`` of the peak output (the export check's own bound), never bit equality.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from slimtorch.core.errors import SlimtorchError
from slimtorch.metrics.named_export import export_named, failing_op
from slimtorch.metrics.ort import export_onnx_fp32, onnx_session
from slimtorch.quant import Int8Dynamic, Int8Static, export_onnx, quantize_
from slimtorch.quant.export.onnx_export import CHECK_TOLERANCE
from slimtorch.quant.modules.embedding import QuantEmbedding
from slimtorch.quant.modules.hf_conv1d import linear_from_conv1d

tf = pytest.importorskip("transformers")

VOCAB = 120


def tiny(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "bert":
        cfg = tf.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=64)
        return tf.BertModel(cfg).eval()
    if kind == "llama":  # grouped-query attention: 4 query heads share 2 key/value heads, RoPE
        cfg = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)
        return tf.LlamaForCausalLM(cfg).eval()
    if kind == "gpt2":
        cfg = tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                            bos_token_id=0, eos_token_id=0)
        return tf.GPT2LMHeadModel(cfg).eval()
    cfg = tf.ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64, num_labels=5)
    return tf.ViTForImageClassification(cfg).eval()


def inputs(kind: str, batch: int, seq: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if kind == "vit":
        return {"pixel_values": torch.randn(batch, 3, 32, 32, generator=g)}
    ids = torch.randint(0, VOCAB, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, -2:] = 0  # a padded row: the mask must reach the graph
    return {"input_ids": ids, "attention_mask": mask}


def run_onnx(path, feed: dict[str, torch.Tensor]) -> np.ndarray:
    return onnx_session(path).run(None, {k: v.numpy() for k, v in feed.items()})[0]


def test_hf_conv1d_becomes_an_identical_linear() -> None:
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv = Conv1D(6, 5)  # nf=6 outputs, nx=5 inputs; weight (5, 6)
    x = torch.randn(3, 4, 5)
    lin = linear_from_conv1d(conv)
    assert lin.weight.shape == (6, 5)
    torch.testing.assert_close(lin(x), conv(x), rtol=0, atol=1e-6)


def test_gpt2_quantization_covers_every_conv1d_projection() -> None:
    model = tiny("gpt2")
    report = quantize_(model, Int8Static(), calib_data=[inputs("gpt2", 4, 9, s) for s in range(2)])
    # 4 Conv1D per block (c_attn, attn c_proj, c_fc, mlp c_proj) x 2 blocks + lm_head
    assert len(report.details["conv1d_as_linear"]) == 8
    assert len(report.quantized) == 9
    assert report.details["embeddings"] == ["transformer.wte", "transformer.wpe"]
    assert "untraced" in report.details  # fx cannot trace HF models: the report says what is done instead


def test_embedding_rows_have_their_own_8bit_scale_on_the_portable_target() -> None:
    model = tiny("bert")
    quantize_(model, Int8Dynamic(), calib_data=None)  # target portable: 7-bit matmul weights
    emb = model.embeddings.word_embeddings
    assert isinstance(emb, QuantEmbedding)
    w = emb.weight.detach()
    scale = emb.weight_quant.scale.flatten()
    torch.testing.assert_close(scale, w.abs().amax(1) / 127)  # symmetric min-max per row, 8 bits
    codes = emb.integer_weight()
    assert int(codes.abs().max()) == 127
    err = (emb(torch.arange(VOCAB)) - w).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-7).all())  # round-to-nearest on each row's own grid
    assert model.encoder.layer[0].attention.self.query.weight_quant.bits == 7


CASES = [("bert", "static"), ("llama", "static"), ("gpt2", "dynamic"), ("vit", "static")]


@pytest.mark.parametrize("kind,scheme", CASES)
def test_quantize_export_and_run_at_other_shapes(kind: str, scheme: str, tmp_path) -> None:
    model = tiny(kind)
    if scheme == "static":
        quantize_(model, Int8Static(), calib_data=[inputs(kind, 4, 9, s) for s in range(2)])
    else:
        quantize_(model, Int8Dynamic(granularity="tensor"), calib_data=None)
    path = export_onnx(model, tmp_path / "m.int8.onnx", inputs(kind, 2, 9))  # checks itself on the example
    proto = onnx.load(str(path))
    names = [i.name for i in proto.graph.input]
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    if kind == "vit":
        assert names == ["pixel_values"] and dims["pixel_values"][0] == "batch"
    else:
        assert names == ["input_ids", "attention_mask"]
        assert dims["input_ids"] == ["batch", "sequence"] and dims["attention_mask"] == ["batch", "sequence"]
        ops = [n.op_type for n in proto.graph.node]
        gathers = {n.output[0] for n in proto.graph.node if n.op_type == "Gather"}
        # the token embedding: int8 rows gathered, then dequantized with their gathered row scales
        assert any(n.op_type == "DequantizeLinear" and n.input[0] in gathers for n in proto.graph.node)
        assert ops.count("QuantizeLinear" if scheme == "static" else "DynamicQuantizeLinear") >= 2
    for batch, seq in ((3, 5), (1, 12)):
        feed = inputs(kind, batch, seq, seed=batch)
        with torch.no_grad():
            ours = model(**feed)[0].float()
        theirs = torch.from_numpy(run_onnx(path, feed))
        assert theirs.shape == ours.shape
        assert float((theirs - ours).abs().max()) <= CHECK_TOLERANCE * float(ours.abs().max())


def test_int8_bert_file_is_about_4x_smaller_than_fp32(tmp_path) -> None:
    model = tiny("bert")
    ex = inputs("bert", 2, 9)
    fp32 = export_onnx_fp32(model, ex, tmp_path / "m.fp32.onnx")
    with torch.no_grad():
        ref = model(**ex)[0]
    torch.testing.assert_close(torch.from_numpy(run_onnx(fp32, ex)), ref, rtol=1e-4, atol=1e-4)
    assert not model.training  # export restores each module's own mode
    quantize_(model, Int8Dynamic(granularity="tensor"), calib_data=None)
    q = export_onnx(model, tmp_path / "m.int8.onnx", ex)
    params = sum(p.numel() for p in model.parameters())
    int8_bytes = q.stat().st_size
    # one byte per weight plus per-row/per-channel scales and the float LayerNorm/bias vectors
    assert fp32.stat().st_size / int8_bytes > 3.0
    assert int8_bytes < 1.5 * params


class Eigh(nn.Module):
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = input_ids.float()
        return torch.linalg.eigh(x.transpose(-1, -2) @ x).eigenvalues


def test_export_failure_is_one_short_error_naming_the_op(tmp_path, capfd) -> None:
    with pytest.raises(SlimtorchError) as info:
        export_named(Eigh(), {"input_ids": torch.ones(2, 3, 3, dtype=torch.long)}, tmp_path / "e.onnx")
    msg = str(info.value)
    assert "at op" in msg and "eigh" in msg and "Try:" in msg
    assert len(msg) < 800 and "\n" not in msg
    out, err = capfd.readouterr()
    assert len(out) + len(err) < 2000  # exporter chatter captured, not dumped


def test_failing_op_is_found_in_exporter_messages() -> None:
    assert failing_op("Exporting the operator 'aten::diff' to ONNX opset version 17 is not supported") == "aten::diff"
    assert failing_op("no decomposition for torch.ops.aten.linalg_eigh.default") == "torch.ops.aten.linalg_eigh.default"
    assert failing_op("shape mismatch") is None
