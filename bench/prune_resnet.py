"""prune_resnet: ResNet-20/CIFAR-10 channel pruning to half the MACs, then fine-tune; Torch-Pruning beside.

Stages (all in one run unless ``--stage`` says otherwise):
  1. ``train``: train ResNet-20 (shortcut B) on a CIFAR-10 subset and write
     ``bench/checkpoints/resnet20_cifar10.safetensors`` (skipped when it exists). The budget is reduced
     because the machine is 2 shared CPU cores: ``--train-n`` images for ``--epochs`` epochs.
  2. ``compare``: on the SAME checkpoint, slimtorch ``Channel(target_macs=0.5, importance="l1")`` and
     Torch-Pruning (``MagnitudeImportance(p=1)``, pruning ratio searched to the same MAC target), the same
     fine-tune budget for both, then accuracy on the full 10k test set, MACs, params, latency speedup in
     torch and ONNX Runtime (each a ratio inside one run, ``slimtorch.metrics.compare_latency``), and
     dependency-graph build time for ResNet-56 and char_gpt (slimtorch vs Torch-Pruning).

Two variants, each run with both libraries: round_to=1 and round_to=8 (channel counts that SIMD kernels
like; ONNX Runtime's NCHWc convolutions block channels by 8). Cheap rows (graph build time, MACs,
latency) are computed and printed first, accuracy after.

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
from common import CHECKPOINTS_DIR, DATA_ROOT, Timer, check, write_result  # noqa: E402
from slimtorch import data as D  # noqa: E402
from slimtorch.metrics import accuracy, compare_latency, count_macs, count_params  # noqa: E402
from slimtorch.models import create  # noqa: E402
from slimtorch.prune import prune_  # noqa: E402
from slimtorch.prune.structured import Channel, build_dependency_graph  # noqa: E402
from slimtorch.train import fit  # noqa: E402

CKPT = CHECKPOINTS_DIR / "resnet20_cifar10.safetensors"
SEED = 0


def test_set(n: int):
    """``n`` images of the CIFAR-10 test split in a fixed random order (all 10k if n >= 10000)."""
    test = D.load("cifar10", "test", root=DATA_ROOT)
    return test if n >= len(test) else D.calibration_subset(test, n, seed=SEED)


def train_checkpoint(path: Path, n_train: int, epochs: int, test_n: int, log: list[str],
                     start: Path | None = None, lr: float = 0.1, seed: int = SEED) -> None:
    """Train ResNet-20 (shortcut B) on ``n_train`` CIFAR-10 images and save it.

    From scratch, or continuing the model saved at ``start`` (a second cosine cycle on another subset).
    """
    torch.manual_seed(seed)
    train = D.calibration_subset(D.load("cifar10", "train", root=DATA_ROOT), n_train, seed=seed)
    model = create("resnet20") if start is None else slimtorch.load(start).train()
    before = "" if start is None else slimtorch.storage.read_spec(start).get("metadata", {}).get("trained_on", "")
    t = Timer()
    fit(model, train, epochs, lr=lr, momentum=0.9, weight_decay=5e-4, schedule="cosine", batch_size=128,
        seed=seed, progress=False)
    acc = accuracy(model, test_set(test_n))
    now = (f"CIFAR-10 train subset of {n_train} images (seed {seed}), {epochs} epochs, SGD {lr} cosine, "
           "batch 128, no augmentation, 1 CPU thread")
    slimtorch.save(model, path, metadata={
        "trained_on": f"{before}; then {now}" if before else now,
        f"test_accuracy_{test_n}": acc, "train_s": round(t.elapsed, 1)})
    log.append(f"trained {path.name}: {n_train} imgs x {epochs} epochs in {t.elapsed:.0f}s, "
               f"test acc {acc:.4f}")
    print(log[-1], flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", choices=("all", "train", "compare"), default="all")
    ap.add_argument("--train-n", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--test-n", type=int, default=2000)
    ap.add_argument("--finetune-n", type=int, default=5000)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--latency-batch", type=int, default=32)
    ap.add_argument("--latency-repeats", type=int, default=60)
    ap.add_argument("--checkpoint", type=Path, default=CKPT, help="dense model (trained here if missing)")
    ap.add_argument("--continue-from", type=Path, default=None,
                    help="train stage: continue this checkpoint (new subset, seed 2, lr 0.05)")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    log: list[str] = []
    if a.quick:
        a.train_n, a.epochs, a.test_n, a.finetune_n, a.finetune_epochs = 512, 1, 256, 256, 1
        a.latency_batch, a.latency_repeats = 4, 3
    if a.stage in ("all", "train") and not a.checkpoint.exists():
        if a.continue_from is None:
            train_checkpoint(a.checkpoint, a.train_n, a.epochs, a.test_n, log)
        else:
            train_checkpoint(a.checkpoint, a.train_n, a.epochs, a.test_n, log, a.continue_from, 0.05, SEED + 2)
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


#: (allocation, round_to): "uniform r1" is the plain comparison, "uniform r8" keeps channel counts that
#: runtimes' SIMD kernels like (ONNX Runtime's NCHWc convs block channels by 8).
VARIANTS = (("uniform", 1), ("uniform", 8))


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
    for alloc, rt in VARIANTS:
        ours = copy.deepcopy(dense)
        t = Timer()
        rep = prune_(ours, Channel(target_macs=0.5, importance="l1", allocation=alloc, round_to=rt),
                     example_inputs=x1)
        models[f"slimtorch {alloc} r{rt}"] = ours
        info[f"slimtorch {alloc} r{rt}"] = {"ratio": rep.extra["ratio"], "prune_s": t.elapsed}
        t = Timer()
        theirs, tp_ratio = tp_to_target(dense, x1, target, alloc == "global", rt)
        models[f"torch-pruning {alloc} r{rt}"] = theirs
        info[f"torch-pruning {alloc} r{rt}"] = {"ratio": tp_ratio, "prune_s": t.elapsed}
    xb = torch.randn(a.latency_batch, 3, 32, 32)
    for name, m in models.items():
        m.eval()
        row = {"row": name, "ratio": round(info[name]["ratio"], 4), "macs": count_macs(m, x1),
               "params": count_params(m), "widths": widths(m)}
        row["macs_frac"] = round(row["macs"] / macs0, 4)
        row["prune_s"] = round(info[name]["prune_s"], 2)
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
    ft = D.calibration_subset(D.load("cifar10", "train", root=DATA_ROOT), a.finetune_n, seed=SEED + 1)
    acc = {}
    for name, m in models.items():
        row = next(r for r in rows if r.get("row") == name)
        row["acc_before_ft"] = round(accuracy(m, test), 4)
        if name != "dense":
            torch.manual_seed(SEED)
            t = Timer()
            fit(m, ft, a.finetune_epochs, lr=0.01, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                batch_size=128, seed=SEED, progress=False)
            row["finetune_s"] = round(t.elapsed, 1)
            row["acc_after_ft"] = round(accuracy(m.eval(), test), 4)
            row["drop_pt"] = round(100 * (acc["dense"] - row["acc_after_ft"]), 2)
        else:
            row["acc_after_ft"] = row["acc_before_ft"]
        acc[name] = row["acc_after_ft"]
        print(row, flush=True)
    checks = []
    for alloc, rt in VARIANTS:
        v = f"{alloc} r{rt}"
        ours_row = next(r for r in rows if r.get("row") == f"slimtorch {v}")
        diff = round(100 * (acc[f"slimtorch {v}"] - acc[f"torch-pruning {v}"]), 2)
        checks += [
            check(f"[{v}] MACs <= 0.5x dense", ours_row["macs_frac"], "<= 0.5", ours_row["macs_frac"] <= 0.5),
            check(f"[{v}] accuracy drop (pt) after fine-tune", ours_row["drop_pt"], "<= 1.0",
                  ours_row["drop_pt"] <= 1.0),
            check(f"[{v}] torch latency speedup", ours_row["torch_speedup"], ">= 1.6",
                  ours_row["torch_speedup"] >= 1.6),
            check(f"[{v}] onnxruntime latency speedup", ours_row["onnxruntime_speedup"], ">= 1.6",
                  ours_row["onnxruntime_speedup"] >= 1.6),
            check(f"[{v}] accuracy - Torch-Pruning's (pt)", diff, ">= -0.2", diff >= -0.2),
        ]
    spec = slimtorch.storage.read_spec(a.checkpoint).get("metadata", {})
    extra = {"budget": {
        "checkpoint": spec.get("trained_on", "?"),
        "checkpoint_accuracy": {k: v for k, v in spec.items() if k.startswith("test_accuracy")},
        "finetune": f"{a.finetune_n} CIFAR-10 train images (seed {SEED + 1}) x {a.finetune_epochs} epoch(s), "
                    "SGD lr 0.01 cosine, batch 128, same for every pruned model",
        "test": f"{a.test_n} CIFAR-10 test images (fixed random subset, seed {SEED})" if a.test_n < 10000
        else "full CIFAR-10 test set",
        "latency": f"batch {a.latency_batch}, 1 thread, CPU-time clock, {a.latency_repeats} alternating "
                   "repeats, speedup = dense / pruned in the same run",
        "graph_build": "CPU time of this process, min of 5; slimtorch default tracer (concrete) and fx",
        "importance": "L1 magnitude, mean over coupled tensors, classifier output kept (both libraries); "
                      "MAC target 0.5x dense (slimtorch: target_macs=0.5; TP: ratio bisection); uniform "
                      "allocation; variants round_to=1 and round_to=8 (both libraries)",
    }, "log": log}
    write_result("prune_resnet", rows, checks, seeds=[SEED], wall_s=t_all.elapsed, extra=extra)


if __name__ == "__main__":
    main()
