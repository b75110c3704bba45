"""MatMulNBits export: packing per ONNX Runtime's spec, agreement with the simulation, size, bad input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from slimtorch.core.errors import SlimtorchError
from slimtorch.quant import WeightOnly, compare_with_onnx, export_onnx, quantize_
from slimtorch.quant.export.matmul_nbits import (
    check_block_size,
    container_bits,
    nbits_weight,
    pack_blocks,
    pack_zero_points,
)
from slimtorch.quant.modules.packed import WeightOnlyLinear


def spec_unpack_b(b: np.ndarray, bits: int, k: int) -> np.ndarray:
    """ORT's ContribOperators.md, MatMulNBits input B: (N, k_blocks, blob_size) uint8, codes packed low bits
    first along K within each block. Element-by-element reading of that text (independent of the packer)."""
    n, k_blocks, blob = b.shape
    block = blob * 8 // bits
    out = np.zeros((n, k), dtype=np.int64)
    for row in range(n):
        for kk in range(k):
            blk, j = divmod(kk, block)
            bit = j * bits
            byte = int(b[row, blk, bit // 8])
            out[row, kk] = (byte >> (bit % 8)) & ((1 << bits) - 1)
    return out


def spec_unpack_zp(zp: np.ndarray, bits: int, k_blocks: int) -> np.ndarray:
    """Packed zero points (N, ceil(k_blocks * bits / 8)): the same packing as B, per row."""
    out = np.zeros((zp.shape[0], k_blocks), dtype=np.int64)
    for row in range(zp.shape[0]):
        for j in range(k_blocks):
            bit = j * bits
            out[row, j] = (int(zp[row, bit // 8]) >> (bit % 8)) & ((1 << bits) - 1)
    return out


def test_four_bit_bytes_hold_the_first_code_in_the_low_nibble():
    codes = np.arange(16, dtype=np.uint8).reshape(1, 16)  # one block of 16 codes 0..15
    b = pack_blocks(codes, 4, 16)
    assert b.shape == (1, 1, 8)
    assert b[0, 0, 0] == 0x10 and b[0, 0, 1] == 0x32 and b[0, 0, 7] == 0xFE


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("block", [16, 32])
def test_pack_blocks_matches_the_spec(bits, block):
    rng = np.random.default_rng(bits * block)
    codes = rng.integers(0, 1 << bits, size=(5, 4 * block))
    b = pack_blocks(codes, bits, block)
    assert b.shape == (5, 4, block * bits // 8) and b.dtype == np.uint8
    np.testing.assert_array_equal(spec_unpack_b(b, bits, 4 * block), codes)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("k_blocks", [1, 3, 8])
def test_pack_zero_points_matches_the_spec(bits, k_blocks):
    rng = np.random.default_rng(k_blocks)
    zp = rng.integers(0, 1 << bits, size=(6, k_blocks))
    packed = pack_zero_points(zp, bits)
    assert packed.shape == (6, -(-k_blocks * bits // 8))
    np.testing.assert_array_equal(spec_unpack_zp(packed, bits, k_blocks), zp)


def test_container_widths():
    assert [container_bits(b) for b in range(2, 9)] == [2, 4, 4, 8, 8, 8, 8]


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_written_tensors_decode_to_our_codes(bits, symmetric):
    """B, scales and zero points decoded by the spec give back exactly the layer's dequantized weight."""
    model = nn.Sequential(nn.Linear(64, 24))
    quantize_(model, WeightOnly(bits=bits, group_size=16, symmetric=symmetric))
    layer = model[0]
    w = nbits_weight(layer)
    cb = container_bits(bits)
    assert (w.bits, w.code_bits, w.block_size, w.k, w.n) == (cb, bits, 16, 64, 24)
    q = spec_unpack_b(w.packed, cb, 64)
    z = (np.full((24, 4), 1 << (cb - 1)) if w.zero_points is None
         else spec_unpack_zp(w.zero_points, cb, 4))
    assert (w.zero_points is None) == symmetric
    deq = (q - np.repeat(z, 16, axis=1)) * np.repeat(w.scales.astype(np.float64), 16, axis=1)
    np.testing.assert_allclose(deq, layer.weight.double().numpy(), rtol=0, atol=1e-6)


def _graph(path):
    proto = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    return proto, inits


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_export_agrees_with_the_simulation(tmp_path, bits, symmetric):
    torch.manual_seed(bits)
    model = nn.Sequential(nn.Linear(64, 48), nn.GELU(), nn.Linear(48, 32, bias=False)).eval()
    quantize_(model, WeightOnly(bits=bits, group_size=16, symmetric=symmetric))
    path = export_onnx(model, tmp_path / "m.onnx", torch.randn(2, 64))
    proto, inits = _graph(path)
    nodes = [n for n in proto.graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == 2 and all(n.domain == "com.microsoft" for n in nodes)
    attrs = {a.name: a.i for a in nodes[0].attribute}
    assert attrs == {"K": 64, "N": 48, "bits": container_bits(bits), "block_size": 16, "accuracy_level": 0}
    assert not any(t.ndim == 2 and t.dtype == np.float32 and t.size >= 48 * 32 for t in inits.values()), \
        "no float weight matrix may remain in the file"
    # agreement with a float64 reference of the simulation: ORT only re-orders the float sums, so the
    # difference is float rounding, far below the output change of one code moved by one step (s * |x|)
    x = torch.randn(5, 64)
    with torch.no_grad():
        h = torch.nn.functional.gelu(x.double() @ model[0].weight.double().T + model[0].bias.double())
        ref = h @ model[2].weight.double().T
    from slimtorch.metrics.ort import onnx_session

    theirs = onnx_session(path).run(None, {"input": x.numpy()})[0]
    err = np.abs(theirs - ref.numpy()).max()
    step = float(model[2].scale.min()) * float(h.abs().max())
    assert err < 1e-4 * float(ref.abs().max()) + 1e-6
    assert err < step / 10
    r = compare_with_onnx(model, path, [x])
    assert r["top1_agreement"] == 1.0


def test_dynamic_batch_and_sequence(tmp_path):
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    quantize_(model, WeightOnly(bits=4, group_size=16))
    axes = {"input": {0: "batch", 1: "seq"}, "output": {0: "batch", 1: "seq"}}
    path = export_onnx(model, tmp_path / "m.onnx", torch.randn(1, 5, 32), dynamic_axes=axes)
    r = compare_with_onnx(model, path, [torch.randn(3, 11, 32)])
    assert r["max_abs_diff"] < 1e-4


def test_int4_file_is_under_a_third_of_fp32(tmp_path):
    from slimtorch.quant import export_float_onnx

    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256)).eval()
    fp32 = export_float_onnx(model, tmp_path / "f.onnx", torch.randn(1, 256))
    quantize_(model, WeightOnly(bits=4, group_size=32))
    q = export_onnx(model, tmp_path / "q.onnx", torch.randn(1, 256))
    # 4-bit codes + one fp32 scale and one 4-bit zero point per 32 weights: 4.0 + 1.0 + 0.125 bits per weight
    ratio = q.stat().st_size / fp32.stat().st_size
    assert 0.15 < ratio < 0.2


def test_int8_activation_level_stays_close(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 16)).eval()
    quantize_(model, WeightOnly(bits=4, group_size=32))
    path = export_onnx(model, tmp_path / "m.onnx", torch.randn(4, 64), accuracy_level=4)
    attrs = {a.name: a.i for a in onnx.load(str(path)).graph.node[0].attribute}
    assert attrs["accuracy_level"] == 4


@pytest.mark.parametrize(
    ("group", "in_features", "message"),
    [
        (24, 48, "needs a power of two >= 16"),
        (8, 64, "needs a power of two >= 16"),
        (32, 48, "does not divide the 48 input features"),
    ],
)
def test_bad_block_sizes_are_refused(group, in_features, message):
    with pytest.raises(SlimtorchError, match=message):
        check_block_size(group, in_features, "fc")


@pytest.mark.parametrize(("group", "message"), [(8, "group size 8 .* power of two >= 16"),
                                                (None, "group size 48 .* power of two >= 16")])
def test_export_refuses_a_model_with_a_bad_group(tmp_path, group, message):
    model = nn.Sequential(nn.Linear(48, 8))
    quantize_(model, WeightOnly(bits=4, group_size=group))
    with pytest.raises(SlimtorchError, match=f"layer '0': {message}"):
        export_onnx(model, tmp_path / "m.onnx", torch.randn(1, 48))
    assert not (tmp_path / "m.onnx").exists()


def test_export_refuses_packed_convolutions(tmp_path):
    model = nn.Sequential(nn.Conv2d(16, 8, 1), nn.Flatten(), nn.Linear(8 * 4 * 4, 4))
    quantize_(model, WeightOnly(bits=4, group_size=16))
    with pytest.raises(SlimtorchError, match=r"weight-only Conv2d layers \['0'\] have no MatMulNBits form"):
        export_onnx(model, tmp_path / "m.onnx", torch.randn(1, 16, 4, 4))


def test_bad_accuracy_level(tmp_path):
    model = nn.Sequential(nn.Linear(32, 8))
    quantize_(model, WeightOnly(bits=4, group_size=16))
    with pytest.raises(SlimtorchError, match="accuracy_level must be one of"):
        export_onnx(model, tmp_path / "m.onnx", torch.randn(1, 32), accuracy_level=7)


def test_llama_causal_lm_exports_and_agrees(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=40, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   use_cache=False)
    torch.manual_seed(0)
    lm = transformers.LlamaForCausalLM(cfg).eval()

    class Logits(nn.Module):  # input ids -> logits; an explicit mask keeps the TorchScript exporter on its path
        def __init__(self, m: nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.m(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits

    model = Logits(lm).eval()
    quantize_(model, WeightOnly(bits=4, group_size=32))
    assert sum(isinstance(m, WeightOnlyLinear) for m in model.modules()) == 2 * 7 + 1
    axes = {"input": {0: "batch", 1: "seq"}, "output": {0: "batch", 1: "seq"}}
    path = export_onnx(model, tmp_path / "llama.onnx", torch.randint(0, 40, (1, 8)), dynamic_axes=axes)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("MatMulNBits") == 15 and "MatMul" in ops  # attention's q.k and p.v stay float matmuls
    r = compare_with_onnx(model, path, [torch.randint(0, 40, (2, 12))])
    assert r["max_abs_diff"] < 1e-3 and r["top1_agreement"] == 1.0


def test_hf_encoder_exports_with_named_dynamic_inputs(tmp_path):
    """A BertModel with a dict of named inputs exports without a wrapper: graph inputs ``input_ids`` /
    ``attention_mask``, every Linear a MatMulNBits node, batch and sequence dynamic, ORT == simulation."""
    pytest.importorskip("transformers")
    from tests.distill.tiny_hf import bert

    from slimtorch.metrics.ort import onnx_session

    model = bert(layers=2)
    ids = torch.randint(0, 50, (2, 8))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    quantize_(model, WeightOnly(bits=4, group_size=16, method="rtn"), calib_data=[{"input_ids": ids,
                                                                                   "attention_mask": mask}])
    was_training = model.training
    path = export_onnx(model, tmp_path / "bert.onnx", {"input_ids": ids, "attention_mask": mask})
    assert model.training == was_training
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["input_ids", "attention_mask"]
    assert sum(n.op_type == "MatMulNBits" for n in proto.graph.node) == 12  # 2 layers x (q, k, v, o, up, down)
    ids2 = torch.randint(0, 50, (3, 12))  # another batch size and sequence length
    mask2 = torch.ones_like(ids2)
    mask2[0, 9:] = 0
    got = onnx_session(path).run(None, {"input_ids": ids2.numpy(), "attention_mask": mask2.numpy()})[0]
    with torch.no_grad():
        ref = model(input_ids=ids2, attention_mask=mask2).last_hidden_state
    assert got.shape == (3, 12, 32)
    torch.testing.assert_close(torch.from_numpy(got), ref, atol=1e-4, rtol=1e-4)
