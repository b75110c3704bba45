"""prune_resnet: ResNet-20/CIFAR-10 channel pruning to half the MACs, then fine-tune; Torch-Pruning beside.

Stages (all in one run unless ``--stage`` says otherwise):
  1. ``train``: train ResNet-20 (shortcut B) on the 50k CIFAR-10 training images (crop + flip, 50 epochs,
     SGD 0.1 cosine, bf16 autocast on 2 threads, ~40 s an epoch on this machine's AMX cores) and write
     ``bench/checkpoints/resnet20_cifar10.safetensors`` (skipped when it exists).
  2. ``compare``: on the SAME checkpoint, slimtorch ``Channel(target_macs=0.5, importance="l1")`` and
     Torch-Pruning (``MagnitudeImportance(p=1)``, pruning ratio searched to the same MAC target), the same
     fine-tune budget for both (full training set, augmentation, ``--finetune-epochs``, by default distillation
     from the dense checkpoint, ``--finetune kd``), then accuracy on
     the full 10k test set, MACs, params, latency speedup in torch and ONNX Runtime (each a ratio inside one
     run, ``slimtorch.metrics.compare_latency``), and dependency-graph build time for ResNet-56 and
     char_gpt (slimtorch vs Torch-Pruning).

Variants (``--variants``), each run with both libraries: uniform allocation at round_to=1 and round_to=8
(channel counts that SIMD kernels like), and ``speedup:8``: slimtorch's measured-latency target
``target_speedup=1.6`` on torch and ONNX Runtime on top of the MAC target, with Torch-Pruning pruned to the
same MACs. Cheap rows (graph build time, MACs, latency) are computed and printed first, accuracy after.

    .venv/bin/python bench/prune_resnet.py                 # everything
    .venv/bin/python bench/prune_resnet.py --stage train   # only the checkpoint
    .venv/bin/python bench/prune_resnet.py --quick         # smoke run: tiny budgets
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slimtorch  # noqa: E402
from common import CHECKPOINTS_DIR, DATA_ROOT, Timer, check, kd_trainee, write_result  # noqa: E402
from slimtorch import data as D  # noqa: E402
from slimtorch.metrics import accuracy, compare_latency, count_macs, count_params  # noqa: E402
from slimtorch.models import create  # noqa: E402
from slimtorch.prune import prune_  # noqa: E402
from slimtorch.prune.structured import Channel, build_dependency_graph  # noqa: E402
from slimtorch.train import fit  # noqa: E402

CKPT = CHECKPOINTS_DIR / "resnet20_cifar10.safetensors"
SEED = 0
#: threads for training and fine-tuning (latency is always measured on 1 thread)
TRAIN_THREADS = int(os.environ.get("SLIMTORCH_TRAIN_THREADS", "2"))


def test_set(n: int):
    """``n`` images of the CIFAR-10 test split in a fixed random order (all 10k if n >= 10000)."""
    test = D.load("cifar10", "test", root=DATA_ROOT)
    return test if n >= len(test) else D.calibration_subset(test, n, seed=SEED)


def train_checkpoint(path: Path, epochs: int, test_n: int, log: list[str], seed: int = SEED) -> None:
    """Train ResNet-20 (shortcut B) on the full CIFAR-10 training set and save it.

    The same recipe as ``slimtorch train --model resnet20 --data cifar10 --augment --epochs 50 --lr 0.1
    --precision bf16 --channels-last --warmup-epochs 1``: SGD (Nesterov, momentum 0.9, weight decay 5e-4),
    batch 128, cosine schedule, pad-4 crop + flip, bfloat16 autocast (AMX) on 2 CPU threads.
    """
    torch.manual_seed(seed)
    train = D.load("cifar10", "train", root=DATA_ROOT, augment=True)
    model = create("resnet20")
    t = Timer()
    fit(model, train, epochs, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine", warmup_epochs=1,
        batch_size=128, seed=seed, progress=True, precision="bf16", channels_last=True)
    acc = accuracy(model.eval(), test_set(test_n))
    slimtorch.save(model, path, metadata={
        "trained_on": f"CIFAR-10 train (50k), {epochs} epochs, SGD 0.1 cosine, 1 warm-up epoch, batch 128, "
                      f"crop+flip, bf16 autocast, channels_last, seed {seed}",
        f"test_accuracy_{test_n}": acc, "train_s": round(t.elapsed, 1)})
    log.append(f"trained {path.name}: {epochs} epochs in {t.elapsed:.0f}s, test acc {acc:.4f}")
    print(log[-1], flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", choices=("all", "train", "compare"), default="all")
    ap.add_argument("--epochs", type=int, default=50, help="train stage: epochs over the 50k training images")
    ap.add_argument("--test-n", type=int, default=10000)
    ap.add_argument("--finetune-n", type=int, default=50000, help="training images used for fine-tuning")
    ap.add_argument("--finetune-epochs", type=int, default=8)
    ap.add_argument("--finetune-lr", type=float, default=0.01)
    ap.add_argument("--finetune", choices=("kd", "plain"), default="kd",
                    help="kd: distillation from the dense checkpoint (KD T=4, hard-label weight 0.5), as in "
                         "examples/cifar10_resnet20.yaml; plain: cross-entropy only")
    ap.add_argument("--variants", default="uniform:1,uniform:8,speedup:8",
                    help="comma list of allocation:round_to (allocation: uniform, global or speedup)")
    ap.add_argument("--latency-batch", type=int, default=32)
    ap.add_argument("--latency-repeats", type=int, default=60)
    ap.add_argument("--checkpoint", type=Path, default=CKPT, help="dense model (trained here if missing)")
    ap.add_argument("--seeds", default=str(SEED),
                    help="comma-separated fine-tune seeds (pruning itself is deterministic); with several, each "
                         "pruned model is fine-tuned once per seed and the checks use the mean accuracy")
    ap.add_argument("--result-id", default="prune_resnet",
                    help="bench/results/<id>.json to write (e.g. prune_resnet_r8_seeds for a seed study)")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    log: list[str] = []
    if a.quick:
        a.epochs, a.test_n, a.finetune_n, a.finetune_epochs = 1, 256, 256, 1
        a.latency_batch, a.latency_repeats = 4, 3
    if a.stage in ("all", "train") and not a.checkpoint.exists():
        torch.set_num_threads(TRAIN_THREADS)
        train_checkpoint(a.checkpoint, a.epochs, a.test_n, log)
        torch.set_num_threads(1)
    if a.stage in ("all", "compare"):
        compare(a, log)


def graph_build_times(repeats: int = 5) -> list[dict]:
    """Dependency-graph build time (CPU seconds of this process, min of ``repeats``), slimtorch vs TP."""
    import torch_pruning as tp

    rows = []
    cases = {
        "resnet56": (create("resnet56").eval(), torch.randn(1, 3, 32, 32)),
        "char_gpt": (create("char_gpt").eval(), torch.randint(0, 65, (1, 128))),
    }
    for name, (model, x) in cases.items():
        times: dict[str, list[float]] = {"concrete": [], "fx": [], "tp": []}
        groups = 0
        for _ in range(repeats):
            for k in times:
                t0 = time.process_time()
                if k == "tp":
                    tp.DependencyGraph().build_dependency(model, example_inputs=x)
                else:
                    try:
                        g = build_dependency_graph(model, x, tracer=k)
                    except ValueError:  # fx cannot trace char_gpt (shape-dependent `if`)
                        continue
                    groups = len(g.groups)
                times[k].append(time.process_time() - t0)
        rows.append({"row": f"graph build {name}",
                     "slimtorch_ms": round(1e3 * min(times["concrete"]), 1),
                     "slimtorch_fx_ms": round(1e3 * min(times["fx"]), 1) if times["fx"] else "fx fails",
                     "torch_pruning_ms": round(1e3 * min(times["tp"]), 1), "slimtorch_groups": groups})
        print(rows[-1], flush=True)
    return rows


def tp_prune(model: torch.nn.Module, x: torch.Tensor, ratio: float, global_pruning: bool,
             round_to: int) -> torch.nn.Module:
    """Torch-Pruning with L1 magnitude importance (group mean), classifier ignored."""
    import torch_pruning as tp

    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=[model.fc],
                                  global_pruning=global_pruning, round_to=round_to if round_to > 1 else None)
    pruner.step()
    return model


def tp_to_target(base: torch.nn.Module, x: torch.Tensor, target: float, global_pruning: bool,
                 round_to: int) -> tuple[torch.nn.Module, float]:
    """Bisection on Torch-Pruning's ratio: the smallest (to 1e-3) whose MACs are <= ``target``."""
    lo, hi = 0.0, 0.95
    best = tp_prune(copy.deepcopy(base), x, hi, global_pruning, round_to)
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        m = tp_prune(copy.deepcopy(base), x, mid, global_pruning, round_to)
        if count_macs(m, x) <= target:
            hi, best = mid, m
        else:
            lo = mid
    return best, hi


#: Variants are (allocation, round_to): "uniform r1" is the plain comparison, "uniform r8" keeps channel
#: counts that runtimes' SIMD kernels like, and "speedup r8" adds slimtorch's measured-latency target
#: (``target_speedup=1.6`` on torch and ONNX Runtime) to the MAC target; Torch-Pruning, which has no
#: latency target, is then pruned (uniform, round_to 8) to the same MACs as slimtorch's result.
SPEEDUP_TARGET = 1.6


def parse_variants(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        alloc, _, rt = item.strip().partition(":")
        if alloc not in ("uniform", "global", "speedup") or not rt.isdigit():
            raise SystemExit(f"--variants: bad item {item!r} (want allocation:round_to, e.g. uniform:8)")
        out.append((alloc, int(rt)))
    return out


def widths(model: torch.nn.Module) -> str:
    """Stem width, then per stage the blocks' inner widths and the stage (residual) width."""
    parts = [str(model.conv1.out_channels)]
    for layer in (model.layer1, model.layer2, model.layer3):
        parts.append("/".join(str(b.conv1.out_channels) for b in layer) + f"-{layer[0].conv2.out_channels}")
    return " ".join(parts)


def compare(a: argparse.Namespace, log: list[str]) -> None:
    """Prune the checkpoint with slimtorch and Torch-Pruning to half the MACs, fine-tune both, measure."""
    t_all = Timer()
    rows = graph_build_times()
    dense = slimtorch.load(a.checkpoint).eval()
    x1 = torch.zeros(1, 3, 32, 32)
    macs0 = count_macs(dense, x1)
    target = 0.5 * macs0
    models = {"dense": dense}
    info: dict[str, dict] = {"dense": {"ratio": 0.0, "prune_s": 0.0}}
    variants = parse_variants(a.variants)
    for alloc, rt in variants:
        ours = copy.deepcopy(dense)
        t = Timer()
        if alloc == "speedup":
            cfg = Channel(target_macs=0.5, target_speedup=SPEEDUP_TARGET, latency_runtimes=("torch", "onnxruntime"),
                          latency_batch=a.latency_batch, importance="l1", round_to=rt)
        else:
            cfg = Channel(target_macs=0.5, importance="l1", allocation=alloc, round_to=rt)
        rep = prune_(ours, cfg, example_inputs=x1)
        models[f"slimtorch {alloc} r{rt}"] = ours
        info[f"slimtorch {alloc} r{rt}"] = {"ratio": rep.extra["ratio"], "prune_s": t.elapsed,
                                            "search_speedups": rep.extra.get("measured_speedups")}
        t = Timer()
        tp_target = count_macs(ours, x1) if alloc == "speedup" else target
        theirs, tp_ratio = tp_to_target(dense, x1, tp_target, alloc == "global", rt)
        models[f"torch-pruning {alloc} r{rt}"] = theirs
        info[f"torch-pruning {alloc} r{rt}"] = {"ratio": tp_ratio, "prune_s": t.elapsed}
    xb = torch.randn(a.latency_batch, 3, 32, 32)
    for name, m in models.items():
        m.eval()
        row = {"row": name, "ratio": round(info[name]["ratio"], 4), "macs": count_macs(m, x1),
               "params": count_params(m), "widths": widths(m)}
        row["macs_frac"] = round(row["macs"] / macs0, 4)
        row["prune_s"] = round(info[name]["prune_s"], 2)
        if info[name].get("search_speedups"):
            row["speedups_seen_by_search"] = {k: round(v, 3) for k, v in info[name]["search_speedups"].items()}
        if name != "dense":
            for rt in ("torch", "onnxruntime"):
                r = compare_latency(dense, m, xb, runtime=rt, threads=1, warmup=3, repeats=a.latency_repeats,
                                    clock="cpu")
                row[f"{rt}_speedup"] = round(r["speedup"], 3)
                row[f"{rt}_ms_dense_vs_pruned"] = f"{r['a_ms']:.1f}/{r['b_ms']:.1f}"
        rows.append(row)
        print(row, flush=True)
    # ---- accuracy (expensive) --------------------------------------------------------------------
    test = test_set(a.test_n)
    ft = D.load("cifar10", "train", root=DATA_ROOT, augment=True)
    if a.finetune_n < len(ft):
        ft = D.calibration_subset(ft, a.finetune_n, seed=SEED + 1)
    seeds = [int(v) for v in a.seeds.split(",")]
    acc = {}
    for name, m in models.items():
        row = next(r for r in rows if r.get("row") == name)
        row["acc_before_ft"] = round(accuracy(m, test), 4)
        if name == "dense":
            acc[name] = row["acc_after_ft"] = row["acc_before_ft"]
            continue
        per_seed = []
        for seed in seeds:
            tuned = copy.deepcopy(m) if len(seeds) > 1 else m
            torch.manual_seed(seed)
            t = Timer()
            torch.set_num_threads(TRAIN_THREADS)
            trainee = tuned if a.finetune == "plain" else kd_trainee(tuned, dense, torch.zeros(2, 3, 32, 32))
            fit(trainee, ft, a.finetune_epochs, lr=a.finetune_lr, momentum=0.9,
                weight_decay=5e-4, schedule="cosine", batch_size=128, seed=seed, progress=False, precision="bf16",
                channels_last=True)
            torch.set_num_threads(1)
            row["finetune_s"] = round(t.elapsed, 1)
            per_seed.append(round(accuracy(tuned.eval(), test), 4))
            print(f"{name} seed {seed}: {per_seed[-1]:.4f}", flush=True)
        row["acc_after_ft"] = round(sum(per_seed) / len(per_seed), 4)
        if len(seeds) > 1:
            row["acc_after_ft_per_seed"] = dict(zip(map(str, seeds), per_seed, strict=True))
            row["acc_after_ft_std"] = round(float(torch.tensor(per_seed, dtype=torch.float64).std()), 4)
        row["drop_pt"] = round(100 * (acc["dense"] - row["acc_after_ft"]), 2)
        acc[name] = row["acc_after_ft"]
        print(row, flush=True)
    checks = []
    over = f", mean of seeds {a.seeds}" if len(seeds) > 1 else ""
    for alloc, rt in variants:
        v = f"{alloc} r{rt}"
        ours_row = next(r for r in rows if r.get("row") == f"slimtorch {v}")
        diff = round(100 * (acc[f"slimtorch {v}"] - acc[f"torch-pruning {v}"]), 2)
        checks += [
            check(f"[{v}] MACs <= 0.5x dense", ours_row["macs_frac"], "<= 0.5", ours_row["macs_frac"] <= 0.5),
            check(f"[{v}] accuracy drop (pt) after fine-tune{over}", ours_row["drop_pt"], "<= 1.0",
                  ours_row["drop_pt"] <= 1.0),
            check(f"[{v}] torch latency speedup", ours_row["torch_speedup"], ">= 1.6",
                  ours_row["torch_speedup"] >= 1.6),
            check(f"[{v}] onnxruntime latency speedup", ours_row["onnxruntime_speedup"], ">= 1.6",
                  ours_row["onnxruntime_speedup"] >= 1.6),
            check(f"[{v}] accuracy - Torch-Pruning's (pt){over}", diff, ">= -0.2", diff >= -0.2),
        ]
    spec = slimtorch.io.storage.read_spec(a.checkpoint).get("metadata", {})
    extra = {"budget": {
        "checkpoint": spec.get("trained_on", "?"),
        "checkpoint_accuracy": {k: v for k, v in spec.items() if k.startswith("test_accuracy")},
        "finetune": ("distillation from the dense checkpoint (KD T=4 + 0.5 CE), " if a.finetune == "kd" else
                     "cross-entropy, ") + f"{min(a.finetune_n, 50000)} CIFAR-10 train images, crop+flip, x "
                    f"{a.finetune_epochs} epoch(s), SGD lr {a.finetune_lr} cosine, batch 128, bf16 autocast, "
                    "channels_last, 2 threads, same for every pruned model; fine-tune seeds " + a.seeds,
        "test": f"{a.test_n} CIFAR-10 test images (fixed random subset, seed {SEED})" if a.test_n < 10000
        else "full CIFAR-10 test set",
        "latency": f"batch {a.latency_batch}, 1 thread, CPU-time clock, {a.latency_repeats} alternating "
                   "repeats, speedup = dense / pruned in the same run",
        "graph_build": "CPU time of this process, min of 5; slimtorch default tracer (concrete) and fx",
        "importance": "L1 magnitude, mean over coupled tensors, classifier output kept (both libraries); "
                      "MAC target 0.5x dense (slimtorch: target_macs=0.5; TP: ratio bisection); uniform "
                      "allocation; variants: " + a.variants + f"; speedup = slimtorch target_speedup="
                      f"{SPEEDUP_TARGET} on torch and ONNX Runtime plus target_macs=0.5, TP at the same MACs",
    }, "log": log}
    write_result(a.result_id, rows, checks, seeds=seeds, wall_s=t_all.elapsed, extra=extra)


if __name__ == "__main__":
    main()
