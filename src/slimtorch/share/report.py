"""Compression report of a ``.slim`` file in the style of Deep Compression's Tables 2-5.

For every stored weight: number of weights, the fraction kept by pruning (P), the index width of weight
sharing (Q), the bits per kept weight actually spent on the Huffman-coded indices (H) and positions,
its bytes and its compression ratio against fp32. The overall ratio is the ``.slim`` file size against
the fp32 safetensors file of the dense model (:func:`slimtorch.save`), as the paper compares against
the uncompressed Caffe model.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from slimtorch.io import storage
from slimtorch.share.format import load, read_header


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def compression_report(
    slim_path: str | os.PathLike[str], dense_path: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Sizes and ratios of a ``.slim`` file, overall and per layer.

    Args:
        slim_path: the compressed file.
        dense_path: the fp32 safetensors file of the dense model. Default: the decoded model saved with
            :func:`slimtorch.save` to a temporary file (same tensors and shapes as the dense model, so
            the same size).

    Returns:
        ``{"file_bytes", "dense_bytes", "ratio", "header_bytes", "other_bytes", "layers": [...]}``;
        each layer has ``name, encoding, weights, kept, kept_pct, bits, index_bits, codebook_bytes,
        index_bytes, position_bytes, bytes, bits_per_weight, bits_per_position, fp32_bytes, ratio``.
    """
    header = read_header(slim_path)
    if dense_path is None:
        with tempfile.TemporaryDirectory() as tmp:
            dense_bytes = storage.save(load(slim_path), Path(tmp) / "dense.safetensors").stat().st_size
    else:
        dense_bytes = storage.resolve_model_file(dense_path).stat().st_size
    layers = []
    for meta in header["layers"]:
        sec = meta["sections"]
        size = {k: v[1] for k, v in sec.items()}
        weights = _numel(meta["shape"])
        kept = meta["kept"]
        value_bytes = size.get("indices", size.get("values", 0))
        total = sum(size.values())
        layers.append(
            {
                "name": meta["name"],
                "encoding": meta["encoding"],
                "weights": weights,
                "kept": kept,
                "kept_pct": 100.0 * kept / max(weights, 1),
                "bits": meta.get("bits", 32),
                "index_bits": meta.get("index_bits", 0),
                "codebook_bytes": size.get("codebook", 0),
                "index_bytes": value_bytes,
                "position_bytes": size.get("positions", 0),
                "bytes": total,
                "bits_per_weight": 8.0 * value_bytes / max(kept, 1),
                "bits_per_position": 8.0 * size.get("positions", 0) / max(kept, 1),
                "fp32_bytes": 4 * weights,
                "ratio": 4 * weights / max(total, 1),
            }
        )
    other = sum(t["data"][1] for t in header["tensors"])
    return {
        "file_bytes": header["file_bytes"],
        "dense_bytes": dense_bytes,
        "ratio": dense_bytes / header["file_bytes"],
        "header_bytes": header["header_bytes"],
        "other_bytes": other,
        "layers": layers,
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as a text table (one line per layer, then the totals)."""
    cols = ["layer", "weights", "kept %", "bits", "idx bits", "bits/w (H)", "bits/pos (H)", "bytes", "ratio"]
    rows = [
        [
            l["name"],
            str(l["weights"]),
            f"{l['kept_pct']:.1f}",
            str(l["bits"]),
            str(l["index_bits"]),
            f"{l['bits_per_weight']:.2f}",
            f"{l['bits_per_position']:.2f}",
            str(l["bytes"]),
            f"{l['ratio']:.1f}x",
        ]
        for l in report["layers"]
    ]
    rows.append(["other tensors (raw)", "", "", "", "", "", "", str(report["other_bytes"]), ""])
    rows.append(["header + spec", "", "", "", "", "", "", str(report["header_bytes"]), ""])
    rows.append(
        [
            "total .slim",
            "",
            "",
            "",
            "",
            "",
            "",
            str(report["file_bytes"]),
            f"{report['ratio']:.1f}x vs {report['dense_bytes']} B fp32",
        ]
    )
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)
