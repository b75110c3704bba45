"""Texts, embeddings and fidelity measures for ``bench/minilm.py`` (the real all-MiniLM-L6-v2).

Held-out evaluation text (never used to calibrate or train): the last tenth of tinyshakespeare, in
chunks of consecutive lines, and the paragraphs of the Python documentation bundled with the
interpreter (``pydoc_data.topics``). Training / calibration text for distillation and static
quantization: the first nine tenths of tinyshakespeare and the docstrings of standard-library modules.

Fidelity of a compressed encoder to the fp32 one is measured on sentence embeddings as
sentence-transformers builds them for this model: mean of the last hidden states over the attention
mask, L2-normalised. ``cosine``: per-text cosine to fp32 (mean and 5th percentile); ``retrieval@10``:
for each text, the overlap of its 10 nearest neighbours (cosine, itself excluded) with fp32's, averaged.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import numpy as np


def _shakespeare(data_root: Path) -> list[str]:
    lines = (data_root / "tinyshakespeare" / "input.txt").read_text().splitlines()
    return [ln.strip() for ln in lines]


def _chunks(lines: list[str], per_chunk: int) -> list[str]:
    """Consecutive non-empty lines joined ``per_chunk`` at a time (a speech fragment, 10-60 words)."""
    lines = [ln for ln in lines if ln]
    return [" ".join(lines[i:i + per_chunk]) for i in range(0, len(lines) - per_chunk + 1, per_chunk)]


def pydoc_paragraphs(min_words: int = 8) -> list[str]:
    """Paragraphs of the bundled Python documentation (blank-line separated, at least ``min_words``)."""
    from pydoc_data.topics import topics

    out = []
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            text = " ".join(para.split())
            if len(text.split()) >= min_words:
                out.append(text)
    return out


def eval_texts(data_root: Path, n: int = 2000) -> list[str]:
    """``n`` held-out texts: half documentation paragraphs, half Shakespeare (last tenth), interleaved."""
    lines = _shakespeare(data_root)
    held = _chunks(lines[int(0.9 * len(lines)):], 3)
    docs = pydoc_paragraphs()
    half = n // 2
    if len(docs) < half or len(held) < n - half:
        raise RuntimeError(f"not enough held-out text: {len(docs)} paragraphs, {len(held)} chunks")
    rng = np.random.default_rng(0)
    docs = [docs[i] for i in sorted(rng.choice(len(docs), half, replace=False))]
    held = [held[i] for i in sorted(rng.choice(len(held), n - half, replace=False))]
    return [t for pair in zip(docs, held) for t in pair] + docs[len(held):] + held[len(docs):]


def stdlib_docstrings(min_words: int = 8, limit: int = 20000) -> list[str]:
    """Paragraphs of docstrings of importable pure-Python standard-library modules and their members."""
    import sys

    out: list[str] = []
    names = sorted(m.name for m in pkgutil.iter_modules() if m.name in sys.stdlib_module_names
                   and not m.name.startswith("_") and m.name not in {"antigravity", "this", "idlelib",
                                                                      "turtledemo", "tkinter", "turtle"})
    for name in names:
        try:
            mod = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a module that fails to import on this platform is skipped
            continue
        docs = [mod.__doc__] + [getattr(getattr(mod, a, None), "__doc__", None) for a in dir(mod)
                                if not a.startswith("_")]
        for d in docs:
            if not isinstance(d, str):
                continue
            for para in re.split(r"\n\s*\n", d):
                text = " ".join(para.split())
                if len(text.split()) >= min_words:
                    out.append(text)
        if len(out) >= limit:
            break
    return list(dict.fromkeys(out))[:limit]


def train_texts(data_root: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` training/calibration texts: Shakespeare (first nine tenths) and stdlib docstrings, shuffled."""
    lines = _shakespeare(data_root)
    pool = _chunks(lines[: int(0.9 * len(lines))], 3) + stdlib_docstrings()
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(pool))[:n]
    return [pool[i] for i in idx]


def mean_pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of ``hidden`` (B, T, H) over positions where ``mask`` (B, T) is 1, L2-normalised (B, H)."""
    m = mask[..., None].astype(np.float64)
    pooled = (hidden.astype(np.float64) * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
    return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


def fidelity(ref: np.ndarray, emb: np.ndarray, k: int = 10) -> dict[str, float]:
    """Cosine (mean, 5th percentile) and retrieval@k overlap of normalised embeddings ``emb`` vs ``ref``."""
    cos = (ref * emb).sum(1)

    def knn(e: np.ndarray) -> np.ndarray:
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)
        return np.argsort(-sim, axis=1)[:, :k]

    a, b = knn(ref), knn(emb)
    overlap = np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)])
    return {"cos_mean": float(cos.mean()), "cos_p5": float(np.percentile(cos, 5)),
            "retrieval_at10": float(overlap)}
