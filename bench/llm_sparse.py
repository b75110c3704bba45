"""One-shot LLM pruning: dense vs magnitude vs Wanda vs SparseGPT at 50% unstructured and 2:4 (perplexity, size, speed).

Models and data as ``bench/llm_int4.py``: the Llama-architecture char LM (HF ``LlamaForCausalLM``) and
``char_gpt``; validation = the first 64 non-overlapping 128-character windows of the validation split,
calibration = 64 random 128-character training windows (seed 0), the same for every method.

Pruned: every Linear inside the transformer blocks (attention and MLP), each layer to the same sparsity, as the
papers do (embeddings and the LM head stay dense). Methods:

* magnitude: ``Magnitude(sparsity=0.5, scope="layer")`` / ``NM(n=2, m=4)`` (keep the largest |w|);
* Wanda (Sun et al. 2024): ``Wanda(sparsity=0.5)`` / ``Wanda(n=2, m=4)``, score ``|W| * ||X||_2`` per output row;
  ``wanda_layer``: ``Wanda(sparsity=0.5, comparison="layer")`` (the whole layer ranked; diagnostic row);
* SparseGPT (Frantar & Alistarh 2023): ``SparseGPT(sparsity=0.5)`` / ``SparseGPT(n=2, m=4)``, OBS reconstruction.

Also: the file size of each pruned model in CSR form (``slimtorch.prune.save_sparse``) against the dense file;
tool speed (seconds per transformer block, peak resident memory added during pruning, sampled every 5 ms); and
whether a CPU runtime here runs the sparse layers faster: torch's 2:4 ``to_sparse_semi_structured`` (CUDA-only
kernels) and torch CSR ``sparse.mm`` against the dense matmul of the same MLP weight at 128 tokens, timed
alternately. The papers' LLaMA-7B WikiText-2 perplexities are the anchor rows (dense 5.68; 50% unstructured
magnitude 17.29, Wanda 7.26, SparseGPT 7.22; Sun et al. 2024 table 3).

Run: ``.venv/bin/python bench/llm_sparse.py`` (``--quick``: 16 windows, Llama only).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slimtorch  # noqa: E402
from common import CHECKPOINTS_DIR, Timer, check, write_result  # noqa: E402
from llm_int4 import Logits, bench_setup, ppl_torch  # noqa: E402
from slimtorch import prune  # noqa: E402
from slimtorch.prune import NM, Magnitude, make_permanent_, prune_, save_sparse  # noqa: E402
from train_llama_shakespeare import BLOCK, load_llama  # noqa: E402

SEED = 0
#: LLaMA-7B, WikiText-2 perplexity (Sun et al. 2024, "A Simple and Effective Pruning Approach for LLMs", table 3).
ANCHORS = {"dense": 5.68, "magnitude": 17.29, "wanda": 7.26, "sparsegpt": 7.22}


class PeakRSS:
    """Peak resident memory (bytes) of this process above its level at entry, sampled every 5 ms."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss() - self.start)
            time.sleep(0.005)

    def __enter__(self) -> PeakRSS:
        self.start = self.rss()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.rss() - self.start)


def configs(pattern: str, block_patterns: tuple[str, ...]) -> dict[str, Any]:
    """The pruning configs of one sparsity pattern (``50%`` or ``2:4``) that exist on this branch."""
    out: dict[str, Any] = {}
    if pattern == "50%":
        out["magnitude"] = Magnitude(sparsity=0.5, scope="layer", include=block_patterns)
    else:
        out["magnitude"] = NM(n=2, m=4, include=block_patterns)
    for name in ("Wanda", "SparseGPT"):
        cls = getattr(prune, name, None)
        if cls is None:
            continue
        kw = {"sparsity": 0.5} if pattern == "50%" else {"n": 2, "m": 4}
        try:
            out[name.lower()] = cls(**kw, include=block_patterns)
        except TypeError:  # no include= on this config: prune every Linear it selects by default
            out[name.lower()] = cls(**kw)
    if pattern == "50%":  # the paper's comparison-group ablation (a diagnostic row, not in the checks)
        out["wanda_layer"] = prune.Wanda(sparsity=0.5, comparison="layer", include=block_patterns)
    return out


def sparsity_of(model: nn.Module, patterns: tuple[str, ...]) -> float:
    from fnmatch import fnmatch

    zeros = total = 0
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear) and any(fnmatch(n, p) for p in patterns):
            w = m.weight.detach()
            zeros += int((w == 0).sum())
            total += w.numel()
    return zeros / max(total, 1)


def run_model(name: str, model: nn.Module, patterns: tuple[str, ...], n_blocks: int, vx, vy, calib,
              work: Path) -> list[dict]:
    rows = []
    base = ppl_torch(model, vx, vy)
    dense_file = slimtorch.save(model, work / f"{name}_dense.safetensors")
    rows.append({"model": name, "pattern": "dense", "method": "dense", "ppl": round(base, 4),
                 "bytes": dense_file.stat().st_size})
    print(f"{name} dense ppl {base:.4f}", flush=True)
    for pattern in ("50%", "2:4"):
        for method, cfg in configs(pattern, patterns).items():
            m = copy.deepcopy(model)
            with PeakRSS() as mem:
                t = time.perf_counter()
                prune_(m, cfg, data=calib)
                secs = time.perf_counter() - t
            make_permanent_(m)
            p = ppl_torch(m, vx, vy)
            f = save_sparse(m, work / f"{name}_{method}_{pattern.replace(':', 'of').replace('%', '')}.safetensors")
            rows.append({"model": name, "pattern": pattern, "method": method, "ppl": round(p, 4),
                         "ppl_vs_dense": round(p / base, 4), "sparsity": round(sparsity_of(m, patterns), 4),
                         "bytes_csr": f.stat().st_size, "csr_vs_dense": round(f.stat().st_size /
                                                                              dense_file.stat().st_size, 4),
                         "prune_s": round(secs, 2), "s_per_block": round(secs / n_blocks, 3),
                         "peak_extra_mb": round(mem.peak / 2**20, 1)})
            print(f"{name} {pattern} {method}: ppl {p:.4f} ({secs:.1f}s, +{mem.peak / 2**20:.0f} MB)", flush=True)
    return rows


def runtime_probe(weight: torch.Tensor, tokens: int, repeats: int) -> list[dict]:
    """Can a CPU runtime here run a 2:4 or 50% sparse weight faster than dense? Timed alternately."""
    rows: list[dict] = []
    x = torch.randn(tokens, weight.shape[1])
    w24 = weight * prune.nm_mask(weight, 2, 4).to(weight.dtype)
    try:
        from torch.sparse import to_sparse_semi_structured

        ws = to_sparse_semi_structured(w24)
        torch.nn.functional.linear(x, ws)
        rows.append({"runtime": "torch to_sparse_semi_structured (2:4)", "status": "ran on CPU"})
    except Exception as e:
        rows.append({"runtime": "torch to_sparse_semi_structured (2:4)",
                     "status": f"does not run on CPU: {type(e).__name__}: {str(e)[:160]}"})
    flat = weight.flatten()
    cut = flat.abs().kthvalue(flat.numel() // 2).values
    w50 = weight * (weight.abs() > cut)
    for label, w in (("torch CSR sparse.mm, 50% unstructured", w50), ("torch CSR sparse.mm, 2:4", w24)):
        csr = w.to_sparse_csr()
        dense_t, sparse_t = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            x @ w.t()
            dense_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            torch.sparse.mm(csr, x.t())
            sparse_t.append(time.perf_counter() - t)
        d, s = statistics.median(dense_t) * 1e3, statistics.median(sparse_t) * 1e3
        rows.append({"runtime": label, "dense_ms": round(d, 4), "sparse_ms": round(s, 4),
                     "speedup": round(d / s, 3), "shape": list(weight.shape), "tokens": tokens})
    rows.append({"runtime": "onnxruntime (CPU EP)", "status": "no 2:4 or sparse-weight MatMul kernel: a pruned model "
                 "exports as a dense MatMul with zeros and runs at dense speed"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    timer = Timer()
    n = 16 if args.quick else 64
    vx, vy, _, calib = bench_setup(n, n)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        llama = Logits(load_llama()).eval()
        n_llama = llama.lm.config.num_hidden_layers
        rows += run_model("llama", llama, ("lm.model.layers.*",), n_llama, vx, vy, calib, work)
        if not args.quick:
            gpt = slimtorch.load(CHECKPOINTS_DIR / "char_gpt.safetensors").eval()
            rows += run_model("char_gpt", gpt, ("blocks.*",), len(gpt.blocks), vx, vy, calib, work)
    for method, p in ANCHORS.items():
        rows.append({"model": "LLaMA-7B (paper, WikiText-2)", "pattern": "dense" if method == "dense" else "50%",
                     "method": method, "ppl": p})
    probe = runtime_probe(llama.lm.model.layers[0].mlp.up_proj.weight.detach(), BLOCK, 20 if args.quick else 100)
    checks = []
    for model_name in ("llama", "char_gpt"):
        for pattern in ("50%", "2:4"):
            mag = next((r for r in rows if r["model"] == model_name and r["pattern"] == pattern
                        and r["method"] == "magnitude"), None)
            for method in ("wanda", "sparsegpt"):
                r = next((r for r in rows if r["model"] == model_name and r["pattern"] == pattern
                          and r["method"] == method), None)
                if r and mag:
                    checks.append(check(f"{model_name} {pattern}: {method} ppl well below magnitude's",
                                        r["ppl"], f"< {mag['ppl']} (magnitude)", r["ppl"] < mag["ppl"]))
    missing = [m for m in ("Wanda", "SparseGPT") if getattr(prune, m, None) is None]
    extra = {"val": f"first {n} windows of {BLOCK} characters of the validation split",
             "calibration": f"{n} random training windows (seed {SEED})", "runtime_probe": probe,
             "missing_methods": missing,
             "llama_train": json.loads((CHECKPOINTS_DIR / "llama_shakespeare.json").read_text())["train"]}
    for r in probe:
        print(r, flush=True)
    write_result("llm_sparse", rows, checks, seeds=[SEED], wall_s=timer.elapsed, extra=extra)


if __name__ == "__main__":
    main()
