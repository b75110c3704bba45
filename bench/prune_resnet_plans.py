"""prune_resnet_plans: which ResNet-20 channel widths run faster on a CPU, measured (no training).

prune_resnet asks for half the MACs and a 1.6x measured speedup in torch and ONNX Runtime. Latency on
a CPU is far from proportional to MACs, so this grid measures it directly: every combination of
per-stage widths (residual stream and block-inner width, each full or halved, multiples of 8) is cut out
of the trained checkpoint with ``Channel(overrides=...)`` and timed against the dense model in the same
run (batch 32, one thread, CPU-time clock, alternating repeats, median) on both runtimes. The rows say
which plans at <= 0.5x MACs, if any, reach 1.6x on both runtimes; accuracy is not measured here.

    .venv/bin/python bench/prune_resnet_plans.py                    # the full grid (63 plans, ~3 min)
    .venv/bin/python bench/prune_resnet_plans.py --model resnet56   # the same grid on ResNet-56 (~12 min)
    .venv/bin/python bench/prune_resnet_plans.py --quick            # 4 plans, few repeats

ResNet-56 has no trained checkpoint here; its plans cut the lowest-L1 channels of a seeded random
initialisation, which changes which channels go but not the widths, so the latencies are the same as
for trained weights. Results: ``bench/results/prune_resnet_plans.json`` (ResNet-20) and
``prune_resnet_plans_resnet56.json``; a batch other than 32 adds ``_batch<N>`` to the name, ``--threads``
other than 1 adds ``_threads<N>`` and times on the wall clock (CPU time would add up the threads' work).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slimtorch  # noqa: E402
from common import CHECKPOINTS_DIR, Timer, write_result  # noqa: E402
from prune_resnet import widths  # noqa: E402
from slimtorch.metrics import compare_latency, count_macs  # noqa: E402
from slimtorch.models import create  # noqa: E402
from slimtorch.prune import prune_  # noqa: E402
from slimtorch.prune.structured import Channel  # noqa: E402

CKPT = CHECKPOINTS_DIR / "resnet20_cifar10.safetensors"
FULL = {1: 16, 2: 32, 3: 64}
#: per stage, (stream, inner) width choices: full, inner halved, stream halved, both halved
CHOICES = {s: [(w, w), (w, w // 2), (w // 2, w), (w // 2, w // 2)] for s, w in FULL.items()}


def plan_config(plan: dict[int, tuple[int, int]]) -> Channel:
    """``Channel`` overrides that cut stage ``s`` to ``plan[s] = (stream, inner)`` channels.

    Inner groups (a block's first conv) match ``layer{s}.*.conv1`` first; the stage's stream group (stem,
    second convs, shortcut) matches ``layer{s}.*`` (a group takes the first pattern that matches).
    """
    overrides: dict[str, float] = {}
    for s, (_, inner) in plan.items():
        overrides[f"layer{s}.*.conv1"] = 1 - inner / FULL[s]
    for s, (stream, _) in plan.items():
        overrides[f"layer{s}.*"] = 1 - stream / FULL[s]
    return Channel(ratio=0.0, round_to=8, overrides=overrides)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("resnet20", "resnet56"), default="resnet20")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of both runtimes while timing")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    t_all = Timer()
    if a.model == "resnet20":
        dense = slimtorch.load(CKPT).eval()
    else:
        torch.manual_seed(0)
        dense = create(a.model).eval()
    x1 = torch.zeros(1, 3, 32, 32)
    xb = torch.randn(a.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    macs0 = count_macs(dense, x1)
    plans = [dict(zip((1, 2, 3), c)) for c in itertools.product(*CHOICES.values())][1:]  # [0] is dense
    if a.quick:
        plans, a.repeats = plans[:4], 3
    rows = []
    for plan in plans:
        m = copy.deepcopy(dense)
        prune_(m, plan_config(plan), example_inputs=x1)
        m.eval()
        row = {"widths": widths(m), "macs_frac": round(count_macs(m, x1) / macs0, 4)}
        for rt in ("torch", "onnxruntime"):
            r = compare_latency(dense, m, xb, runtime=rt, threads=a.threads, warmup=3, repeats=a.repeats,
                                clock="cpu" if a.threads == 1 else "wall")
            row[f"{rt}_speedup"] = round(r["speedup"], 3)
        row["min_speedup"] = min(row["torch_speedup"], row["onnxruntime_speedup"])
        rows.append(row)
        print(row, flush=True)
    rows.sort(key=lambda r: r["macs_frac"])
    half = [r for r in rows if r["macs_frac"] <= 0.5]
    best = max(half, key=lambda r: r["min_speedup"]) if half else None
    both = [r for r in half if r["min_speedup"] >= 1.6]
    summary = {
        "plans": len(rows),
        "plans_at_half_macs": len(half),
        "best_min_speedup_at_half_macs": best,
        "plans_at_half_macs_with_1.6x_on_both": both,
    }
    print(summary)
    bench_id = ("prune_resnet_plans" + ("" if a.model == "resnet20" else f"_{a.model}")
                + ("" if a.batch == 32 else f"_batch{a.batch}") + ("" if a.threads == 1 else f"_threads{a.threads}"))
    write_result(bench_id, rows, [], seeds=[0], wall_s=t_all.elapsed, extra={
        "summary": summary,
        "budget": {"model": a.model,
                   "checkpoint": str(CKPT.name) if a.model == "resnet20" else "random init, seed 0",
                   "latency": f"batch {a.batch}, {a.threads} thread(s), "
                              f"{'CPU-time' if a.threads == 1 else 'wall'} clock, {a.repeats} alternating repeats, "
                              "speedup = dense / pruned in the same run",
                   "plans": "per stage (stream, inner) in {full, inner/2, stream/2, both/2}, round_to 8, "
                            "lowest-L1 channels removed"}})


if __name__ == "__main__":
    main()
