"""Benchmark ``demo``: ``slimtorch demo`` end to end, as ``make demo`` runs it, over 3 seeds.

Each seed runs ``python -m slimtorch.cli.main demo --seed S --json ...`` in a fresh process with
``OMP_NUM_THREADS=2`` (imports, data, training, export and report included in the wall time). Floors
(BENCHMARKS.md): at most 3 minutes; the final int8 ONNX file at least 10x smaller than the teacher's
fp32 safetensors file; accuracy drop at most 1.5 points. The machine's load average is recorded with
every run because the CPU is shared with other jobs.

Joint vs sequential (seed 0): the demo's sequential student stages (distill 20 epochs -> prune 50% +
3 epochs fine-tune -> int8 PTQ) against one ``joint`` stage (distillation + AGP pruning to 50% + 8-bit
QAT) given the same 23 training epochs, from the same teacher.

    .venv/bin/python bench/demo.py            # 3 seeds + joint comparison
    .venv/bin/python bench/demo.py --quick    # seed 0 only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Timer, check, write_result

FLOOR_WALL_S, FLOOR_SIZE_X, FLOOR_DROP_PT = 180.0, 10.0, 1.5
GOAL_WALL_S, GOAL_SIZE_X = 60.0, 20.0


def run_demo(seed: int, out: Path) -> dict:
    """One ``slimtorch demo`` process: its stage table, wall and CPU seconds."""
    js = out / "demo.json"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    cmd = [
        sys.executable,
        "-m",
        "slimtorch.cli.main",
        "demo",
        "--seed",
        str(seed),
        "--out",
        str(out / "run"),
        "--json",
        str(js),
        "--no-progress",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"demo failed (seed {seed}):\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "table": json.loads(js.read_text()),
        "wall_s": wall,
        "cpu_s": cpu,
        "load_avg_1min": load,
        "run_dir": out / "run",
    }


def run_joint(teacher_dir: Path, out: Path, seed: int) -> dict:
    """The joint stage from the demo's teacher with the sequential stages' 23 training epochs."""
    from slimtorch.pipeline import parse_recipe, public_row, run_recipe

    recipe = parse_recipe(
        {
            "name": "joint (distill + AGP prune + QAT) from the demo teacher",
            "model": {"zoo": "mlp", "checkpoint": str(teacher_dir)},
            "data": {"name": "digits"},
            "seed": seed,
            "stages": [
                {
                    "joint": {
                        "label": "joint",
                        "student": {"zoo": "mlp", "args": {"hidden": [128]}},
                        "losses": [{"type": "KD", "temperature": 4.0}],
                        "task_weight": 0.5,
                        "prune": {"sparsity": 0.5, "schedule": {"type": "AGP", "frequency": 20}},
                        "quant": {"bits_w": 8, "bits_a": 8},
                        "train": {"epochs": 23, "lr": 0.05, "batch_size": 64},
                    }
                }
            ],
        }
    )
    t0 = time.perf_counter()
    rows = run_recipe(recipe, out, overwrite=True, progress=False)
    return {"table": [public_row(r) for r in rows], "wall_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="seed 0 only, no joint comparison")
    ap.add_argument("--seeds", type=int, nargs="*", default=None)
    args = ap.parse_args()
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    timer = Timer()
    rows, summaries, runs = [], [], {}
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        for seed in seeds:
            res = run_demo(seed, Path(tmp) / f"seed{seed}")
            runs[seed] = res
            table = res["table"]
            teacher, final = table[0], table[-1]
            for r in table:
                rows.append({"kind": "stage", "seed": seed, **r})
            summaries.append(
                {
                    "kind": "summary",
                    "seed": seed,
                    "wall_s": round(res["wall_s"], 1),
                    "cpu_s": round(res["cpu_s"], 1),
                    "load_avg_1min": round(res["load_avg_1min"], 2),
                    "size_x": teacher["size_bytes"] / final["size_bytes"],
                    "accuracy_drop_pt": 100 * (teacher["accuracy"] - final["accuracy"]),
                    "teacher_accuracy": teacher["accuracy"],
                    "final_accuracy": final["accuracy"],
                }
            )
            print(f"seed {seed}: {summaries[-1]}", flush=True)
        joint_rows = []
        if not args.quick:
            teacher_dir = runs[seeds[0]]["run_dir"] / "01-train"
            joint = run_joint(teacher_dir, Path(tmp) / "joint", seeds[0])
            seq = runs[seeds[0]]["table"]
            for label, r in [("sequential: " + seq[-1]["stage"], seq[-1]), ("joint", joint["table"][-1])]:
                joint_rows.append(
                    {
                        "kind": "joint_vs_sequential",
                        "seed": seeds[0],
                        "method": label,
                        "train_epochs": 23,
                        **{k: v for k, v in r.items() if k != "stage"},
                    }
                )
            print(json.dumps(joint_rows, indent=1), flush=True)
    rows += summaries + joint_rows
    worst_wall = max(s["wall_s"] for s in summaries)
    worst_x = min(s["size_x"] for s in summaries)
    worst_drop = max(s["accuracy_drop_pt"] for s in summaries)
    checks = [
        check(
            "demo wall time, s (worst seed; 2 cores shared with other jobs)",
            worst_wall,
            f"<= {FLOOR_WALL_S:g}",
            worst_wall <= FLOOR_WALL_S,
        ),
        check(
            "final int8 ONNX vs teacher fp32 file, x smaller (worst seed)",
            round(worst_x, 2),
            f">= {FLOOR_SIZE_X:g}",
            worst_x >= FLOOR_SIZE_X,
        ),
        check(
            "accuracy drop vs teacher, pt (worst seed)",
            round(worst_drop, 3),
            f"<= {FLOOR_DROP_PT:g}",
            worst_drop <= FLOOR_DROP_PT,
        ),
    ]
    goals = {
        "wall_s": GOAL_WALL_S,
        "size_x": GOAL_SIZE_X,
        "met": {"wall_s": worst_wall <= GOAL_WALL_S, "size_x": worst_x >= GOAL_SIZE_X},
    }
    write_result("demo", rows, checks, seeds=seeds, wall_s=timer.elapsed, extra={"goals": goals}, per_cpu=True)


if __name__ == "__main__":
    main()
