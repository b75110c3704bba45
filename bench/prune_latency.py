"""prune_latency: ResNet-20/CIFAR-10 pruned to a *measured* ONNX Runtime speedup; latency-aware vs uniform vs TP.

On the 87.99% checkpoint (``bench/checkpoints/resnet20_cifar10.safetensors``), for each target:

* ``latency``: slimtorch ``Channel(target_speedup=t, latency_runtimes=(rt,), allocation="latency",
  round_to=8)``: per-group widths from a latency table measured on ``rt`` (HALP-style knapsack), verified by
  measurement and corrected;
* ``uniform``: slimtorch ``Channel(target_speedup=t, latency_runtimes=(rt,), round_to=8)``: one ratio for every
  group, bisected until the measured speedup holds;
* ``torch-pruning``: Torch-Pruning ``MetaPruner`` (L1 magnitude, round_to 8), its ratio bisected until its
  measured latency on ``rt`` matches the latency-aware model's (the two latencies are reported).

Targets: 1.6x and 2.0x on ONNX Runtime fp32, and 1.6x on ONNX Runtime int8 (prune for the int8 runtime, fine-tune,
then quantize with ``Int8Static`` and export QDQ; the speedup is pruned-int8 vs dense-int8 ONNX files). Every
pruned model gets the same fine-tune: distillation from the dense model (KD T=4 + 0.5 CE) on a CIFAR-10
subset (``--finetune-n`` images x ``--finetune-epochs``), chosen so all rows finish in about an hour on a
shared 2-core CPU. Latency: batch 32, 1 thread, CPU-time clock, alternating blocks, ratio inside one run.

    .venv/bin/python bench/prune_latency.py            # everything (~1 h on a shared 2-core CPU)
    .venv/bin/python bench/prune_latency.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slimtorch  # noqa: E402
from common import CHECKPOINTS_DIR, DATA_ROOT, Timer, check, kd_trainee, write_result  # noqa: E402
from prune_resnet import tp_prune, widths  # noqa: E402
from slimtorch import data as D  # noqa: E402
from slimtorch.metrics import accuracy, compare_latency, count_macs  # noqa: E402
from slimtorch.prune import prune_  # noqa: E402
from slimtorch.prune.structured import Channel  # noqa: E402
from slimtorch.quant import Int8Static, export_onnx, quantize_  # noqa: E402
from slimtorch.train import fit  # noqa: E402

CKPT = CHECKPOINTS_DIR / "resnet20_cifar10.safetensors"
SEED = 0
TRAIN_THREADS = int(os.environ.get("SLIMTORCH_TRAIN_THREADS", "2"))
TARGETS = [(1.6, "onnxruntime"), (2.0, "onnxruntime"), (1.6, "onnxruntime-int8")]


def speedup(dense: torch.nn.Module, m: torch.nn.Module, xb: torch.Tensor, rt: str, repeats: int) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compare_latency(dense, m, xb, runtime=rt, threads=1, warmup=3, repeats=repeats, clock="cpu")


def tp_matching(dense: torch.nn.Module, x1: torch.Tensor, xb: torch.Tensor, rt: str, want: float, repeats: int,
                log: list[str]) -> tuple[torch.nn.Module, float, dict]:
    """Torch-Pruning (L1, round_to 8) at the ratio whose measured speedup on ``rt`` is closest to ``want`` (the
    latency-aware model's measured speedup).

    A grid, not a bisection: with ``round_to=8`` Torch-Pruning's widths move in jumps and ONNX Runtime's time is
    not monotone in them (ratio 0.239 measured 1.20x, 0.251 measured 1.70x), so bisection can walk away from the
    match. Every distinct width plan on the grid is measured once (ratios that give the same widths share it);
    the candidates nearest ``want`` are then measured again and the closest on the second measurement is kept.
    """
    seen: dict[str, tuple[torch.nn.Module, float, dict]] = {}
    for i in range(4, 61):
        ratio = i * 0.0125
        m = tp_prune(copy.deepcopy(dense), x1, ratio, False, 8).eval()
        key = widths(m)
        if key in seen:
            continue
        r = speedup(dense, m, xb, rt, repeats)
        seen[key] = (m, ratio, r)
        log.append(f"  TP ratio {ratio:.4f} [{key}]: {rt} {r['speedup']:.3f}x (want {want:.3f}x)")
        print(log[-1], flush=True)
    near = sorted(seen.values(), key=lambda c: abs(c[2]["speedup"] / want - 1))[:3]
    again = []
    for m, ratio, _ in near:  # re-measure the finalists: one noisy measurement should not pick the match
        r = speedup(dense, m, xb, rt, repeats)
        log.append(f"  TP ratio {ratio:.4f} again: {rt} {r['speedup']:.3f}x (want {want:.3f}x)")
        print(log[-1], flush=True)
        again.append((m, ratio, r))
    return min(again, key=lambda c: abs(c[2]["speedup"] / want - 1))


def int8_file(model: torch.nn.Module, calib: list[torch.Tensor], path: Path) -> tuple[Path, torch.nn.Module]:
    q = copy.deepcopy(model).eval()
    quantize_(q, Int8Static(), calib_data=calib)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_onnx(q, path, calib[0][:1], check=False), q


def main() -> None:  # noqa: C901
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test-n", type=int, default=10000)
    ap.add_argument("--finetune-n", type=int, default=5000)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--finetune-lr", type=float, default=0.01)
    ap.add_argument("--latency-batch", type=int, default=32)
    ap.add_argument("--latency-repeats", type=int, default=30)
    ap.add_argument("--targets", default="1.6:onnxruntime,2.0:onnxruntime,1.6:onnxruntime-int8")
    ap.add_argument("--tag", default="", help="suffix of the result file (prune_latency<tag>.json), so a run of "
                    "some --targets does not replace the rows of another")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.quick:
        a.test_n, a.finetune_n, a.finetune_epochs, a.latency_repeats = 256, 256, 1, 6
    targets = [(float(t.split(":")[0]), t.split(":")[1]) for t in a.targets.split(",")]
    t_all = Timer()
    log: list[str] = []
    dense = slimtorch.load(CKPT).eval()
    x1 = torch.zeros(1, 3, 32, 32)
    xb = torch.randn(a.latency_batch, 3, 32, 32)
    macs0 = count_macs(dense, x1)
    test = D.load("cifar10", "test", root=DATA_ROOT)
    if a.test_n < len(test):
        test = D.calibration_subset(test, a.test_n, seed=SEED)
    ft = D.load("cifar10", "train", root=DATA_ROOT, augment=True)
    ft = D.calibration_subset(ft, a.finetune_n, seed=SEED + 1)
    calib_set = D.calibration_subset(D.load("cifar10", "train", root=DATA_ROOT), 256, seed=SEED)
    calib = [x for x, _ in D.make_loader(calib_set, batch_size=64)]
    tmp = Path(tempfile.mkdtemp(prefix="prune_latency-"))
    dense_acc = accuracy(dense, test)
    rows: list[dict] = [{"row": "dense", "macs": macs0, "widths": widths(dense), "acc": round(dense_acc, 4)}]
    dense_int8_path, dense_q = int8_file(dense, calib, tmp / "dense.int8.onnx")
    dense_int8_acc = accuracy(dense_q, test)
    rows.append({"row": "dense int8", "acc": round(dense_int8_acc, 4)})
    print(rows, flush=True)
    checks = []
    for target, rt in targets:
        tag = f"{target}x {rt}"
        models: dict[str, tuple[torch.nn.Module, dict]] = {}
        for method in ("latency", "uniform"):
            m = copy.deepcopy(dense)
            t = Timer()
            cfg = Channel(target_speedup=target, latency_runtimes=(rt,), round_to=8, latency_batch=a.latency_batch,
                          latency_repeats=a.latency_repeats, allocation=method)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    rep = prune_(m, cfg, example_inputs=x1)
            except ValueError as e:  # the target is out of reach for this allocation: a result, not a crash
                rows.append({"row": f"{method} @ {tag}", "target": target, "runtime": rt,
                             "prune_s": round(t.elapsed, 1), "out_of_reach": str(e)})
                print(rows[-1], flush=True)
                continue
            info = {"prune_s": round(t.elapsed, 1), "search_speedup": rep.extra["measured_speedups"]}
            if rep.latency is not None:
                print(rep.latency, flush=True)
                lat = rep.latency
                info.update({"plan": lat.widths(), "predicted_speedup": lat.predicted_speedup[rt],
                             "prediction_error": lat.prediction_error[rt], "predicted_ms": lat.predicted_ms[rt],
                             "solves": len(lat.attempts), "table_s": round(lat.table_s, 1),
                             "attempts": [{"keeps": x["keeps"],
                                           "predicted_speedup": lat.base_ms[rt] / x["predicted_ms"][rt],
                                           "measured_speedup": x["measured_dense_ms"][rt] / x["measured_ms"][rt]}
                                          for x in lat.attempts]})
            models[method] = (m.eval(), info)
        ours = speedup(dense, models["latency"][0], xb, rt, a.latency_repeats)["speedup"]
        t = Timer()
        tp_model, tp_ratio, _ = tp_matching(dense, x1, xb, rt, ours, a.latency_repeats, log)
        models["torch-pruning"] = (tp_model, {"prune_s": round(t.elapsed, 1), "tp_ratio": round(tp_ratio, 4)})
        accs = {}
        for method, (m, info) in models.items():
            row = {"row": f"{method} @ {tag}", "target": target, "runtime": rt, "macs": count_macs(m, x1),
                   "widths": widths(m), **info}
            row["macs_frac"] = round(row["macs"] / macs0, 4)
            r = speedup(dense, m, xb, rt, a.latency_repeats)  # one more, final measurement before fine-tuning
            row["measured_speedup"] = round(r["speedup"], 3)
            row["ms_dense_vs_pruned"] = f"{r['a_ms']:.2f}/{r['b_ms']:.2f}"
            torch.manual_seed(SEED)
            t = Timer()
            torch.set_num_threads(TRAIN_THREADS)
            fit(kd_trainee(m, dense, torch.zeros(2, 3, 32, 32)), ft, a.finetune_epochs, lr=a.finetune_lr,
                momentum=0.9, weight_decay=5e-4, schedule="cosine", batch_size=128, seed=SEED, progress=False,
                precision="bf16", channels_last=True)
            torch.set_num_threads(1)
            row["finetune_s"] = round(t.elapsed, 1)
            m.eval()
            if rt == "onnxruntime-int8":
                path, q = int8_file(m, calib, tmp / f"{method}.int8.onnx")
                row["acc"] = round(accuracy(q, test), 4)
                row["drop_pt"] = round(100 * (dense_int8_acc - row["acc"]), 2)
                f = compare_latency(dense_int8_path, path, xb, runtime="onnxruntime", threads=1, warmup=3,
                                    repeats=a.latency_repeats, clock="cpu")
                row["int8_files_speedup"] = round(f["speedup"], 3)
                row["int8_files_ms"] = f"{f['a_ms']:.2f}/{f['b_ms']:.2f}"
            else:
                row["acc"] = round(accuracy(m, test), 4)
                row["drop_pt"] = round(100 * (dense_acc - row["acc"]), 2)
            accs[method] = row["acc"]
            rows.append(row)
            print(row, flush=True)
            write_result("prune_latency" + a.tag + ("_quick" if a.quick else ""), rows, checks, seeds=[SEED],  # partial
                         wall_s=t_all.elapsed, extra={"partial": f"written after {row['row']}", "log": log})
        lat_row = next(r for r in rows if r["row"] == f"latency @ {tag}")
        tp_row = next(r for r in rows if r["row"] == f"torch-pruning @ {tag}")
        match = tp_row["measured_speedup"] / lat_row["measured_speedup"] - 1
        checks += [
            check(f"[{tag}] latency-aware measured speedup (before FT)", lat_row["measured_speedup"], f">= {target}",
                  lat_row["measured_speedup"] >= target * 0.98),
            check(f"[{tag}] latency-aware acc - Torch-Pruning acc (pt)", round(100 * (accs["latency"]
                  - accs["torch-pruning"]), 2), ">= 0", accs["latency"] >= accs["torch-pruning"]),
            check(f"[{tag}] latency-aware acc - uniform acc (pt)",
                  round(100 * (accs["latency"] - accs["uniform"]), 2) if "uniform" in accs else
                  "uniform cannot reach the target", ">= 0", accs["latency"] >= accs.get("uniform", -1.0)),
            check(f"[{tag}] Torch-Pruning latency matches latency-aware (relative)", round(match, 4), "|x| <= 0.03",
                  abs(match) <= 0.03),
        ]
        if target == 1.6 and rt == "onnxruntime":
            checks.append(check(f"[{tag}] latency-aware accuracy drop (pt)", lat_row["drop_pt"], "<= 1.0",
                                lat_row["drop_pt"] <= 1.0))
        if target == 2.0 and rt == "onnxruntime":
            checks.append(check(f"[{tag}] (goal) latency-aware accuracy drop (pt)", lat_row["drop_pt"], "<= 1.0",
                                lat_row["drop_pt"] <= 1.0))
        write_result("prune_latency" + a.tag + ("_quick" if a.quick else ""), rows, checks, seeds=[SEED],  # partial
                     wall_s=t_all.elapsed, extra={"partial": f"written after {tag}", "log": log})
    extra = {"budget": {
        "finetune": f"distillation from the dense checkpoint (KD T=4 + 0.5 CE), {a.finetune_n} CIFAR-10 train "
                    f"images (fixed subset), crop+flip, x {a.finetune_epochs} epochs, SGD lr {a.finetune_lr} "
                    f"cosine, batch 128, bf16 autocast, channels_last, {TRAIN_THREADS} thread(s); same for every "
                    "pruned model",
        "test": f"{a.test_n} CIFAR-10 test images" + (" (full test set)" if a.test_n >= 10000 else ""),
        "latency": f"batch {a.latency_batch}, 1 thread, CPU-time clock, {a.latency_repeats} repeats, blocks of 5",
        "int8": "Int8Static (minmax, per-channel, portable target) on 256 train images, exported QDQ; "
                "accuracy of the quantized model (simulation), speed of the ONNX files on ONNX Runtime",
    }, "log": log}
    write_result("prune_latency" + a.tag + ("_quick" if a.quick else ""), rows, checks, seeds=[SEED],
                 wall_s=t_all.elapsed, extra=extra)


if __name__ == "__main__":
    main()
