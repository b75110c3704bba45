"""The .slim file: bit-identical round trips, named errors for damaged files, and reader fuzzing."""

from __future__ import annotations

import json
import struct
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import slimtorch
from slimtorch.core import SlimtorchError
from slimtorch.models import create
from slimtorch.share import (
    SlimFormatError,
    cluster_,
    compression_report,
    format_report,
    load,
    loads,
    read_header,
    save,
)
from slimtorch.share.format import _PREFIX, MAGIC


def _pruned(model: nn.Module, keep: float = 0.1, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_((torch.rand(p.shape, generator=g) < keep).to(p.dtype))
    return model


def _x(model: nn.Module, n: int = 5) -> torch.Tensor:
    return torch.randn(n, *model.input_shape)


@pytest.mark.parametrize("name", ["lenet5", "mlp"])
def test_round_trip_is_bit_identical(tmp_path, name):
    model = _pruned(create(name)).eval()
    cluster_(model, bits={"conv": 8, "fc": 5})
    x = _x(model)
    path = save(model, tmp_path / "m.slim")
    loaded = load(path)
    assert torch.equal(loaded(x), model(x))
    # Saving the decoded model again gives the same encoding (plain weights with few values -> shared).
    again = save(loaded, tmp_path / "again.slim")
    assert again.stat().st_size <= path.stat().st_size + 64
    assert torch.equal(load(again)(x), model(x))


def test_fp16_codebook_matches_the_rounded_model(tmp_path):
    model = _pruned(create("lenet_300_100")).eval()
    cluster_(model, bits=5)
    x = _x(model)
    small = load(save(model, tmp_path / "h.slim", codebook_dtype="float16"))
    for layer in model.modules():
        if hasattr(layer, "parametrizations"):
            sw = layer.parametrizations.weight[0]
            with torch.no_grad():
                sw.centroids.copy_(sw.centroids.half().float())
    assert torch.equal(small(x), model(x))


def test_unshared_models_round_trip(tmp_path):
    dense = create("resnet20").eval()  # BN buffers, int64 num_batches_tracked, no sharing
    x = _x(dense, 2)
    assert torch.equal(load(save(dense, tmp_path / "d.slim"))(x), dense(x))
    pruned = _pruned(create("lenet_300_100")).eval()  # sparse encoding: raw values + coded positions
    out = save(pruned, tmp_path / "p.slim")
    assert {l["encoding"] for l in read_header(out)["layers"]} == {"sparse"}
    x = _x(pruned)
    assert torch.equal(load(out)(x), pruned(x))


def test_fixed_index_bits_and_fillers(tmp_path):
    model = _pruned(create("lenet_300_100"), keep=0.02).eval()
    cluster_(model, bits=4)
    path = save(model, tmp_path / "f.slim", index_bits=2)  # gaps > 3 need many fillers
    assert {l["index_bits"] for l in read_header(path)["layers"]} == {2}
    x = _x(model)
    assert torch.equal(load(path)(x), model(x))
    auto = save(model, tmp_path / "a.slim")
    assert auto.stat().st_size < path.stat().st_size


def test_custom_model_needs_a_skeleton(tmp_path):
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    cluster_(net, bits=3)
    path = save(net, tmp_path / "c")  # suffix added
    assert path.suffix == ".slim"
    with pytest.raises(SlimtorchError, match="pass the skeleton"):
        load(path)
    skeleton = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    x = torch.randn(3, 8)
    assert torch.equal(load(path, model=skeleton)(x), net(x))


def test_bad_save_options(tmp_path):
    with pytest.raises(ValueError, match="codebook_dtype: 'int8' is not one of"):
        save(create("mlp"), tmp_path / "x.slim", codebook_dtype="int8")
    with pytest.raises(ValueError, match=r"index_bits must be 'auto' or an int in \[1, 16\], got 17"):
        save(create("mlp"), tmp_path / "x.slim", index_bits=17)


class _Blob(bytes):
    def __repr__(self) -> str:  # keeps hypothesis' failure reports readable
        return f"<.slim file of {len(self)} bytes>"


@pytest.fixture(scope="module")
def slim_bytes(tmp_path_factory) -> bytes:
    torch.manual_seed(0)
    model = _pruned(create("lenet5"), keep=0.05).eval()
    cluster_(model, bits={"conv": 4, "fc": 3})
    return _Blob(save(model, tmp_path_factory.mktemp("slim") / "m.slim").read_bytes())


def _section(data: bytes, layer: str, section: str) -> tuple[int, int]:
    header, start = _header(data)
    meta = next(l for l in header["layers"] if l["name"] == layer)
    off, length, _ = meta["sections"][section]
    return start + off, length


def _header(data: bytes) -> tuple[dict, int]:
    _, _, _, n, _ = _PREFIX.unpack_from(data, 0)
    return json.loads(zlib.decompress(data[_PREFIX.size : _PREFIX.size + n])), _PREFIX.size + n


def test_truncated_file_names_the_part(slim_bytes):
    off, length = _section(slim_bytes, "classifier.1.weight", "indices")
    with pytest.raises(SlimFormatError, match=r"layer 'classifier.1.weight' section 'indices': truncated"):
        loads(slim_bytes[: off + length // 2])
    with pytest.raises(SlimFormatError, match="header: truncated"):
        loads(slim_bytes[: _PREFIX.size + 10])
    with pytest.raises(SlimFormatError, match="file prefix: truncated"):
        loads(slim_bytes[:7])
    with pytest.raises(SlimFormatError, match=r"tensor 'classifier.3.bias' data: truncated"):
        loads(slim_bytes[:-3])


def test_corrupted_file_names_the_part(slim_bytes):
    for section in ("codebook", "indices", "positions"):
        off, length = _section(slim_bytes, "features.3.weight", section)
        bad = bytearray(slim_bytes)
        bad[off + length - 1] ^= 0x10
        with pytest.raises(SlimFormatError, match=f"layer 'features.3.weight' section '{section}': checksum mismatch"):
            loads(bytes(bad))
    bad = bytearray(slim_bytes)
    bad[_PREFIX.size + 5] ^= 0x01
    with pytest.raises(SlimFormatError, match="header: checksum mismatch"):
        loads(bytes(bad))


def test_unknown_version_and_magic(slim_bytes):
    newer = bytearray(slim_bytes)
    struct.pack_into("<H", newer, 8, 7)
    with pytest.raises(SlimFormatError, match=r"unsupported .slim version 7 \(this slimtorch reads version 1\)"):
        loads(bytes(newer))
    with pytest.raises(SlimFormatError, match="not a .slim file"):
        loads(b"PK\x03\x04" + slim_bytes[4:])


def test_is_slim_file(tmp_path, slim_bytes):
    from slimtorch.share import is_slim_file

    (tmp_path / "m.slim").write_bytes(slim_bytes)
    assert is_slim_file(tmp_path / "m.slim")
    assert not is_slim_file(slimtorch.save(create("mlp"), tmp_path / "d.safetensors"))
    assert not is_slim_file(tmp_path / "missing.slim") and not is_slim_file(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(SlimtorchError, match="no .slim file at"):
        load(tmp_path / "nope.slim")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_fuzz_random_bytes(data):
    for blob in (data, MAGIC + data, _PREFIX.pack(MAGIC, 1, 0, len(data), zlib.crc32(data)) + data):
        with pytest.raises(SlimFormatError):
            loads(blob)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pos=st.floats(0, 1, exclude_max=True), xor=st.integers(1, 255), cut=st.floats(0, 1, exclude_max=True))
def test_fuzz_single_byte_corruption_and_truncation(slim_bytes, pos, xor, cut):
    bad = bytearray(slim_bytes)
    bad[int(pos * len(bad))] ^= xor
    with pytest.raises(SlimFormatError):
        loads(bytes(bad))
    with pytest.raises(SlimFormatError):
        loads(slim_bytes[: int(cut * len(slim_bytes))])


def _rewrite_section(data: bytes, layer_i: int, section: str, mutate) -> bytes:
    """Mutate one section and fix every checksum, so the damage gets past the CRCs."""
    header, start = _header(data)
    body = bytearray(data[start:])
    off, length, _ = header["layers"][layer_i]["sections"][section]
    payload = bytearray(body[off : off + length])
    mutate(payload)
    body[off : off + length] = payload
    header["layers"][layer_i]["sections"][section][2] = zlib.crc32(bytes(payload))
    head = zlib.compress(json.dumps(header, separators=(",", ":")).encode())
    return _PREFIX.pack(MAGIC, 1, 0, len(head), zlib.crc32(head)) + head + bytes(body)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    layer=st.integers(0, 3),
    section=st.sampled_from(["codebook", "indices", "positions"]),
    pos=st.floats(0, 1, exclude_max=True),
    xor=st.integers(1, 255),
)
def test_fuzz_damage_behind_valid_checksums(slim_bytes, layer, section, pos, xor):
    def mutate(payload: bytearray) -> None:
        if payload:
            payload[int(pos * len(payload))] ^= xor

    bad = _rewrite_section(slim_bytes, layer, section, mutate)
    try:
        model = loads(bad)  # some damage decodes to other valid weights; it must never crash otherwise
    except SlimFormatError as e:
        name = _header(slim_bytes)[0]["layers"][layer]["name"]
        assert f"layer '{name}' section '" in str(e)
        return
    assert isinstance(model, nn.Module)


def test_report(tmp_path):
    model = _pruned(create("lenet_300_100"), keep=0.1).eval()
    dense = slimtorch.save(create("lenet_300_100"), tmp_path / "dense.safetensors")
    cluster_(model, bits=5)
    path = save(model, tmp_path / "m.slim")
    rep = compression_report(path, dense)
    assert rep["file_bytes"] == path.stat().st_size
    assert rep["dense_bytes"] == dense.stat().st_size
    assert rep["ratio"] == pytest.approx(rep["dense_bytes"] / rep["file_bytes"])
    layer_bytes = sum(l["bytes"] for l in rep["layers"])
    assert rep["header_bytes"] + layer_bytes + rep["other_bytes"] == rep["file_bytes"]
    fc1 = rep["layers"][0]
    assert fc1["name"] == "net.1.weight" and fc1["weights"] == 784 * 300 and fc1["bits"] == 5
    assert 8 < fc1["kept_pct"] < 12
    assert fc1["bits_per_weight"] < 5.5  # Huffman beats the 5-bit fixed width
    # Without a dense file, the decoded model is saved as fp32 safetensors: same size as the dense one.
    assert abs(compression_report(path)["dense_bytes"] - rep["dense_bytes"]) < 256
    text = format_report(rep)
    assert "net.1.weight" in text and "total .slim" in text


def _with_header(head: bytes) -> bytes:
    return _PREFIX.pack(MAGIC, 1, 0, len(head), zlib.crc32(head)) + head


def test_bad_headers_behind_a_valid_checksum(monkeypatch):
    from slimtorch.share import format as slim_format

    monkeypatch.setattr(slim_format, "MAX_HEADER_BYTES", 1000)
    with pytest.raises(SlimFormatError, match="header: does not inflate to a complete header of <= 1000"):
        loads(_with_header(zlib.compress(b" " * 5000)))
    with pytest.raises(SlimFormatError, match="header: not valid deflated JSON"):
        loads(_with_header(zlib.compress(b"{bad")))
    with pytest.raises(SlimFormatError, match="header: not a JSON object"):
        loads(_with_header(zlib.compress(b"[1, 2]")))
    with pytest.raises(SlimFormatError, match="header: missing field 'layers'"):
        loads(_with_header(zlib.compress(b"{}")))
    bad_layer = (
        b'{"layers": [{"name": "w", "encoding": "lz4", "shape": [2], "dtype": "float32", '
        b'"sections": {}}], "tensors": []}'
    )
    with pytest.raises(SlimFormatError, match="layer 'w': unknown encoding 'lz4'"):
        loads(_with_header(zlib.compress(bad_layer)))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_float_dtypes_round_trip(tmp_path, dtype):
    model = _pruned(create("lenet_300_100")).to(dtype).eval()
    cluster_(model, bits={"net.1": 4})  # net.1 shared, net.3 / net.5 plain sparse
    x = _x(model).to(dtype)
    loaded = load(save(model, tmp_path / "m.slim"))
    assert loaded.net[1].weight.dtype == dtype
    assert torch.equal(loaded(x), model(x))
