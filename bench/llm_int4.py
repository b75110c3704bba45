"""Weight-only int4/int3 on causal LMs: ours (RTN, GPTQ, AWQ) vs ONNX Runtime's MatMulNBitsQuantizer; W8A8 SmoothQuant.

Models: the Llama-architecture char LM of ``bench/train_llama_shakespeare.py`` (HF ``LlamaForCausalLM``, GQA,
RMSNorm, SwiGLU, RoPE) and ``char_gpt`` (``bench/gptq_chargpt.py``), both on tinyshakespeare.
Data: validation = the first 64 non-overlapping 128-character windows of the validation split (the last 10%);
calibration = 32 random 128-character windows of the training split (seed 0, ``--calib``), the same set for
every method.
Perplexity = exp(mean next-character cross-entropy) over the 64 x 128 validation characters.

1. Ours, in simulation (``quantize_(model, WeightOnly(bits, group_size, method=...), calib_data=...)``): every
   Linear (attention, MLP, LM head) at 4 and 3 bits, group 32 and 128, asymmetric, with ``rtn``, ``gptq`` and
   ``awq`` (when registered).
2. ONNX Runtime's ``MatMulNBitsQuantizer`` (its DEFAULT, RTN, k_quant, HQQ and GPTQ configs; the last with the
   same calibration windows) on the fp32 ONNX export of the same model; perplexity from running the ONNX files
   in ONNX Runtime. Its quantizer has no 3-bit mode (2, 4, 8 bits), so 3-bit rows are ours only.
3. Deployment of our 4-bit g32 models as ``MatMulNBits`` ONNX files (``export_onnx``): perplexity in ONNX
   Runtime (must equal the simulation's), file size and latency at batch 1 x 128 tokens against the fp32 ONNX
   file, timed alternately in one run (1 thread, median), with fp32 activations (accuracy_level 0) and int8
   activations (accuracy_level 4).
4. W8A8: ``Int8Static`` (per-channel int8 weights, per-tensor uint8 activations) with and without
   ``SmoothQuant`` (alpha 0.5, and ``alpha="auto"``, searched per layer group on the calibration data).
5. llm-compressor (GPTQ, AWQ) rows are read from ``bench/results/llm_int4_llmcompressor.json`` when
   ``bench/llmc_peer.py`` has written it (it runs in its own virtual environment).

Run: ``.venv/bin/python bench/llm_int4.py`` then ``--merge`` (``--parts ours4,ort`` runs sections; on a busy machine
run them as separate processes, each writes ``bench/results/llm_int4.<part>.json``; ``--quick``: fewer windows).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slimtorch  # noqa: E402
from common import CHECKPOINTS_DIR, RESULTS_DIR, Timer, check, write_result  # noqa: E402
from slimtorch.quant import Int8Static, WeightOnly, export_float_onnx, export_onnx, quantize_  # noqa: E402
from slimtorch.quant.algorithms.rounding import ROUNDING  # noqa: E402
from train_llama_shakespeare import BLOCK, load_corpus, load_llama  # noqa: E402

SEED = 0
BITS = (4, 3)
GROUPS = (32, 128)


class Logits(nn.Module):
    """``input_ids (B, T) -> logits (B, T, V)`` of a HF causal LM, with an explicit all-ones attention mask
    (keeps the TorchScript ONNX exporter off transformers' packed-sequence detection) and no KV cache."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits


def windows(ids: torch.Tensor, n_val: int, n_cal: int, train_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Validation inputs/targets (n_val, BLOCK) and calibration inputs (n_cal, BLOCK)."""
    vx = ids[: n_val * BLOCK].view(n_val, BLOCK)
    vy = ids[1 : n_val * BLOCK + 1].view(n_val, BLOCK)
    gen = torch.Generator().manual_seed(SEED)
    starts = torch.randint(0, len(train_ids) - BLOCK - 1, (n_cal,), generator=gen).tolist()
    cx = torch.stack([train_ids[s : s + BLOCK] for s in starts])
    return vx, vy, cx


def bench_setup(n_val: int, n_cal: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The LLM benchmarks' common start: torch threads (``SLIMTORCH_THREADS``, default 2) and seed, then the
    validation inputs/targets, the calibration windows and those as batches of 8 (:func:`windows`)."""
    torch.set_num_threads(int(os.environ.get("SLIMTORCH_THREADS", "2")))
    torch.manual_seed(SEED)
    train_ids, val_ids, _ = load_corpus()
    vx, vy, cx = windows(val_ids, n_val, n_cal, train_ids)
    return vx, vy, cx, list(cx.split(8))


@torch.no_grad()
def ppl_torch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 16) -> float:
    model.eval()
    total = 0.0
    for i in range(0, len(x), batch):
        logits = model(x[i : i + batch])
        total += F.cross_entropy(logits.flatten(0, 1), y[i : i + batch].flatten(), reduction="sum").item()
    return math.exp(total / y.numel())


def ppl_onnx(path: Path, x: torch.Tensor, y: torch.Tensor, batch: int = 16) -> float:
    from slimtorch.metrics.ort import onnx_session

    sess = onnx_session(path, threads=2)
    name = sess.get_inputs()[0].name
    total = 0.0
    for i in range(0, len(x), batch):
        logits = torch.from_numpy(sess.run(None, {name: x[i : i + batch].numpy()})[0])
        total += F.cross_entropy(logits.flatten(0, 1), y[i : i + batch].flatten(), reduction="sum").item()
    return math.exp(total / y.numel())


def row(model: str, impl: str, method: str, bits: int, group: int | None, ppl: float, base: float,
        **extra: Any) -> dict[str, Any]:
    return {"model": model, "impl": impl, "method": method, "bits": bits, "group": group, "ppl": round(ppl, 4),
            "ppl_increase_pct": round(100 * (ppl / base - 1), 3), **extra}


def ours(name: str, model: nn.Module, vx, vy, calib, base: float, methods: list[str], keep: dict) -> list[dict]:
    rows = []
    for bits in BITS:
        for g in GROUPS:
            for method in methods:
                q = copy.deepcopy(model)
                t = time.perf_counter()
                quantize_(q, weight_only(bits, g, method), calib_data=calib)
                secs = time.perf_counter() - t
                p = ppl_torch(q, vx, vy)
                rows.append(row(name, "slimtorch", method, bits, g, p, base, quant_s=round(secs, 1)))
                print(f"{name} ours {method} w{bits} g{g}: ppl {p:.4f} ({secs:.0f}s)", flush=True)
                if bits == 4 and g == 32:
                    keep[method] = q
    return rows


def weight_only(bits: int, group: int, method: str) -> WeightOnly:
    """Our config for a method name; ``awq_noclip`` is AWQ's scale search without its clipping search
    (``AWQ(clip=False)``), a diagnostic row."""
    if method == "awq_noclip":
        from slimtorch.quant.algorithms.awq import AWQ

        return WeightOnly(bits=bits, group_size=group, rounding=AWQ(clip=False))
    return WeightOnly(bits=bits, group_size=group, method=method)


class _Reader:
    """ONNX Runtime CalibrationDataReader over our calibration windows (one window per call)."""

    def __init__(self, name: str, cx: torch.Tensor) -> None:
        self.name, self.cx, self.i = name, cx, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.cx):
            return None
        self.i += 1
        return {self.name: self.cx[self.i - 1 : self.i].numpy()}

    def rewind(self) -> None:
        self.i = 0

    def __iter__(self):
        self.rewind()
        while (d := self.get_next()) is not None:
            yield d


def ort_quantizer(fp32: Path, work: Path, vx, vy, cx, base: float) -> list[dict]:
    """ONNX Runtime's MatMulNBitsQuantizer, each of its configs at 4 bits, groups 32 and 128."""
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as mq

    rows = []
    configs = {
        "DEFAULT": lambda g: mq.DefaultWeightOnlyQuantConfig(block_size=g, is_symmetric=False, bits=4),
        "RTN": lambda g: mq.RTNWeightOnlyQuantConfig(),
        "k_quant": lambda g: mq.KQuantWeightOnlyQuantConfig(),
        "HQQ": lambda g: mq.HQQWeightOnlyQuantConfig(block_size=g, bits=4),
        "GPTQ": lambda g: mq.GPTQWeightOnlyQuantConfig(calibration_data_reader=_Reader("input", cx)),
    }
    for g in GROUPS:
        for name, make in configs.items():
            out = work / f"ort_{name}_g{g}.onnx"
            t = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    qz = mq.MatMulNBitsQuantizer(onnx.load(str(fp32)), bits=4, block_size=g, is_symmetric=False,
                                                 algo_config=make(g))
                    qz.process()
                    qz.model.save_model_to_file(str(out))
                secs = time.perf_counter() - t
                p = ppl_onnx(out, vx, vy)
                n = sum(nd.op_type == "MatMulNBits" for nd in onnx.load(str(out)).graph.node)
                rows.append(row("llama", "onnxruntime", name, 4, g, p, base, quant_s=round(secs, 1),
                                matmulnbits_nodes=n, bytes=out.stat().st_size))
                print(f"ORT {name} w4 g{g}: ppl {p:.4f} ({n} MatMulNBits)", flush=True)
            except Exception as e:  # a peer mode that does not run here is reported, not hidden
                rows.append({"model": "llama", "impl": "onnxruntime", "method": name, "bits": 4, "group": g,
                             "error": f"{type(e).__name__}: {str(e)[:200]}"})
                print(f"ORT {name} g{g} failed: {e}", flush=True)
    return rows


def deploy(models: dict[str, nn.Module], fp32: Path, work: Path, vx, vy, base: float, repeats: int,
           levels: tuple[int, ...] = (0, 4)) -> list[dict]:
    """MatMulNBits files of our 4-bit g32 models: perplexity in ORT, size, latency vs fp32 ONNX."""
    from slimtorch.metrics import compare_latency

    rows = []
    example = vx[:1]  # batch 1 x 128 tokens
    fp32_bytes = fp32.stat().st_size
    for method, q in models.items():
        for level in levels:
            path = export_onnx(q, work / f"ours_{method}_w4g32_acc{level}.onnx", example, accuracy_level=level)
            p = ppl_onnx(path, vx, vy)
            lat = compare_latency(fp32, path, example, runtime="onnxruntime", threads=1, warmup=5,
                                  repeats=repeats)
            rows.append(row("llama", "slimtorch MatMulNBits", method, 4, 32, p, base, accuracy_level=level,
                            ppl_simulation=round(ppl_torch(q, vx, vy), 4), bytes=path.stat().st_size,
                            fp32_bytes=fp32_bytes, size_ratio=round(path.stat().st_size / fp32_bytes, 4),
                            fp32_ms=round(lat["a_ms"], 3), int4_ms=round(lat["b_ms"], 3),
                            speedup=round(lat["speedup"], 3), timed_runs=lat["repeats"]))
            print(f"deploy {method} acc{level}: ppl {p:.4f}, {path.stat().st_size / fp32_bytes:.3f}x size, "
                  f"{lat['speedup']:.2f}x speed", flush=True)
    return rows


def w8a8(model: nn.Module, vx, vy, cx, calib, base: float) -> list[dict]:
    """Int8Static with and without SmoothQuant (alpha 0.5; alpha="auto": searched per layer group on the W8A8
    output error of the calibration data)."""
    try:
        from slimtorch.quant import SmoothQuant
    except ImportError:
        return [{"model": "llama", "impl": "slimtorch", "method": "W8A8 SmoothQuant",
                 "error": "slimtorch.quant.SmoothQuant is not on this branch yet"}]
    rows = []

    def run(alpha: float | str | None) -> nn.Module:
        q = copy.deepcopy(model)
        if alpha is not None:
            quantize_(q, SmoothQuant(alpha=alpha), calib_data=calib)
        quantize_(q, Int8Static(), calib_data=calib)
        return q

    for alpha, method in ((None, "W8A8 Int8Static"), (0.5, "W8A8 SmoothQuant alpha=0.5"),
                          ("auto", "W8A8 SmoothQuant alpha=auto (searched)")):
        t = time.perf_counter()
        q = run(alpha)
        secs = time.perf_counter() - t
        rows.append(row("llama", "slimtorch", method, 8, None, ppl_torch(q, vx, vy), base, quant_s=round(secs, 1)))
        print(f"{method}: ppl {rows[-1]['ppl']:.4f} ({secs:.0f}s)", flush=True)
    return rows


def best(rows: list[dict], impl: str, bits: int, group: int, methods: tuple[str, ...] | None = None) -> dict | None:
    cand = [r for r in rows if r.get("impl") == impl and r.get("bits") == bits and r.get("group") == group
            and "ppl" in r and (methods is None or r["method"] in methods)]
    return min(cand, key=lambda r: r["ppl"]) if cand else None


def pick(rows: list[dict], model: str, impl: str, method: str, bits: int, group: int) -> dict | None:
    return next((r for r in rows if r.get("model") == model and r.get("impl") == impl and r.get("method") == method
                 and r.get("bits") == bits and r.get("group") == group and "ppl" in r), None)


def save(rows: list[dict], n: int, n_cal: int, methods: list[str], timer: Timer) -> None:
    """Checks from the rows so far, and the result file (called after each section, so a long run that is
    stopped keeps what it measured)."""
    base = next(r["ppl"] for r in rows if r["model"] == "llama" and r["impl"] == "fp32")
    rows = list(rows)
    peer = RESULTS_DIR / "llm_int4_llmcompressor.json"
    if peer.exists():
        for r in json.loads(peer.read_text()).get("rows", []):
            rows.append({**r, "ppl_increase_pct": round(100 * (r["ppl"] / base - 1), 3)} if "ppl" in r else r)
    checks = []
    for model_name in ("llama", "char_gpt"):
        mbase = next((r["ppl"] for r in rows if r["model"] == model_name and r["impl"] == "fp32"), None)
        if mbase is None:
            continue
        for bits in BITS:
            for g in GROUPS:
                rtn = pick(rows, model_name, "slimtorch", "rtn", bits, g)
                for m in ("gptq", "awq"):
                    r = pick(rows, model_name, "slimtorch", m, bits, g)
                    if r and rtn:
                        checks.append(check(f"{model_name} w{bits} g{g}: {m.upper()} ppl increase < RTN's (%)",
                                            r["ppl_increase_pct"], f"< {rtn['ppl_increase_pct']} (RTN)",
                                            r["ppl_increase_pct"] < rtn["ppl_increase_pct"]))
        b432 = best([r for r in rows if r["model"] == model_name], "slimtorch", 4, 32, ("gptq", "awq"))
        if b432:
            checks.append(check(f"{model_name} 4-bit g32 best of GPTQ/AWQ above fp32 (%)", b432["ppl_increase_pct"],
                                "<= 2% (goal <= 1%)", b432["ppl_increase_pct"] <= 2.0))
    llama_rows = [r for r in rows if r["model"] == "llama"]
    for g in GROUPS:
        o = best(llama_rows, "slimtorch", 4, g, ("gptq", "awq"))
        t = best(rows, "onnxruntime", 4, g)
        if o and t:
            checks.append(check(f"llama 4-bit g{g}: ours (best GPTQ/AWQ) vs ORT quantizer's best ({t['method']})",
                                o["ppl"], f"<= {t['ppl']} x 1.005", o["ppl"] <= t["ppl"] * 1.005))
    for r in [r for r in rows if r["impl"] == "slimtorch MatMulNBits"]:
        what = f"({r['method']}, accuracy_level {r['accuracy_level']}, {r.get('timed_runs', 30)} timed runs)"
        checks.append(check(f"int4 MatMulNBits {what} latency / fp32 ONNX, batch 1 x 128",
                            round(r["int4_ms"] / r["fp32_ms"], 3), "<= 1.0", r["int4_ms"] <= r["fp32_ms"]))
        if r["accuracy_level"] == 0:  # level 4 quantizes activations: not the simulation's arithmetic
            checks.append(check(f"int4 MatMulNBits file {what} / fp32 ONNX file", r["size_ratio"], "<= 0.3",
                                r["size_ratio"] <= 0.3))
            checks.append(check(f"MatMulNBits {what} ORT perplexity == simulation", r["ppl"],
                                f"{r['ppl_simulation']} +- 0.01%", abs(r["ppl"] / r["ppl_simulation"] - 1) < 1e-4))
    plain = next((r for r in rows if r["method"] == "W8A8 Int8Static"), None)
    if plain:
        for r in rows:
            if r["method"].startswith("W8A8 SmoothQuant") and "ppl" in r:
                checks.append(check(f"{r['method']} vs plain W8A8", r["ppl"], f"<= {plain['ppl']}",
                                    r["ppl"] <= plain["ppl"]))
    info = json.loads((CHECKPOINTS_DIR / "llama_shakespeare.json").read_text())["train"]
    extra = {
        "llama_train": info,
        "val": f"first {n} non-overlapping windows of {BLOCK} characters of the validation split",
        "calibration": f"{n_cal} random training windows of {BLOCK} (seed {SEED}), batches of 8",
        "quantized": "every Linear (q/k/v/o, gate/up/down, lm_head); embeddings and norms fp32",
        "ort_note": "MatMulNBitsQuantizer has no 3-bit mode; its RTN, k_quant and GPTQ configs are 4-bit only",
        "methods": methods,
    }
    write_result("llm_int4", rows, checks, seeds=[SEED], wall_s=timer.elapsed, extra=extra)


PARTS = ("ours4", "ours3", "ort", "deploy", "w8a8", "chargpt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 16 val / 16 calibration windows")
    ap.add_argument("--repeats", type=int, default=30, help="timed runs per model for latency")
    ap.add_argument("--methods", default="rtn,gptq,awq",
                    help="our rounding methods (those registered run; awq_noclip: AWQ without clipping search)")
    ap.add_argument("--calib", type=int, default=32, help="calibration windows")
    ap.add_argument("--parts", default=",".join(PARTS[:-1]),
                    help=f"sections to run ({', '.join(PARTS)}); each writes bench/results/llm_int4.<part>.json, "
                         "so parts can run as separate processes; --merge combines them")
    ap.add_argument("--merge", action="store_true", help="combine the part files into llm_int4.json with checks")
    ap.add_argument("--groups", default="32,128", help="group sizes for the ours4/ours3 parts")
    ap.add_argument("--levels", default="0,4", help="MatMulNBits accuracy levels for the deploy part")
    ap.add_argument("--tag", default="", help="suffix of the part file (llm_int4.<part><tag>.json), so several "
                                              "processes can run pieces of one part")
    args = ap.parse_args()
    timer = Timer()
    n = 16 if args.quick else 64
    vx, vy, cx, calib = bench_setup(n, 16 if args.quick else args.calib)
    methods = [m for m in args.methods.split(",") if m.removesuffix("_noclip") in ROUNDING.names()]
    if args.merge:
        rows = []
        for f in sorted(RESULTS_DIR.glob("llm_int4.*.json")):
            if f.name.split(".")[1].startswith(PARTS):
                rows += [r for r in json.loads(f.read_text())["rows"] if r not in rows]
        save(rows, n, len(cx), methods, timer)
        return
    llama = Logits(load_llama()).eval()
    base = ppl_torch(llama, vx, vy)
    print(f"llama fp32 ppl {base:.4f}", flush=True)
    for part in args.parts.split(","):
        rows: list[dict] = [row("llama", "fp32", "-", 32, None, base, base)]
        t = time.perf_counter()
        if part in ("ours4", "ours3"):
            global BITS, GROUPS
            BITS = (int(part[-1]),)
            GROUPS = tuple(int(g) for g in args.groups.split(","))
            rows += ours("llama", llama, vx, vy, calib, base, methods, {})
        elif part in ("ort", "deploy"):
            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp)
                fp32 = export_float_onnx(llama, work / "fp32.onnx", vx[:1])
                if part == "ort":
                    rows.append(row("llama", "onnxruntime fp32", "-", 32, None, ppl_onnx(fp32, vx, vy), base,
                                    bytes=fp32.stat().st_size))
                    rows += ort_quantizer(fp32, work, vx, vy, cx, base)
                else:
                    keep = {}
                    for m in methods:
                        q = copy.deepcopy(llama)
                        quantize_(q, WeightOnly(bits=4, group_size=32, method=m), calib_data=calib)
                        keep[m] = q
                    rows += deploy(keep, fp32, work, vx, vy, base, args.repeats,
                                   tuple(int(v) for v in args.levels.split(",")))
        elif part == "w8a8":
            rows += w8a8(llama, vx, vy, cx, calib, base)
        elif part == "chargpt":
            gpt = slimtorch.load(CHECKPOINTS_DIR / "char_gpt.safetensors").eval()
            gbase = ppl_torch(gpt, vx, vy)
            rows = [row("char_gpt", "fp32", "-", 32, None, gbase, gbase)]
            rows += ours("char_gpt", gpt, vx, vy, calib, gbase, methods, {})
        else:
            raise SystemExit(f"unknown part {part!r}; parts: {PARTS}")
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / f"llm_int4.{part}{args.tag}.json").write_text(json.dumps(
            {"part": part, "wall_s": round(time.perf_counter() - t, 1), "rows": rows}, indent=2) + "\n")
        print(f"part {part} done in {time.perf_counter() - t:.0f}s", flush=True)


if __name__ == "__main__":
    main()
