"""The ``.slim`` compressed model file: the Deep Compression storage format, checksummed.

Han et al. 2016 store a pruned, weight-shared layer as a codebook, one cluster index per kept weight
and the relative position of each kept weight, and Huffman-code both streams (§2-§4). A ``.slim``
file holds exactly that, so its size on disk *is* the compressed size.

Layout (integers little-endian)::

    prefix  8 bytes magic b"SLIMTRCH" | u16 version | u16 flags (0) | u32 header length | u32 header CRC32
    header  deflated (zlib) compact JSON: {"spec": architecture (slimtorch.io.storage), "layers": [...],
            "tensors": [...]}; the CRC covers the deflated bytes
    data    the sections, at the offsets the header gives; each section carries its own CRC32

Weight tensors are written in one of three encodings, chosen per tensor:

* ``shared``: ``codebook`` (``k`` centroids, fp32 or fp16) + ``indices`` (Huffman-coded cluster index
  per entry; symbol ``k`` is a filler zero) + ``positions`` (Huffman-coded gaps, see
  :mod:`slimtorch.share.sparse_index`; absent when every weight is kept). Used for every layer that
  :func:`slimtorch.share.cluster_` shared, and for plain weights with few distinct values (a model
  loaded back from a ``.slim`` file) when it is smaller than the alternatives.
* ``sparse``: ``values`` (the kept weights, raw) + ``positions``: a pruned but unshared weight.
* plain ``tensors``: anything else (biases, norms, buffers), raw bytes.

Positions always end with fillers so that fewer than ``2^index_bits - 1`` weights follow the last
entry; the reader checks that, which bounds the tensor it allocates by the bytes it read. Every other
declared length is checked against the bytes present before anything is allocated, and every problem
raises :class:`SlimFormatError` naming the part (prefix, header, layer and section).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimtorch.core.errors import SlimtorchError
from slimtorch.io import storage
from slimtorch.io.atomic import atomic_path
from slimtorch.share import huffman
from slimtorch.share.cluster import shared_layers
from slimtorch.share.sparse_index import from_gaps, max_gap, to_gaps

MAGIC = b"SLIMTRCH"
VERSION = 1
SUFFIX = ".slim"
_PREFIX = struct.Struct("<8sHHII")
#: Index widths tried when ``index_bits="auto"``.
INDEX_BITS_CHOICES = range(1, 17)
#: Largest codebook a file may hold (16-bit indices).
MAX_CODEBOOK = 1 << 16
#: Largest header (inflated JSON) a reader accepts.
MAX_HEADER_BYTES = 64 << 20
#: Plain (not clustered) weights with at most this many distinct nonzero values are tried as ``shared``
#: (e.g. a model decoded from a ``.slim`` file and saved again); more is not weight sharing any more.
MAX_PLAIN_CODEBOOK = 1 << 12

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
#: What ``save(codebook_dtype=...)`` accepts, and what a reader accepts in a file.
_CODEBOOK_DTYPES = ("float32", "float16")
_READABLE_CODEBOOK_DTYPES = ("float64", "float32", "float16", "bfloat16")


class SlimFormatError(SlimtorchError):
    """A ``.slim`` file that is truncated, corrupted, of an unknown version or inconsistent."""


# ----------------------------------------------------------------------------------------- writing


@dataclass
class _Section:
    payload: bytes

    def ref(self, offset: int) -> list[int]:
        return [offset, len(self.payload), zlib.crc32(self.payload)]


#: One coded weight: its header entry and its sections by name.
_Layer = tuple[dict[str, Any], dict[str, _Section]]


def _raw_bytes(t: torch.Tensor) -> bytes:
    # Any dtype as its raw little-endian bytes (bfloat16 has no numpy type: go through uint8).
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` with every parametrized tensor replaced by its value under its plain name."""
    out = {}
    for key, value in model.state_dict().items():
        prefix, sep, rest = (
            key.partition("parametrizations.")
            if key.startswith("parametrizations.")
            else key.partition(".parametrizations.")
        )
        if not sep:
            out[key] = value.detach()
            continue
        tname, _, tail = rest.partition(".")
        if tail.startswith("original"):
            module = model.get_submodule(prefix) if prefix else model
            out[f"{prefix}.{tname}" if prefix else tname] = getattr(module, tname).detach()
    return out


def _positions_stream(kept_flat: np.ndarray, numel: int, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaps (fillers included, trailing fillers up to the end) and the filler mask."""
    gaps, filler = to_gaps(kept_flat, index_bits)
    big = max_gap(index_bits)
    last = int(kept_flat[-1]) if kept_flat.size else -1
    trailing = max(0, (numel - 1 - last) // big)  # fillers so that < big weights follow the last entry
    if trailing:
        gaps = np.concatenate([gaps, np.full(trailing, big, dtype=np.int64)])
        filler = np.concatenate([filler, np.ones(trailing, dtype=bool)])
    return gaps, filler


def _entry_symbols(symbols: np.ndarray, filler: np.ndarray, filler_symbol: int) -> np.ndarray:
    """One symbol per entry: the kept weights' cluster indices in order, ``filler_symbol`` for fillers."""
    out = np.full(filler.size, filler_symbol, dtype=np.int64)
    out[~filler] = symbols
    return out


def _encode_entries(
    symbols: np.ndarray, kept_flat: np.ndarray, numel: int, filler_symbol: int, index_bits: int | str
) -> tuple[bytes, bytes | None, int]:
    """Huffman-code the per-entry symbols and their positions; picks the index width if "auto"."""
    if kept_flat.size == numel:  # dense: positions are implicit
        return huffman.pack(symbols, filler_symbol + 1), None, 0

    def coded_size(b: int) -> int:
        gaps, filler = _positions_stream(kept_flat, numel, b)
        entries = _entry_symbols(symbols, filler, filler_symbol)
        return huffman.packed_size(entries, filler_symbol + 1) + huffman.packed_size(gaps - 1)

    b = min(INDEX_BITS_CHOICES, key=coded_size) if index_bits == "auto" else int(index_bits)
    gaps, filler = _positions_stream(kept_flat, numel, b)
    entries = _entry_symbols(symbols, filler, filler_symbol)
    return huffman.pack(entries, filler_symbol + 1), huffman.pack(gaps - 1), b


def _shared_layer(
    name: str,
    weight: torch.Tensor,
    centroids: torch.Tensor,
    codes: torch.Tensor,
    bits: int,
    codebook_dtype: str,
    index_bits: int | str,
) -> _Layer:
    flat_codes = codes.reshape(-1).numpy()
    kept = np.flatnonzero(flat_codes)  # (n_kept,) flat positions
    used = np.unique(flat_codes[kept]) if kept.size else np.zeros(0, dtype=np.int64)
    # Only the centroids in use are stored; indices are renumbered into that compact codebook.
    remap = np.zeros(int(flat_codes.max(initial=0)) + 1, dtype=np.int64)
    remap[used] = np.arange(used.size)
    table = centroids.detach().reshape(-1)[torch.as_tensor(used - 1, dtype=torch.long)]
    table = table.to(_DTYPES[codebook_dtype])
    indices, positions, b = _encode_entries(remap[flat_codes[kept]], kept, weight.numel(), used.size, index_bits)
    meta = {
        "name": name,
        "encoding": "shared",
        "shape": list(weight.shape),
        "dtype": _DTYPE_NAMES[weight.dtype],
        "bits": bits,
        "codebook_dtype": codebook_dtype,
        "kept": int(kept.size),
        "index_bits": b,
    }
    sections = {"codebook": _Section(_raw_bytes(table)), "indices": _Section(indices)}
    if positions is not None:
        sections["positions"] = _Section(positions)
    return meta, sections


def _sparse_layer(name: str, weight: torch.Tensor, index_bits: int | str) -> _Layer:
    flat = weight.detach().reshape(-1)
    kept = (flat != 0).nonzero().reshape(-1).numpy()  # (n_kept,) flat positions

    def coded_size(b: int) -> int:  # every entry, fillers too, costs one raw value
        gaps, _ = _positions_stream(kept, flat.numel(), b)
        return huffman.packed_size(gaps - 1) + gaps.size * flat.element_size()

    b = min(INDEX_BITS_CHOICES, key=coded_size) if index_bits == "auto" else int(index_bits)
    gaps, filler = _positions_stream(kept, flat.numel(), b)
    values = torch.zeros(gaps.size, dtype=flat.dtype)
    values[torch.from_numpy(~filler)] = flat[torch.from_numpy(kept)]
    meta = {
        "name": name,
        "encoding": "sparse",
        "shape": list(weight.shape),
        "dtype": _DTYPE_NAMES[weight.dtype],
        "kept": int(kept.size),
        "index_bits": b,
    }
    return meta, {"values": _Section(_raw_bytes(values)), "positions": _Section(huffman.pack(gaps - 1))}


def _plain_candidates(
    name: str,
    t: torch.Tensor,
    index_bits: int | str,
) -> list[_Layer]:
    """Encodings to try for a plain floating weight: sparse if it has zeros, shared if few values."""
    out = []
    flat = t.reshape(-1)
    nonzero = flat[flat != 0]
    if nonzero.numel() < flat.numel():
        out.append(_sparse_layer(name, t, index_bits))
    uniq = torch.unique(nonzero)
    if 0 < uniq.numel() <= MAX_PLAIN_CODEBOOK:
        codes = torch.zeros(flat.numel(), dtype=torch.int64)
        mask = flat != 0
        codes[mask] = torch.searchsorted(uniq, flat[mask]) + 1
        bits = max(1, int(np.ceil(np.log2(uniq.numel()))))
        # The values must come back exactly: the codebook keeps the weight's own dtype.
        out.append(_shared_layer(name, t, uniq, codes.reshape(t.shape), bits, _DTYPE_NAMES[t.dtype], index_bits))
    return out


def _encode_state(
    model: nn.Module, codebook_dtype: str, index_bits: int | str
) -> tuple[list[_Layer], list[tuple[dict[str, Any], _Section]]]:
    """Encode every tensor of ``model``: coded weight layers, and raw tensors."""
    shared = shared_layers(model)
    layers: list[_Layer] = []
    tensors: list[tuple[dict[str, Any], _Section]] = []
    for key, t in _plain_state(model).items():
        t = t.detach().cpu()
        mod_name, _, attr = key.rpartition(".")
        if attr == "weight" and mod_name in shared:
            sw = shared[mod_name]
            # "float32" means exact: the centroids keep the weight's own dtype.
            cb = "float16" if codebook_dtype == "float16" else _DTYPE_NAMES[t.dtype]
            centroids, codes = sw.centroids.detach().cpu(), sw.codes.cpu()
            layers.append(_shared_layer(key, t, centroids, codes, sw.bits, cb, index_bits))
            continue
        raw = ({"name": key, "dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape)}, _Section(_raw_bytes(t)))
        if t.is_floating_point() and t.dim() >= 2:
            # A plain weight is coded only when that is smaller than its raw bytes.
            best = min(_plain_candidates(key, t, index_bits), key=_layer_bytes, default=None)
            if best is not None and _layer_bytes(best) < len(raw[1].payload):
                layers.append(best)
                continue
        tensors.append(raw)
    return layers, tensors


def _layer_bytes(layer: _Layer) -> int:
    return sum(len(sec.payload) for sec in layer[1].values())


def save(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    codebook_dtype: str = "float32",
    index_bits: int | str = "auto",
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a ``.slim`` file (atomically).

    Layers shared by :func:`slimtorch.share.cluster_` are stored as codebook + Huffman-coded indices
    and positions; other weights as the smallest of raw, sparse, or (few distinct values) shared;
    everything else raw. :func:`load` returns a model whose outputs are bit-identical to ``model``'s
    (with ``codebook_dtype="float16"``: to the model with its centroids rounded to fp16).

    Args:
        model: any module (pruning masks and shared weights may still be attached).
        path: the file to write; ``.slim`` is appended when the name has no suffix.
        codebook_dtype: ``"float32"``: exact (centroids kept in the weight's own dtype, fp32 for an
            fp32 model), or ``"float16"`` (half the codebook bytes, centroids rounded).
        index_bits: bits per relative position entry (paper: 8 conv, 5 fc), or ``"auto"`` to pick per
            layer the width giving the smallest file.
        metadata: extra JSON-serialisable information stored in the header.

    Returns:
        The path written.
    """
    if codebook_dtype not in _CODEBOOK_DTYPES:
        raise ValueError(f"codebook_dtype: {codebook_dtype!r} is not one of {list(_CODEBOOK_DTYPES)}")
    if index_bits != "auto" and (
        isinstance(index_bits, bool) or not isinstance(index_bits, int) or not 1 <= index_bits <= 16
    ):
        raise ValueError(f"index_bits must be 'auto' or an int in [1, 16], got {index_bits!r}")
    p = Path(path)
    if not p.suffix:
        p = p.with_suffix(SUFFIX)
    layers, tensors = _encode_state(model, codebook_dtype, index_bits)
    header: dict[str, Any] = {"spec": storage.model_spec(model), "layers": [], "tensors": []}
    if metadata:
        header["metadata"] = metadata
    blobs: list[bytes] = []  # section payloads in file order; the header records their offsets
    offset = 0
    for meta, sections in layers:
        meta = dict(meta, sections={})
        for sname, sec in sections.items():
            meta["sections"][sname] = sec.ref(offset)
            blobs.append(sec.payload)
            offset += len(sec.payload)
        header["layers"].append(meta)
    for meta, sec in tensors:
        header["tensors"].append(dict(meta, data=sec.ref(offset)))
        blobs.append(sec.payload)
        offset += len(sec.payload)
    head = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    prefix = _PREFIX.pack(MAGIC, VERSION, 0, len(head), zlib.crc32(head))
    with atomic_path(p, what=".slim file") as tmp:  # a crash leaves the old file or the new one
        with open(tmp, "wb") as f:
            f.write(prefix)
            f.write(head)
            for b in blobs:
                f.write(b)
    return p


# ----------------------------------------------------------------------------------------- reading


def _err(path: Path, part: str, msg: str) -> SlimFormatError:
    return SlimFormatError(f"{path}: {part}: {msg}")


def _parse_prefix(data: bytes, path: Path) -> tuple[dict[str, Any], int]:
    if len(data) < _PREFIX.size:
        raise _err(path, "file prefix", f"truncated: {len(data)} bytes, the prefix alone needs {_PREFIX.size}")
    magic, version, flags, head_len, head_crc = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise _err(path, "file prefix", f"not a .slim file (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise _err(
            path,
            "file prefix",
            f"unsupported .slim version {version} (this slimtorch reads version {VERSION})",
        )
    if flags != 0:
        raise _err(path, "file prefix", f"unknown flags {flags:#x}")
    end = _PREFIX.size + head_len
    if end > len(data):
        raise _err(path, "header", f"truncated: declares {head_len} bytes, {len(data) - _PREFIX.size} present")
    head = data[_PREFIX.size : end]
    if zlib.crc32(head) != head_crc:
        raise _err(path, "header", "checksum mismatch (the file is corrupted)")
    inflate = zlib.decompressobj()
    try:
        # Bounded inflate: a header may not expand past MAX_HEADER_BYTES (no decompression bombs).
        text = inflate.decompress(head, MAX_HEADER_BYTES)
        if inflate.unconsumed_tail or not inflate.eof:
            raise _err(path, "header", f"does not inflate to a complete header of <= {MAX_HEADER_BYTES} bytes")
        header = json.loads(text.decode())
    except (zlib.error, UnicodeDecodeError, ValueError) as e:
        if isinstance(e, SlimFormatError):
            raise
        raise _err(path, "header", f"not valid deflated JSON: {e}") from None
    if not isinstance(header, dict):
        raise _err(path, "header", "not a JSON object")
    return header, end


def _field(obj: Any, key: str, kind: type | tuple[type, ...], part: str, path: Path) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise _err(path, part, f"missing field {key!r}")
    v = obj[key]
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise _err(path, part, f"field {key!r} has the wrong type ({type(v).__name__})")
    return v


def _shape(obj: dict[str, Any], part: str, path: Path) -> tuple[int, ...]:
    shape = _field(obj, "shape", list, part, path)
    if len(shape) > 8 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise _err(path, part, f"invalid shape {shape!r}")
    return tuple(shape)


def _dtype(
    obj: dict[str, Any], key: str, part: str, path: Path, allowed: tuple[str, ...] = tuple(_DTYPES)
) -> torch.dtype:
    name = _field(obj, key, str, part, path)
    if name not in allowed:
        raise _err(path, part, f"unsupported {key} {name!r}")
    return _DTYPES[name]


class _Reader:
    """Validated access to the data area of one ``.slim`` file."""

    def __init__(self, data: bytes, start: int, path: Path) -> None:
        self.data, self.start, self.path = data, start, path

    def section(self, ref: Any, part: str) -> bytes:
        if not (
            isinstance(ref, list)
            and len(ref) == 3
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in ref)
        ):
            raise _err(self.path, part, f"invalid section reference {ref!r}")
        off, length, crc = ref
        lo = self.start + off
        if lo + length > len(self.data):
            raise _err(
                self.path,
                part,
                f"truncated: needs bytes [{lo}, {lo + length}) of a {len(self.data)}-byte file",
            )
        payload = self.data[lo : lo + length]
        if zlib.crc32(payload) != crc:
            raise _err(self.path, part, "checksum mismatch (the file is corrupted)")
        return payload

    def stream(self, ref: Any, part: str) -> np.ndarray:
        try:
            return huffman.unpack(self.section(ref, part))
        except huffman.CorruptStreamError as e:
            raise _err(self.path, part, str(e)) from None


def _raw_tensor(payload: bytes, dtype: torch.dtype, shape: tuple[int, ...], part: str, path: Path) -> torch.Tensor:
    numel = int(np.prod(shape, dtype=object)) if shape else 1
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if numel * itemsize != len(payload):
        raise _err(path, part, f"holds {len(payload)} bytes, shape {list(shape)} of {dtype} needs {numel * itemsize}")
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    flat = torch.frombuffer(bytearray(payload), dtype=torch.uint8).view(dtype)
    return flat.reshape(shape)


def _positions(reader: _Reader, meta: dict[str, Any], numel: int, part: str) -> np.ndarray:
    b = _field(meta, "index_bits", int, part, reader.path)
    if not 1 <= b <= 16:
        raise _err(reader.path, part, f"index_bits {b} not in [1, 16]")
    gaps = reader.stream(meta["sections"].get("positions"), f"{part} section 'positions'") + 1
    if gaps.size and gaps.max() > max_gap(b):
        raise _err(reader.path, f"{part} section 'positions'", "a gap exceeds the index width")
    pos = from_gaps(gaps)
    last = int(pos[-1]) if pos.size else -1
    # The writer ends with fillers so fewer than 2^b - 1 weights follow the last entry: this bounds
    # the tensor allocated below by the stream just read.
    if last >= numel or numel - 1 - last >= max_gap(b):
        raise _err(reader.path, f"{part} section 'positions'", f"positions do not fit the shape ({numel} weights)")
    return pos


def _read_layer(reader: _Reader, meta: Any) -> tuple[str, torch.Tensor]:
    path = reader.path
    name = _field(meta, "name", str, "layer entry", path)
    part = f"layer {name!r}"
    encoding = _field(meta, "encoding", str, part, path)
    shape = _shape(meta, part, path)
    dtype = _dtype(meta, "dtype", part, path)
    sections = _field(meta, "sections", dict, part, path)
    numel = int(np.prod(shape, dtype=object)) if shape else 1
    dense = "positions" not in sections
    if encoding == "shared":
        cb_dtype = _dtype(meta, "codebook_dtype", part, path, _READABLE_CODEBOOK_DTYPES)
        cb = reader.section(sections.get("codebook"), f"{part} section 'codebook'")
        itemsize = torch.empty(0, dtype=cb_dtype).element_size()
        if len(cb) % itemsize or len(cb) // itemsize > MAX_CODEBOOK:
            raise _err(path, f"{part} section 'codebook'", f"invalid codebook of {len(cb)} bytes")
        k = len(cb) // itemsize
        codebook = _raw_tensor(cb, cb_dtype, (k,), f"{part} section 'codebook'", path).to(dtype)
        idx = reader.stream(sections.get("indices"), f"{part} section 'indices'")
        if idx.size and idx.max() > k:
            raise _err(path, f"{part} section 'indices'", f"index {int(idx.max())} outside the {k}-entry codebook")
        values = torch.cat([codebook, torch.zeros(1, dtype=dtype)])[torch.from_numpy(idx)]  # symbol k = filler 0
    elif encoding == "sparse":
        if dense:
            raise _err(path, part, "sparse layer without a 'positions' section")
        payload = reader.section(sections.get("values"), f"{part} section 'values'")
        values = None  # decoded once the entry count is known
    else:
        raise _err(path, part, f"unknown encoding {encoding!r}")
    if dense:
        if values.numel() != numel:
            raise _err(path, f"{part} section 'indices'", f"{values.numel()} entries for {numel} weights")
        return name, values.reshape(shape)
    pos = _positions(reader, meta, numel, part)
    if values is None:
        values = _raw_tensor(payload, dtype, (pos.size,), f"{part} section 'values'", path)
    if values.numel() != pos.size:
        raise _err(path, f"{part} section 'indices'", f"{values.numel()} entries but {pos.size} positions")
    weight = torch.zeros(numel, dtype=dtype)
    weight[torch.from_numpy(pos)] = values  # fillers write their zero onto a pruned weight
    return name, weight.reshape(shape)


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed, checksum-verified JSON header of a ``.slim`` file (sizes, layers, spec)."""
    p = Path(path)
    data = _read_file(p)
    header, start = _parse_prefix(data, p)
    header["file_bytes"] = len(data)
    header["header_bytes"] = start
    return header


def is_slim_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file that starts with the ``.slim`` magic (for loaders that dispatch on it)."""
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def _read_file(p: Path) -> bytes:
    if not p.is_file():
        raise SlimtorchError(f"no .slim file at {p}")
    return p.read_bytes()


def loads(data: bytes, model: nn.Module | None = None, path: str = "<bytes>") -> nn.Module:
    """:func:`load` from the bytes of a ``.slim`` file."""
    p = Path(path)
    header, start = _parse_prefix(data, p)
    reader = _Reader(data, start, p)
    layers = _field(header, "layers", list, "header", p)
    tensors = _field(header, "tensors", list, "header", p)
    state: dict[str, torch.Tensor] = {}
    for meta in layers:
        name, t = _read_layer(reader, meta)
        state[name] = t
    for meta in tensors:
        name = _field(meta, "name", str, "tensor entry", p)
        part = f"tensor {name!r}"
        payload = reader.section(_field(meta, "data", list, part, p), f"{part} data")
        state[name] = _raw_tensor(payload, _dtype(meta, "dtype", part, p), _shape(meta, part, p), f"{part} data", p)
    if model is None:
        spec = header.get("spec")
        if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
            raise SlimtorchError(
                f"{p} holds no architecture spec (it was not saved from a zoo model); pass the "
                "skeleton: slimtorch.share.load(path, model=MyNet())"
            )
        model = storage.model_from_spec(spec, p, {k: tuple(v.shape) for k, v in state.items()})
    _match_dtypes(model, state)
    storage.load_state_into(model, state)
    return model.eval()


def _match_dtypes(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give each parameter/buffer the dtype stored in the file (a fp64 or bf16 model stays exact)."""
    for key, t in state.items():
        mod_name, _, attr = key.rpartition(".")
        try:
            module = model.get_submodule(mod_name) if mod_name else model
        except AttributeError:
            continue  # load_state_into reports keys that do not fit
        cur = getattr(module, attr, None)
        if isinstance(cur, torch.Tensor) and cur.dtype != t.dtype:
            if isinstance(cur, nn.Parameter):
                setattr(module, attr, nn.Parameter(cur.detach().to(t.dtype), requires_grad=cur.requires_grad))
            else:
                module._buffers[attr] = cur.to(t.dtype)


def load(path: str | os.PathLike[str], model: nn.Module | None = None) -> nn.Module:
    """Load a ``.slim`` file written by :func:`save`.

    Args:
        path: the ``.slim`` file.
        model: skeleton to load into; needed only when the file was not saved from a zoo model.

    Returns:
        The model in eval mode, with plain (decoded) weights.

    Raises:
        SlimFormatError: the file is truncated, corrupted or of an unknown version (the message names
            the part: prefix, header, or layer and section).
    """
    p = Path(path)
    return loads(_read_file(p), model, str(p))
